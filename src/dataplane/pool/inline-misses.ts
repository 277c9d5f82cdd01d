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
 * store, at most INLINE_MISS_MAX_BYTES. Whole blocks (sequential readers)
 * stay in the pool, where the workers hash them in parallel with the loop.
 *
 * How: synchronously, while the smoothed time of these reads says the data
 * answers from memory (at most INLINE_MISS_SYNC_MS: ~6 µs on this project's
 * VM with the store in the page cache, 60-70 µs under a 512 MiB memory
 * limit where most come from the disk). Slower, each is handed to libuv's
 * thread pool (async-misses.ts) so a burst's preads overlap and the loop
 * never waits on the disk; one in PROBE_EVERY is still read here, timed, to
 * notice when memory answers again.
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
import { AsyncMisses } from './async-misses.js';
import { SubBlockIo, type PatchLayout } from './sub-block-io.js';
import { READ_OK, type WorkerSetup } from './tasks.js';

/** The largest miss read inline: a few sub-blocks; a whole block's hash is a worker's. */
export const INLINE_MISS_MAX_BYTES = 16 * 1024;
/**
 * At or below this smoothed time a miss is answered from memory (the page
 * cache, or a host's) and read synchronously: a pooled read's wake-ups cost
 * more than the read (67k 4 KiB random reads a second synchronously, 20-25k
 * pooled, docs/benchmarks.md session 24). Above it the disk is the wait,
 * and misses are read by libuv's pool.
 */
export const INLINE_MISS_SYNC_MS = 0.02;

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
  private readonly overlapped: AsyncMisses;
  /** Misses answered here synchronously. */
  inline = 0;

  constructor(
    setup: WorkerSetup,
    hash: Hasher,
    /** Where a miss goes that cannot be answered here: the pool's workers. */
    toWorkers: (r: MissRead) => void,
    /** Whether misses are read synchronously, from their times (the tests drive it). */
    private readonly policy = new InlineReads(INLINE_MISS_SYNC_MS),
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
    this.overlapped = new AsyncMisses(
      this.dataFd,
      this.io,
      this.cache,
      this.records,
      this.blockSize,
      hash,
      toWorkers,
      () => this.closeFiles(),
    );
  }

  /** Misses answered from libuv's pool. */
  get async(): number {
    return this.overlapped.answered;
  }

  /** Is the store answering as fast as memory (misses read synchronously)? */
  get fromMemory(): boolean {
    return this.policy.averageMs <= INLINE_MISS_SYNC_MS;
  }

  /** May `r` be read by this thread (a small plain local miss)? */
  qualifies(r: MissRead): boolean {
    const wanted = r.subBlocks ?? 0;
    if (r.key !== null || r.storeSlot < 0 || wanted === 0 || wanted === this.wholeMask)
      return false;
    return subBlockCount(wanted) * SUB_BLOCK_SIZE <= INLINE_MISS_MAX_BYTES;
  }

  /**
   * Is the next miss that qualifies() read synchronously (true: read()) or
   * started in libuv's pool (false: start())? As the times of the
   * synchronous reads say, with one probe in PROBE_EVERY while they are slow.
   */
  synchronously(): boolean {
    return this.policy.inline(INLINE_MISS_MAX_BYTES);
  }

  /**
   * Start reading `r`, which qualifies(), in libuv's pool: true when started
   * (done() or the workers follow); false: the workers must take it.
   */
  start(r: MissRead): boolean {
    return this.overlapped.start(r);
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

  /** No more misses; the files close once the last one in libuv's pool is answered. */
  close(): void {
    this.overlapped.close();
  }

  private closeFiles(): void {
    this.io.close();
    closeSync(this.dataFd);
  }
}
