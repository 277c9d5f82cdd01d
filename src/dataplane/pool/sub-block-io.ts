/**
 * SubBlockIo: a pool worker's side of the sub-block checksum table
 * (blocks/sub-sums.ts) — writing a block's entry when the block is stored,
 * and reading only the 4 KiB sub-blocks a cache miss wants.
 *
 * Contract
 * - An entry is used only if intact and made for the hash the map expects;
 *   otherwise, and when a sub-block fails its sum, the whole block is read
 *   and judged by its xxh64 (the map's hash). So only the map's hash ever
 *   makes a block bad: a wrong entry costs a whole read, never a false EIO.
 * - Nothing of the destination outside the wanted sub-blocks is written,
 *   except a whole copy already checked against the xxh64 (readWhole true).
 * - A whole read rewrites the block's entry, so the next miss on it is cheap
 *   (blocks of a format 1 store get theirs this way).
 * - Patches (blocks/patches.ts): the same, each sub-block read from the
 *   patch's slot or its base's as the patch's present mask says; the entry
 *   is the patch's (bound to its tree hash), and a whole read assembles the
 *   block from both and judges it by the tree hash. Writing one takes its
 *   sums from its base's entry (and an older patch's), never its bytes.
 * - One instance per thread (each worker's, and the main thread's in
 *   inline-misses.ts); a call runs to its end without yielding, so the
 *   entry buffer and the scratch block are reused with no allocation.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Hasher } from '../blocks/hash.js';
import { forEachSourceRun, wantedRunEnd, wholeMaskOf } from '../blocks/patches.js';
import {
  SUB_BLOCK_SIZE,
  SUBSUMS_FILE,
  encodeSubsums,
  sealSubsums,
  subSum,
  subsumsEntrySize,
  subsumsMatch,
  blockTreeHashInto,
} from '../blocks/sub-sums.js';
import { preadAll } from './file-io.js';
import { HeldWrites } from './held-writes.js';
import { READ_CHECKSUM_MISMATCH, READ_IO_ERROR, READ_OK } from './tasks.js';

/**
 * Where a patch's sub-blocks are: its own slot for those in `present`, its
 * base's for the rest (-1: none, the patch holds them all).
 */
export interface PatchLayout {
  baseSlot: number;
  present: number;
}

export class SubBlockIo {
  /** The table's descriptor, or -1 without one: blocks are then stored without sums and read whole. */
  private readonly subsumsFd: number;
  private readonly entrySize: number;
  private readonly entry: Uint8Array;
  private readonly hashOut = new Uint32Array(2);
  /** The present mask of a patch holding its whole block. */
  private readonly wholeMask: number;
  /**
   * Entry writes, held for the end of a write batch while `entries.holding`
   * (the worker's writeBatch: held-writes.ts); undefined without a table.
   */
  readonly entries: HeldWrites | undefined;
  /** After read(): why it failed ('' when it did not). */
  reason = '';
  /** After read(): the whole block was read (and checked) instead of the wanted sub-blocks. */
  readWhole = false;

  /**
   * dataPath: the store's data file, whose directory holds the table (every
   * store opened by this version has one: format 2). scratch: a block-sized
   * buffer the worker lends between tasks.
   */
  constructor(
    dataPath: string,
    private readonly dataFd: number,
    private readonly blockSize: number,
    private readonly hash: Hasher,
    private readonly scratch: Uint8Array,
  ) {
    this.subsumsFd = openIfPresent(join(dirname(dataPath), SUBSUMS_FILE));
    this.entrySize = subsumsEntrySize(blockSize);
    this.entry = new Uint8Array(this.entrySize);
    this.wholeMask = wholeMaskOf(blockSize);
    this.entries = this.subsumsFd >= 0 ? new HeldWrites(this.subsumsFd, this.entrySize) : undefined;
  }

  /** Close the table's descriptor (the data file's is the caller's). */
  close(): void {
    if (this.subsumsFd >= 0) closeSync(this.subsumsFd);
  }

  /** Write the entry of `stored` (the block's bytes as stored, xxh64 hashLo/hashHi) for `slot`. */
  writeSums(slot: number, stored: Uint8Array, hashLo: number, hashHi: number): void {
    if (!this.entries) return;
    encodeSubsums(this.entry, stored, hashLo, hashHi, this.hash);
    this.entries.put(slot, this.entry);
  }

  /** Read `slot`'s entry into `entry`: true when it is intact and made for (hashLo, hashHi). */
  readEntry(slot: number, entry: Uint8Array, hashLo: number, hashHi: number): boolean {
    const held = this.entries?.holding ? this.entries.held(slot) : undefined;
    if (held) {
      entry.set(held);
      return subsumsMatch(entry, hashLo, hashHi, this.hash);
    }
    // A short read (a table shorter than the store) is simply no entry.
    return (
      this.subsumsFd >= 0 &&
      readSync(this.subsumsFd, entry, 0, this.entrySize, slot * this.entrySize) ===
        this.entrySize &&
      subsumsMatch(entry, hashLo, hashHi, this.hash)
    );
  }

  /** Store `entry` (sealed) as `slot`'s. */
  writeEntry(slot: number, entry: Uint8Array): void {
    this.entries?.put(slot, entry);
  }

  /**
   * Read the sub-blocks in `wanted` (bit i: sub-block i) of the block in
   * `slot` into `dest` (the block's cache slot), checked. For a patch,
   * `patch` says where its sub-blocks are. Returns a READ_* status; sets
   * `reason` and `readWhole`.
   */
  read(
    slot: number,
    dest: Uint8Array,
    wanted: number,
    hashLo: number,
    hashHi: number,
    patch?: PatchLayout,
  ): number {
    const present = patch ? patch.present : 0xffff_ffff;
    const baseSlot = patch ? patch.baseSlot : -1;
    this.reason = '';
    this.readWhole = false;
    try {
      if (!this.readEntry(slot, this.entry, hashLo, hashHi))
        return this.readWholeBlock(slot, dest, hashLo, hashHi, '', patch);
      // One pread per run of consecutive wanted sub-blocks from one slot.
      for (let first = 0; first < 32; first++) {
        if ((wanted & (1 << first)) === 0) continue;
        const inPatch = (present & (1 << first)) !== 0;
        const end = wantedRunEnd(wanted, present, first);
        const from = first * SUB_BLOCK_SIZE;
        const source = inPatch ? slot : baseSlot;
        preadAll(
          this.dataFd,
          dest.subarray(from, end * SUB_BLOCK_SIZE),
          source * this.blockSize + from,
        );
        for (let k = first; k < end; k++) {
          const bytes = dest.subarray(k * SUB_BLOCK_SIZE, (k + 1) * SUB_BLOCK_SIZE);
          if (this.hash.hash32(bytes) !== subSum(this.entry, k)) {
            const why = `sub-block ${k} (bytes ${k * SUB_BLOCK_SIZE}–${(k + 1) * SUB_BLOCK_SIZE - 1}) fails its xxh32; `;
            return this.readWholeBlock(slot, dest, hashLo, hashHi, why, patch);
          }
        }
        first = end - 1;
      }
      return READ_OK;
    } catch (err) {
      this.reason = (err as Error).message;
      return READ_IO_ERROR;
    }
  }

  /**
   * A patch asked for whole, into dest (a fresh cache slot: nothing in it is
   * served yet): its base read whole, then its own sub-blocks over it (one
   * read of the span they lie in), judged by the tree hash. Two reads
   * whatever the patch's shape; going by its entry instead costs one read
   * of the entry and one per run (4-5 small reads a block after random
   * writes). `firstReadDone`: dest holds what the first read would give
   * already (a readv of several, local-reads.ts): its base's block, or its
   * own when it holds every sub-block. The entry is not rewritten: nothing
   * was learnt.
   */
  readPatchWhole(
    slot: number,
    dest: Uint8Array,
    hashLo: number,
    hashHi: number,
    patch: PatchLayout,
    firstReadDone = false,
  ): number {
    this.reason = '';
    this.readWhole = false;
    try {
      if (patch.baseSlot < 0 || patch.present === this.wholeMask) {
        if (!firstReadDone) preadAll(this.dataFd, dest, slot * this.blockSize);
      } else {
        if (!firstReadDone) preadAll(this.dataFd, dest, patch.baseSlot * this.blockSize);
        this.overlayPresent(slot, patch.present, dest);
      }
    } catch (err) {
      this.reason = (err as Error).message;
      return READ_IO_ERROR;
    }
    blockTreeHashInto(dest, this.entry, this.hash, this.hashOut);
    if (this.hashOut[0] !== hashLo || this.hashOut[1] !== hashHi) {
      this.reason = `stored tree hash ${hex(this.hashOut[1], this.hashOut[0])}, expected ${hex(hashHi, hashLo)}`;
      return READ_CHECKSUM_MISMATCH;
    }
    return READ_OK;
  }

  /**
   * The sub-blocks a patch in `slot` holds (`present`) over `block`: one read
   * of the span from the first to the last, straight into `block` when they
   * are one run, else into scratch and copied run by run.
   */
  private overlayPresent(slot: number, present: number, block: Uint8Array): void {
    if (present === 0) return;
    const first = 31 - Math.clz32(present & -present);
    const end = 32 - Math.clz32(present);
    const from = first * SUB_BLOCK_SIZE;
    const to = end * SUB_BLOCK_SIZE;
    const at = slot * this.blockSize + from;
    const oneRun = ((present >>> first) & ((present >>> first) + 1)) === 0;
    if (oneRun) return preadAll(this.dataFd, block.subarray(from, to), at);
    const span = this.scratch.subarray(from, to);
    preadAll(this.dataFd, span, at);
    for (let k = first; k < end; k++) {
      if ((present & (1 << k)) === 0) continue;
      const runEnd = wantedRunEnd(present, present, k);
      block.set(
        this.scratch.subarray(k * SUB_BLOCK_SIZE, runEnd * SUB_BLOCK_SIZE),
        k * SUB_BLOCK_SIZE,
      );
      k = runEnd - 1;
    }
  }

  /**
   * The whole block into scratch — for a patch, its base's bytes overlaid
   * with its own (one read each, and one per run of its sub-blocks) and
   * judged by the tree hash — checked against the map's hash, copied to
   * dest, its entry rewritten. Returns a READ_* status.
   */
  readWholeBlock(
    slot: number,
    dest: Uint8Array,
    hashLo: number,
    hashHi: number,
    why: string,
    patch?: PatchLayout,
  ): number {
    const { scratch, hashOut, entry } = this;
    if (!patch || patch.baseSlot < 0) {
      preadAll(this.dataFd, scratch, slot * this.blockSize);
    } else {
      preadAll(this.dataFd, scratch, patch.baseSlot * this.blockSize);
      forEachSourceRun(patch.present, this.blockSize / SUB_BLOCK_SIZE, (first, end, inPatch) => {
        if (!inPatch) return;
        const from = first * SUB_BLOCK_SIZE;
        preadAll(
          this.dataFd,
          scratch.subarray(from, end * SUB_BLOCK_SIZE),
          slot * this.blockSize + from,
        );
      });
    }
    if (patch) blockTreeHashInto(scratch, entry, this.hash, hashOut);
    else this.hash.hash64Into(scratch, hashOut, 0);
    if (hashOut[0] !== hashLo || hashOut[1] !== hashHi) {
      const kind = patch ? 'tree hash' : 'xxh64';
      this.reason = `${why}stored ${kind} ${hex(hashOut[1], hashOut[0])}, expected ${hex(hashHi, hashLo)}`;
      return READ_CHECKSUM_MISMATCH;
    }
    dest.set(scratch);
    if (patch) {
      sealSubsums(entry, hashLo, hashHi, this.hash);
      this.writeEntry(slot, entry);
    } else {
      this.writeSums(slot, scratch, hashLo, hashHi);
    }
    this.readWhole = true;
    return READ_OK;
  }
}

function openIfPresent(path: string): number {
  try {
    return openSync(path, 'r+');
  } catch {
    return -1;
  }
}

function hex(hi: number, lo: number): string {
  return hi.toString(16).padStart(8, '0') + lo.toString(16).padStart(8, '0');
}
