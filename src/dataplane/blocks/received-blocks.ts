/**
 * Blocks a peer sent (replication, repair), written into the slots the
 * store allocated for them a run of consecutive slots at a time
 * (LocalSlotStore.writeReceivedBlocks binds them afterwards): one writev of
 * the run's bytes and one write of its sub-sums entries, then one write of
 * its records, so a record never names bytes not yet written. A peer's batch
 * of 256 blocks costs a few trips through the thread pool instead of 768,
 * each of which wakes a pool thread and then the event loop. A block sent
 * as a patch (writeReceivedPatches) goes the same way: its sub-blocks and
 * entry, then its record.
 */
import type { FileHandle } from 'node:fs/promises';
import type { BlockRef } from '../../model/block-ref.js';
import { InlineWrites, writeFullySync } from '../../common/inline-writes.js';
import type { Hasher } from './hash.js';
import {
  NO_BASE,
  PATCH_MAX_SUB_BLOCKS,
  fillPatchFields,
  forEachSourceRun,
  wholeMaskOf,
  type PatchBase,
} from './patches.js';
import {
  NONCE_SIZE,
  OFF_NONCE,
  OFF_TAG,
  RECORD_PATCH,
  RECORD_SEALED,
  RECORD_SIZE,
  TAG_SIZE,
  fillRecord,
} from './record.js';
import { SUB_BLOCK_SIZE, encodeSubsums } from './sub-sums.js';

/**
 * A block received from a peer, in the slot allocated for it. RECORD_PATCH in
 * `flags`: its hash is its tree hash (a block some node stores as a patch,
 * sent whole: peer/wire-blocks.ts BLOCK_TREE_HASH), and it is stored as a
 * patch holding every sub-block, with no base.
 */
export interface ReceivedBlock {
  slot: number;
  ref: BlockRef;
  bytes: Uint8Array;
  flags: number;
  hash: { lo: number; hi: number };
  nonce: Uint8Array;
  tag: Uint8Array;
}

/** Every block is one block's bytes, with a nonce and a tag of their sizes; a RangeError names the first that is not. */
export function checkReceivedBlocks(blocks: readonly ReceivedBlock[], blockSize: number): void {
  for (const b of blocks) {
    if (b.bytes.length !== blockSize)
      throw new RangeError(`block write of ${b.bytes.length} bytes, expected ${blockSize}`);
    if (b.nonce.length !== NONCE_SIZE || b.tag.length !== TAG_SIZE)
      throw new RangeError(
        `nonce/tag of ${b.nonce.length}/${b.tag.length} bytes, expected ${NONCE_SIZE}/${TAG_SIZE}`,
      );
    if (b.flags & RECORD_PATCH && blockSize / SUB_BLOCK_SIZE > PATCH_MAX_SUB_BLOCKS)
      throw new RangeError(
        `a tree-hashed block, but blocks of ${blockSize} bytes are never patches`,
      );
  }
}

/** The store's files and slot table, as writeReceivedRun writes them. */
export interface ReceivedFiles {
  dataFile: FileHandle;
  slotsFile: FileHandle;
  /** Absent in a store opened without its sub-sums table (fsck's check). */
  subsumsFile: FileHandle | undefined;
  records: SharedArrayBuffer;
  blockSize: number;
  subsumsEntrySize: number;
  dataPath: string;
  hash: Hasher;
  /** Whether a received patch is written on the event loop's thread (writeReceivedPatches). */
  patchWrites: InlineWrites;
}

/** Most blocks in one run (a writev takes at most 1024 buffers). */
const MAX_RUN = 256;

/** Indexes of `blocks` grouped into runs of consecutive slots, each all sealed or all plain. */
export function receivedRuns(blocks: readonly ReceivedBlock[]): number[][] {
  const order = blocks.map((_, i) => i).sort((a, b) => blocks[a].slot - blocks[b].slot);
  const runs: number[][] = [];
  let run: number[] = [];
  for (const i of order) {
    const last = run.length > 0 ? blocks[run[run.length - 1]] : undefined;
    const joins =
      last !== undefined &&
      blocks[i].slot === last.slot + 1 &&
      (blocks[i].flags & RECORD_SEALED) === (last.flags & RECORD_SEALED) &&
      run.length < MAX_RUN;
    if (!joins && run.length > 0) {
      runs.push(run);
      run = [];
    }
    run.push(i);
  }
  if (run.length > 0) runs.push(run);
  return runs;
}

/** Blocks `run` of `blocks` (one of receivedRuns): data and sums, then records. */
export async function writeReceivedRun(
  files: ReceivedFiles,
  blocks: readonly ReceivedBlock[],
  run: number[],
): Promise<void> {
  const { blockSize, records, hash: hasher } = files;
  const first = blocks[run[0]].slot;
  const sealed = (blocks[run[0]].flags & RECORD_SEALED) !== 0;
  const dataBytes = blockSize * run.length;
  const writes: Promise<unknown>[] = [
    files.dataFile
      .writev(
        run.map((i) => blocks[i].bytes),
        first * blockSize,
      )
      .then(({ bytesWritten }) => {
        if (bytesWritten !== dataBytes)
          throw new Error(
            `short write of ${bytesWritten} of ${dataBytes} bytes in ${files.dataPath}`,
          );
      }),
  ];
  // Sealed blocks are always read whole (the AEAD tag covers the block), so only plain ones get sums.
  // A buffer per run: runs overlap (several peers' puts), and the write reads it later.
  if (!sealed && files.subsumsFile) {
    const size = files.subsumsEntrySize;
    const entries = new Uint8Array(size * run.length);
    run.forEach((i, k) => {
      const { bytes, hash } = blocks[i];
      encodeSubsums(entries.subarray(k * size, (k + 1) * size), bytes, hash.lo, hash.hi, hasher);
    });
    writes.push(files.subsumsFile.write(entries, 0, entries.length, first * size));
  }
  await Promise.all(writes);
  // Records after data, as in writeBlock: each slot stays free in the table until its bytes are written.
  for (const i of run) {
    const { slot, ref, flags, hash, nonce, tag } = blocks[i];
    const base = slot * RECORD_SIZE;
    const record = new DataView(records, base, RECORD_SIZE);
    fillRecord(record, ref, flags, hash.lo, hash.hi);
    const nonceBytes = new Uint8Array(records, base + OFF_NONCE, NONCE_SIZE);
    const tagBytes = new Uint8Array(records, base + OFF_TAG, TAG_SIZE);
    if (sealed) {
      nonceBytes.set(nonce);
      tagBytes.set(tag);
    } else {
      nonceBytes.fill(0);
      tagBytes.fill(0);
      if (flags & RECORD_PATCH) fillPatchFields(record, NO_BASE, wholeMaskOf(blockSize));
    }
    hasher.stampRecord(record);
  }
  const base = first * RECORD_SIZE;
  const bytes = RECORD_SIZE * run.length;
  await files.slotsFile.write(new Uint8Array(records, base, bytes), 0, bytes, base);
}

/** A block a peer sent as a patch (peer/wire-patches.ts), checked, in the slot allocated for it. */
export interface ReceivedPatch {
  slot: number;
  ref: BlockRef;
  base: PatchBase;
  /** The sub-blocks `data` holds, in order. */
  present: number;
  /** Its sub-sums entry, sealed with `hash` (its tree hash). */
  entry: Uint8Array;
  data: Uint8Array;
  hash: { lo: number; hi: number };
}

/**
 * Received patches into their slots: each one's sub-blocks (a write per run
 * of consecutive ones), then their sub-sums entries and then their records,
 * one write per run of consecutive slots — so, as for whole blocks, a record
 * never names bytes not yet written. Small page-cache writes: made on the
 * calling thread while such writes are fast (InlineWrites), where a trip
 * through the pool per write cost each patch several wake-ups of a pool
 * thread and the loop; else through the pool.
 */
export async function writeReceivedPatches(
  files: ReceivedFiles,
  patches: readonly ReceivedPatch[],
): Promise<void> {
  const { blockSize } = files;
  const writes: { file: FileHandle; bytes: Uint8Array; at: number }[] = [];
  let total = 0;
  for (const { slot, data, present } of patches) {
    let from = 0;
    forEachSourceRun(present, blockSize / SUB_BLOCK_SIZE, (first, end, inPatch) => {
      if (!inPatch) return;
      const bytes = (end - first) * SUB_BLOCK_SIZE;
      const at = slot * blockSize + first * SUB_BLOCK_SIZE;
      writes.push({ file: files.dataFile, bytes: data.subarray(from, from + bytes), at });
      from += bytes;
    });
    total += data.length + files.subsumsEntrySize + RECORD_SIZE;
  }
  const order = [...patches].sort((x, y) => x.slot - y.slot);
  const runs = slotRuns(order);
  const size = files.subsumsEntrySize;
  if (files.subsumsFile) {
    for (const run of runs) {
      const entries = new Uint8Array(size * run.length);
      run.forEach((p, k) => entries.set(p.entry.subarray(0, size), k * size));
      writes.push({ file: files.subsumsFile, bytes: entries, at: run[0].slot * size });
    }
  }
  const recordWrites = runs.map((run) => ({
    file: files.slotsFile,
    bytes: new Uint8Array(files.records, run[0].slot * RECORD_SIZE, run.length * RECORD_SIZE),
    at: run[0].slot * RECORD_SIZE,
  }));
  const fillRecords = () => {
    for (const patch of patches) fillPatchRecord(files, patch);
  };
  await files.patchWrites.write(
    total,
    () => {
      for (const w of writes) writeFullySync(w.file.fd, w.bytes, 0, w.bytes.length, w.at);
      fillRecords();
      for (const w of recordWrites) writeFullySync(w.file.fd, w.bytes, 0, w.bytes.length, w.at);
    },
    async () => {
      const all = async (list: typeof writes) =>
        Promise.all(
          list.map(async (w) => {
            const { bytesWritten } = await w.file.write(w.bytes, 0, w.bytes.length, w.at);
            if (bytesWritten !== w.bytes.length)
              throw new Error(
                `short write of ${bytesWritten} of ${w.bytes.length} bytes in ${files.dataPath}`,
              );
          }),
        );
      await all(writes);
      fillRecords();
      await all(recordWrites);
    },
  );
}

/** Patches (sorted by slot) in runs of consecutive slots. */
function slotRuns(sorted: readonly ReceivedPatch[]): ReceivedPatch[][] {
  const runs: ReceivedPatch[][] = [];
  for (const patch of sorted) {
    const last = runs[runs.length - 1];
    if (last && last[last.length - 1].slot === patch.slot - 1) last.push(patch);
    else runs.push([patch]);
  }
  return runs;
}

/** A received patch's record, in the shared slot table. */
function fillPatchRecord(files: ReceivedFiles, patch: ReceivedPatch): void {
  const base = patch.slot * RECORD_SIZE;
  new Uint8Array(files.records, base, RECORD_SIZE).fill(0);
  const record = new DataView(files.records, base, RECORD_SIZE);
  fillRecord(record, patch.ref, RECORD_PATCH, patch.hash.lo, patch.hash.hi);
  fillPatchFields(record, patch.base, patch.present);
  files.hash.stampRecord(record);
}
