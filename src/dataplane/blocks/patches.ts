/**
 * Patches: a block stored as only the 4 KiB sub-blocks written since an
 * earlier whole block of the same index — its base — which supplies the
 * rest. A 4 KiB write into a block not in the cache then costs 4 KiB at
 * write-back, where a whole block costs reading the other sub-blocks and
 * writing all of them (16× for 64 KiB blocks).
 *
 * Rules (the slot store and the volume keep them; format 3, store-format.ts):
 * - A base is a whole block (never sealed, never a map page) of an earlier
 *   generation than its patch, so the two never claim the same ref: a patch
 *   over a patch takes the older one's base, and the sub-blocks it held
 *   that were not written again.
 * - A block of the version being written (spilled, not committed) is
 *   written into in place instead (patch-write.ts): a patch gains the new
 *   sub-blocks; a whole block becomes a patch holding every sub-block, with
 *   no base — a whole block with a tree hash, itself a base later.
 * - A patch's hash is the tree hash of the whole block (sub-sums.ts), so it
 *   is computed from the written sub-blocks and the base's sub-sums entry,
 *   never from the base's bytes.
 * - The store keeps a base for as long as any patch over it is stored:
 *   released by every version (its owner's commit, GC), it is held, not
 *   freed, and freed with its last patch (slot-store.ts, SlotUse.Held).
 * - In a cluster, a patch goes to the replicas as a patch over their own
 *   copy of the base (PUT_PATCHES, peer/wire-patches.ts), never in place;
 *   a patch read whole travels with its tree hash (BLOCK_TREE_HASH), and a
 *   node stores such a block as a patch holding every sub-block.
 */
import { SUB_BLOCK_SIZE } from './sub-sums.js';
import {
  OFF_BASE_GENERATION,
  OFF_BASE_VOLUME,
  OFF_FLAGS,
  OFF_PATCH_PRESENT,
  RECORD_PATCH,
  RECORD_SIZE,
} from './record.js';

/** Most sub-blocks a block may have to be stored as patches: the present mask is a u32. */
export const PATCH_MAX_SUB_BLOCKS = 32;

/** A patch's base, as its record names it. */
export interface PatchBase {
  volumeId: number;
  generation: number;
}

/** The base fields of a patch that holds its whole block (it has none). */
export const NO_BASE: PatchBase = Object.freeze({ volumeId: 0, generation: 0 });

function u32(records: Uint8Array, at: number): number {
  return (
    (records[at] | (records[at + 1] << 8) | (records[at + 2] << 16) | (records[at + 3] << 24)) >>> 0
  );
}

/** Is the record of `slot` in a slot table (bytes) a patch's? */
export function isPatchRecord(records: Uint8Array, slot: number): boolean {
  return (u32(records, slot * RECORD_SIZE + OFF_FLAGS) & RECORD_PATCH) !== 0;
}

/**
 * Does the block in `slot` need a base — a patch holding only some of its
 * `wholeMask` sub-blocks? A whole block, or a patch holding them all, does not.
 */
export function needsBase(records: Uint8Array, slot: number, wholeMask: number): boolean {
  return isPatchRecord(records, slot) && patchPresent(records, slot) !== wholeMask;
}

/** The sub-blocks a patch's own slot holds (its record's present mask). */
export function patchPresent(records: Uint8Array, slot: number): number {
  return u32(records, slot * RECORD_SIZE + OFF_PATCH_PRESENT);
}

export function patchBaseOf(records: Uint8Array, slot: number): PatchBase {
  const at = slot * RECORD_SIZE;
  return {
    volumeId: u32(records, at + OFF_BASE_VOLUME),
    generation: u32(records, at + OFF_BASE_GENERATION),
  };
}

/** Write a patch's fields into its record (a DataView of the slot's 64 bytes; flags set by fillRecord). */
export function fillPatchFields(record: DataView, base: PatchBase, present: number): void {
  record.setUint32(OFF_BASE_VOLUME, base.volumeId, true);
  record.setUint32(OFF_BASE_GENERATION, base.generation, true);
  record.setUint32(OFF_PATCH_PRESENT, present >>> 0, true);
}

/**
 * Where the run of wanted sub-blocks that starts at `first` (a bit of
 * `wanted`) ends: the first sub-block past it that is not wanted, or that
 * comes from the other place (`present`: the patch's own slot; not: its
 * base). One pread per run is what reading some sub-blocks costs. No
 * callback, so a per-miss loop over the runs allocates nothing.
 */
export function wantedRunEnd(wanted: number, present: number, first: number): number {
  const inPatch = (present & (1 << first)) !== 0;
  let end = first + 1;
  while (end < 32 && (wanted & (1 << end)) !== 0 && ((present & (1 << end)) !== 0) === inPatch)
    end++;
  return end;
}

/**
 * Visit the runs of consecutive sub-blocks of a block of `subBlocks`
 * sub-blocks that come from one place: `inPatch` true for a run the patch
 * holds (bits of `present`), false for one its base supplies. One read per
 * run is what assembling a block costs.
 */
export function forEachSourceRun(
  present: number,
  subBlocks: number,
  visit: (first: number, end: number, inPatch: boolean) => void,
): void {
  for (let first = 0; first < subBlocks;) {
    const inPatch = (present & (1 << first)) !== 0;
    let end = first + 1;
    while (end < subBlocks && ((present & (1 << end)) !== 0) === inPatch) end++;
    visit(first, end, inPatch);
    first = end;
  }
}

/** The present mask of a patch holding every sub-block of a `blockSize` block (the mask is a u32). */
export function wholeMaskOf(blockSize: number): number {
  return (2 ** Math.min(PATCH_MAX_SUB_BLOCKS, blockSize / SUB_BLOCK_SIZE) - 1) >>> 0;
}

/** How many sub-blocks a mask names. */
export function subBlockCount(mask: number): number {
  let count = 0;
  for (let m = mask >>> 0; m !== 0; m = (m & (m - 1)) >>> 0) count++;
  return count;
}
