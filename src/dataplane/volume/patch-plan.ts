/**
 * Which partly written blocks a write-back stores as patches
 * (blocks/patches.ts) instead of completing them first (block-loads.ts
 * complete(): read the rest, write the whole).
 *
 * A Dirty slot holding some sub-blocks of a stored block becomes a patch
 * when the placement allows it (a single node; a cluster whose nodes all
 * take patches: the patch is sent to the replicas as it is), the volume is
 * not encrypted (a sealed block's tag covers the whole block), and the
 * block's current copy in this node's store is:
 * - on a single node, a block spilled for the next version (written since
 *   the last commit), patch or whole: written into in place — only the new
 *   sub-blocks, its record and sub-sums entry rewritten (a whole block
 *   becomes a patch holding every sub-block, with no base). It belongs to
 *   no version yet, so nothing else can need its old content; what could
 *   read it is the block's own completion (block-loads.ts), so a block
 *   being completed is not patched;
 * - a whole block of an earlier generation: a new patch goes over it (in
 *   a cluster also when only the block's targets hold it);
 * - a patch of an earlier generation, or in a cluster one spilled for the
 *   next version (which the new one replaces on every copy): a new one goes
 *   over the same base and copies the older patch's sub-blocks not written
 *   again. When the two would hold more than half the block, it is
 *   completed instead: the copy would cost about what the whole block
 *   does, and every whole read of a patch costs a second read range.
 */
import { NO_BASE, PATCH_MAX_SUB_BLOCKS, subBlockCount } from '../blocks/patches.js';
import type { PatchSource } from '../pool/data-pool.js';
import { ENTRY_SEALED } from './block-map.js';
import type { VolumeState } from './volume-state.js';

/**
 * The share of a node's store that must be free for a write-back to make a
 * new patch over a committed block. A patch costs a slot of its own, and
 * its base stays held until the last patch over it goes: random writes
 * over a volume made nearly every block two slots, and a 2 GiB volume in a
 * 4 GiB store was full after 10 s of 4 KiB random writes (its periodic
 * commit failing with ENOSPC; docs/benchmarks.md, session 32). Writes into
 * blocks already spilled for the next version are in place and cost none.
 */
export const PATCH_MIN_FREE_SHARE = 1 / 8;

/** How block `index`'s Dirty slot `cacheSlot` (written in part) is stored as a patch, or undefined: whole. */
export function planPatch(
  state: VolumeState,
  index: number,
  cacheSlot: number,
): PatchSource | undefined {
  const { cache, store } = state.services;
  const allowed = state.placement.patches;
  if (!allowed || state.key) return undefined;
  if (cache.subBlocks === 0 || cache.subBlocks > PATCH_MAX_SUB_BLOCKS) return undefined;
  if (state.patchRefused.has(index) || state.pendingHoles.has(index)) return undefined;
  const written = cache.validMask(cacheSlot);
  if (written === cache.wholeMask) return undefined;
  if (state.isCompleting(index)) return undefined;
  let current: number | undefined;
  const spilled = state.spilled.get(index);
  if (spilled) {
    current = store.lookup(state.id, state.generation + 1, index);
    if (current === undefined) {
      // Spilled to the targets only: a patch over what they hold of this
      // very ref, which it replaces there (peer/wire-patches.ts) — if that
      // is a patch: a whole block is no base for its own ref, and every
      // target would refuse it (8 % of patch copies through a node, by hand).
      if (allowed === 'local' || !spilled.patch) return undefined;
      if (subBlockCount(written) * 2 > cache.subBlocks) return undefined;
      return remoteBased(written, state.id, state.generation + 1, spilled);
    }
    // In a cluster the replicas hold the spilled block too, so it is not
    // rewritten in place (only this node's copy would change): a spilled
    // patch is replaced by a new one over the same base (below), on every
    // copy; a spilled whole block, no base for its own ref, is completed.
    if (allowed !== 'local') {
      if (!store.needsBase(current)) return undefined;
    } else {
      return inPlace(state, current, written);
    }
  } else {
    const entry = state.map.lookup(index);
    if (!entry || (entry.flags & ENTRY_SEALED) !== 0) return undefined;
    const owner = state.map.ownerOf(entry.generation);
    current = store.lookup(owner, entry.generation, index);
    if (current === undefined) {
      // Not in this node's store (a store-less client never has it): in a
      // cluster, a patch over the copies the block's targets hold, whose
      // entry the worker fetches and checks by the map's hash.
      if (allowed === 'local' || subBlockCount(written) * 2 > cache.subBlocks) return undefined;
      return remoteBased(written, owner, entry.generation, entry);
    }
  }
  // A new patch takes a slot and keeps its base's: while a store runs short,
  // blocks are stored whole, so each commit frees the patches it replaces
  // and their bases instead of holding more.
  if (store.freeSlots < store.slotCount * PATCH_MIN_FREE_SHARE) return undefined;
  const older = store.needsBase(current) ? current : -1;
  const baseSlot = older >= 0 ? store.baseOf(older) : current;
  if (baseSlot < 0) return undefined;
  const held = older >= 0 ? store.presentOf(older) : 0;
  if (subBlockCount((written | held) >>> 0) * 2 > cache.subBlocks) return undefined;
  const base = store.refOf(baseSlot);
  return {
    written,
    baseSlot,
    baseVolume: base.volumeId,
    baseGeneration: base.generation,
    olderSlot: older,
    inPlace: false,
  };
}

/** A patch over a base only the block's targets hold: (volumeId, generation), of `hash`. */
function remoteBased(
  written: number,
  volumeId: number,
  generation: number,
  hash: { hashLo: number; hashHi: number },
): PatchSource {
  return {
    written,
    baseSlot: -1,
    baseVolume: volumeId,
    baseGeneration: generation,
    baseHashLo: hash.hashLo,
    baseHashHi: hash.hashHi,
    olderSlot: -1,
    inPlace: false,
  };
}

/** A single node's spilled block (slot `current`) written into in place. */
function inPlace(state: VolumeState, current: number, written: number): PatchSource | undefined {
  const { store } = state.services;
  const baseSlot = store.baseOf(current);
  if (baseSlot < 0 && store.needsBase(current)) return undefined; // its base is missing
  const base = baseSlot >= 0 ? store.refOf(baseSlot) : NO_BASE;
  return {
    written,
    baseSlot,
    baseVolume: base.volumeId,
    baseGeneration: base.generation,
    olderSlot: current,
    inPlace: true,
  };
}
