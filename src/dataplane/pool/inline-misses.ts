/**
 * InlineMisses: a small cache miss of a plain block this node stores, read
 * and checked on the main thread instead of in a pool task.
 *
 * A random 4 KiB miss is two preads (the sub-sums entry, the 4 KiB) and an
 * xxh32: a few microseconds of work. Through the pool it also costs a task
 * message each way, a worker woken, and the reply's wake-up of the loop,
 * which on this project's VMs is most of the time a miss takes (the same
 * finding as the peer side's InlineReads, docs/benchmarks.md session 19).
 * Read inline, a burst of misses is answered within one turn of the loop.
 *
 * What goes inline: a read of some sub-blocks (not the whole block) of a
 * plain block (not sealed: opening needs the whole block) in this node's
 * store, at most INLINE_MISS_MAX_BYTES, while the smoothed time of inline
 * misses says the disk answers fast (blocks/inline-reads.ts: past 0.25 ms
 * they go back to the pool, one in 32 still inline to measure again). Whole
 * blocks (sequential readers) stay in the pool, where two workers hash them
 * in parallel with the loop.
 *
 * How much of a burst: all of it while misses take under INLINE_MISS_ALL_MS
 * (the data is in memory: on this project's VM a miss inline takes ~50 µs,
 * and handing part of a burst to the workers cost 30 % more CPU for no more
 * IOPS, docs/benchmarks.md session 20). Slower, the main thread reads only
 * its share (one part in threads + 1) and the rest go to the workers first,
 * so a real disk sees reads side by side; a lone miss (a reader at queue
 * depth 1) is read here either way.
 *
 * Only a read that succeeds is answered here. Anything else — an entry
 * missing, a sub-block failing its sum after a whole read, an I/O error —
 * goes to the pool as before, which reads again and reports it (and in a
 * cluster serves a replica's copy and flags ours): failures keep one path.
 *
 * The cache slot is Loading and handed to this read alone, as it would be
 * to a worker's (cache/README.md), so the main thread writing its bytes
 * here is the slot's one writer.
 */
import { closeSync, openSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import type { Hasher } from '../blocks/hash.js';
import { InlineReads } from '../blocks/inline-reads.js';
import { isPatchRecord, patchPresent, subBlockCount, wholeMaskOf } from '../blocks/patches.js';
import { SUB_BLOCK_SIZE } from '../blocks/sub-sums.js';
import { SubBlockIo, type PatchLayout } from './sub-block-io.js';
import { READ_OK, type WorkerSetup } from './tasks.js';

/** The largest miss read inline: a few sub-blocks; a whole block's hash is a worker's. */
export const INLINE_MISS_MAX_BYTES = 16 * 1024;
/**
 * Below this smoothed time a miss is answered from memory (the page cache,
 * or a host's): reading every one here costs less than handing any over.
 * Above it the disk is the wait, and only the main thread's share is read
 * here so the workers' preads overlap it (DataPool.dispatchReads).
 */
export const INLINE_MISS_ALL_MS = 0.1;

/** What a read needs to be tried inline (a subset of DataPool's ReadRequest). */
export interface MissRead {
  key: Uint8Array | null;
  cacheSlot: number;
  storeSlot: number;
  hashLo: number;
  hashHi: number;
  subBlocks?: number;
  baseSlot?: number;
  done(status: number, reason: string, localBad?: boolean, whole?: boolean): void;
}

export class InlineMisses {
  private readonly dataFd: number;
  private readonly io: SubBlockIo;
  private readonly cache: Uint8Array;
  private readonly records: Uint8Array;
  private readonly blockSize: number;
  private readonly wholeMask: number;
  private readonly patch: PatchLayout = { baseSlot: -1, present: 0 };
  /** Misses answered here, and those handed to the pool though eligible (the disk was slow). */
  inline = 0;
  pooled = 0;

  constructor(
    setup: WorkerSetup,
    hash: Hasher,
    /** Whether misses go inline, from their times (the tests drive it). */
    private readonly policy = new InlineReads(),
  ) {
    this.blockSize = setup.blockSize;
    this.wholeMask = wholeMaskOf(setup.blockSize);
    this.cache = new Uint8Array(setup.cache);
    this.records = new Uint8Array(setup.records);
    this.dataFd = openSync(setup.dataPath, 'r');
    this.io = new SubBlockIo(
      setup.dataPath,
      this.dataFd,
      setup.blockSize,
      hash,
      new Uint8Array(setup.blockSize),
    );
  }

  /** Is the disk answering as fast as memory (take every miss here, not a share)? */
  get fromMemory(): boolean {
    return this.policy.averageMs <= INLINE_MISS_ALL_MS;
  }

  /** May `r` be read here (a small plain local miss, and the disk answering fast)? */
  qualifies(r: MissRead): boolean {
    const wanted = r.subBlocks ?? 0;
    if (r.key !== null || r.storeSlot < 0 || wanted === 0 || wanted === this.wholeMask)
      return false;
    if (subBlockCount(wanted) * SUB_BLOCK_SIZE > INLINE_MISS_MAX_BYTES) return false;
    if (this.policy.inline(INLINE_MISS_MAX_BYTES)) return true;
    this.pooled++;
    return false;
  }

  /**
   * Read `r`, which qualifies(), here: true when it succeeded (its done()
   * called); false: the pool must take it.
   */
  read(r: MissRead): boolean {
    const wanted = r.subBlocks!;
    const slot = r.storeSlot;
    let patch: PatchLayout | undefined;
    if (isPatchRecord(this.records, slot)) {
      patch = this.patch;
      patch.baseSlot = r.baseSlot ?? -1;
      patch.present = patchPresent(this.records, slot);
      if (patch.baseSlot < 0 && patch.present !== this.wholeMask) return false;
    }
    const started = performance.now();
    const dest = this.cache.subarray(
      r.cacheSlot * this.blockSize,
      (r.cacheSlot + 1) * this.blockSize,
    );
    const status = this.io.read(slot, dest, wanted, r.hashLo, r.hashHi, patch);
    this.policy.took(performance.now() - started);
    if (status !== READ_OK) return false;
    this.inline++;
    r.done(READ_OK, '', false, this.io.readWhole);
    return true;
  }

  close(): void {
    this.io.close();
    closeSync(this.dataFd);
  }
}
