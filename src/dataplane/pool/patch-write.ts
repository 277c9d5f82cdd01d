/**
 * PatchWriter: a pool worker's write of a block as a patch
 * (blocks/patches.ts) — only its written sub-blocks, over a base that
 * supplies the rest.
 *
 * What it reads: the base's sub-sums entry (for the sums of the sub-blocks
 * it does not hold), and, when it replaces an older patch over the same
 * base, that patch's entry and those of its sub-blocks not written again
 * (each checked against its sum: they are copied into the new patch). It
 * never reads the base's bytes. Written in place (the slot is the older
 * patch's own, a patch of the version being written), nothing is copied:
 * only the new sub-blocks are written, and the record and entry rewritten
 * with the union. When an entry is missing or stale (a store
 * upgraded, a crash before the entry was written) or a copied sub-block
 * fails its sum, it writes nothing and says so: the volume then writes the
 * block whole, as it would without patches.
 *
 * What it writes, in order: the patch's sub-blocks, its entry (sums of the
 * whole block, bound to the tree hash), then its record — so a record never
 * names bytes not yet written, as for whole blocks.
 */
import { assert } from '../../common/assert.js';
import type { Hasher } from '../blocks/hash.js';
import {
  fillPatchFields,
  isPatchRecord,
  patchPresent,
  subBlockCount,
  wantedRunEnd,
  wholeMaskOf,
} from '../blocks/patches.js';
import {
  OFF_HASH_HI,
  OFF_HASH_LO,
  RECORD_PATCH,
  RECORD_SIZE,
  fillRecord,
} from '../blocks/record.js';
import {
  SUB_BLOCK_SIZE,
  sealSubsums,
  setSubSum,
  subSum,
  subsumsEntrySize,
  treeHashInto,
} from '../blocks/sub-sums.js';
import { preadAll, pwriteAll } from './file-io.js';
import type { HeldWrites } from './held-writes.js';
import type { SubBlockIo } from './sub-block-io.js';

/** One block's patch, as the task describes it. */
export interface PatchWrite {
  volumeId: number;
  generation: number;
  index: number;
  /** The sub-blocks the cache slot holds (written). */
  written: number;
  baseSlot: number;
  baseVolume: number;
  baseGeneration: number;
  /** An older patch over the same base this one replaces (its other sub-blocks are kept), or -1. */
  olderSlot: number;
}

export class PatchWriter {
  private readonly subBlocks: number;
  private readonly wholeMask: number;
  /** The sub-sums entry the patch's other sums come from (its base's, or the older patch's). */
  private readonly known: Uint8Array;
  private readonly entry: Uint8Array;
  private readonly records: Uint8Array;
  private readonly recordView: DataView;
  /** After a write that returned false: why. */
  reason = '';
  /** After a write that returned true: the sub-blocks the patch's slot holds. */
  present = 0;
  private wroteInPlace = false;

  constructor(
    private readonly dataFd: number,
    /** The slot table's writes (held for the end of the batch: held-writes.ts). */
    private readonly recordWrites: HeldWrites,
    recordsBuffer: SharedArrayBuffer,
    private readonly blockSize: number,
    private readonly hash: Hasher,
    private readonly sums: SubBlockIo,
    /** A block-sized buffer the worker lends between tasks. */
    private readonly scratch: Uint8Array,
  ) {
    this.subBlocks = blockSize / SUB_BLOCK_SIZE;
    this.wholeMask = wholeMaskOf(blockSize);
    const size = subsumsEntrySize(blockSize);
    this.known = new Uint8Array(size);
    this.entry = new Uint8Array(size);
    this.records = new Uint8Array(recordsBuffer);
    this.recordView = new DataView(recordsBuffer);
  }

  /**
   * Store the cache block `plain` (only its `written` sub-blocks are
   * meaningful) in `slot` as a patch; its tree hash into hashes[at],
   * hashes[at + 1]. False, with nothing written, when the sums it needs are
   * not at hand (see the file comment).
   */
  write(p: PatchWrite, slot: number, plain: Uint8Array, hashes: Uint32Array, at: number): boolean {
    const { entry, known, scratch } = this;
    // The sums of the sub-blocks not written: an older patch's entry covers its whole block; else the base's.
    const source = p.olderSlot >= 0 ? p.olderSlot : p.baseSlot;
    if (!this.sums.readEntry(source, known, ...this.recordHash(source)))
      return this.refuse(`the sub-sums entry of slot ${source} is missing or stale`);
    // What the older block holds: a patch its present sub-blocks, a whole block (written in place) all.
    const olderHolds =
      p.olderSlot < 0
        ? 0
        : isPatchRecord(this.records, p.olderSlot)
          ? patchPresent(this.records, p.olderSlot)
          : this.wholeMask;
    const kept = (olderHolds & ~p.written) >>> 0;
    const inPlace = slot === p.olderSlot;
    // The older patch's kept sub-blocks, one pread per run of them (checked below).
    if (!inPlace)
      for (let first = 0; first < this.subBlocks; first++) {
        if ((kept & (1 << first)) === 0) continue;
        const end = wantedRunEnd(kept, kept, first);
        const from = first * SUB_BLOCK_SIZE;
        const to = end * SUB_BLOCK_SIZE;
        preadAll(this.dataFd, scratch.subarray(from, to), p.olderSlot * this.blockSize + from);
        first = end;
      }
    for (let k = 0; k < this.subBlocks; k++) {
      const bit = 1 << k;
      const from = k * SUB_BLOCK_SIZE;
      const to = from + SUB_BLOCK_SIZE;
      let sum: number;
      if (p.written & bit) {
        scratch.set(plain.subarray(from, to), from);
        sum = this.hash.hash32(scratch.subarray(from, to));
      } else if (inPlace || !(kept & bit)) {
        sum = subSum(known, k); // unchanged (the base's, or already in the slot)
      } else {
        sum = subSum(known, k);
        if (this.hash.hash32(scratch.subarray(from, to)) !== sum)
          return this.refuse(
            `sub-block ${k} of the older patch (slot ${p.olderSlot}) fails its xxh32`,
          );
      }
      setSubSum(entry, k, sum);
    }
    const hashOut = hashes.subarray(at, at + 2);
    treeHashInto(entry, this.hash, hashOut);
    const present = (p.written | kept) >>> 0;
    const toWrite = inPlace ? p.written : present;
    // One write per run of consecutive sub-blocks to write.
    for (let first = 0; first < this.subBlocks; first++) {
      if ((toWrite & (1 << first)) === 0) continue;
      let end = first + 1;
      while (end < this.subBlocks && (toWrite & (1 << end)) !== 0) end++;
      const from = first * SUB_BLOCK_SIZE;
      pwriteAll(
        this.dataFd,
        scratch.subarray(from, end * SUB_BLOCK_SIZE),
        slot * this.blockSize + from,
      );
      first = end;
    }
    sealSubsums(entry, hashOut[0], hashOut[1], this.hash);
    this.sums.writeEntry(slot, entry);
    this.present = present;
    this.wroteInPlace = inPlace;
    const base = slot * RECORD_SIZE;
    const record = new DataView(this.records.buffer, base, RECORD_SIZE);
    fillRecord(record, p, RECORD_PATCH, hashOut[0], hashOut[1]);
    fillPatchFields(record, { volumeId: p.baseVolume, generation: p.baseGeneration }, present);
    this.hash.stampRecord(record);
    this.recordWrites.put(slot);
    return true;
  }

  /**
   * The last patch written, as a replica is sent it (pool/patch-copies.ts):
   * a copy of its sealed entry, and of its present sub-blocks in order
   * (from the scratch buffer, which holds them until the next write).
   */
  lastForReplicas(): { entry: Uint8Array; data: Uint8Array } {
    // Written in place, the scratch buffer holds only the new sub-blocks.
    assert(!this.wroteInPlace, 'a patch written in place is never sent to replicas');
    const data = new Uint8Array(subBlockCount(this.present) * SUB_BLOCK_SIZE);
    let at = 0;
    for (let k = 0; k < this.subBlocks; k++) {
      if ((this.present & (1 << k)) === 0) continue;
      data.set(this.scratch.subarray(k * SUB_BLOCK_SIZE, (k + 1) * SUB_BLOCK_SIZE), at);
      at += SUB_BLOCK_SIZE;
    }
    return { entry: this.entry.slice(), data };
  }

  /** The hash a slot's record holds. */
  private recordHash(slot: number): [number, number] {
    const base = slot * RECORD_SIZE;
    return [
      this.recordView.getUint32(base + OFF_HASH_LO, true),
      this.recordView.getUint32(base + OFF_HASH_HI, true),
    ];
  }

  private refuse(reason: string): false {
    this.reason = reason;
    return false;
  }
}
