/**
 * AsyncMisses: small cache misses read by libuv's thread pool instead of on
 * the main thread, for when they come from a disk rather than memory.
 *
 * Read synchronously (inline-misses.ts), each miss holds the event loop for
 * its disk read, so a burst of them reaches the disk one at a time. Under a
 * memory limit of 512 MiB (a 2 GiB region, the page cache mostly gone) the
 * main thread spent half its time blocked in pread and served 12-13k 4 KiB
 * random reads a second; the disk answers 18k a second one at a time and
 * 34k four at a time (fio psync, docs/benchmarks.md session 24). Handed to
 * libuv's pool, the preads of a burst overlap and the loop goes on parsing
 * requests and sending replies meanwhile: 20-23k.
 *
 * Only the data goes through the pool. The sub-sums entry (a few dozen bytes
 * of a small, hot file) is read here first: as a second pooled read it cost
 * a completion of its own and measured slower (12-15k against 16-18k).
 *
 * Completions are answered together, after the loop's poll phase
 * (setImmediate): answered one by one, each reply went out in a writev of
 * its own (a fifth of the main thread in a perf profile); together, a
 * session's replies to a burst share one.
 *
 * A read that fails — an I/O error, a short read, a sub-block failing its
 * sum — is handed to the pool's workers, which read it again and report it,
 * as for a synchronous miss (one path for failures).
 *
 * Reuse: each in-flight miss holds one AsyncMiss (its entry buffer and
 * callback), taken from and returned to a free list, so a read allocates
 * nothing once the list has grown to the burst's size.
 */
import { read as readFile } from 'node:fs';
import type { Hasher } from '../blocks/hash.js';
import { isPatchRecord, patchPresent, wantedRunEnd, wholeMaskOf } from '../blocks/patches.js';
import { SUB_BLOCK_SIZE, subSum, subsumsEntrySize } from '../blocks/sub-sums.js';
import type { MissRead } from './inline-misses.js';
import type { SubBlockIo } from './sub-block-io.js';
import { READ_OK } from './tasks.js';

/** One miss in flight: its request, the reads it waits for, its sub-sums entry. */
class AsyncMiss {
  request: MissRead | undefined;
  pending = 0;
  failed = false;
  readonly entry: Uint8Array;
  /** The completion of each of its preads (bound once, so issuing one allocates no closure). */
  readonly onRead: (err: NodeJS.ErrnoException | null, bytesRead: number) => void;
  /** What each pread asked for, summed, and what came back: a short read fails the miss. */
  asked = 0;
  got = 0;

  constructor(entrySize: number, owner: AsyncMisses) {
    this.entry = new Uint8Array(entrySize);
    this.onRead = (err, bytesRead) => {
      if (err) this.failed = true;
      else this.got += bytesRead;
      if (--this.pending === 0) owner.completed(this);
    };
  }
}

export class AsyncMisses {
  private readonly free: AsyncMiss[] = [];
  private finished: AsyncMiss[] = [];
  private spare: AsyncMiss[] = [];
  private answerScheduled = false;
  private readonly entrySize: number;
  private readonly wholeMask: number;
  private closing = false;
  /** Misses in flight (their preads not all back, or not yet answered). */
  inFlight = 0;
  /** Misses answered from a pooled pread. */
  answered = 0;

  constructor(
    private readonly dataFd: number,
    private readonly io: SubBlockIo,
    private readonly cache: Uint8Array,
    private readonly records: Uint8Array,
    private readonly blockSize: number,
    private readonly hash: Hasher,
    /** Where a miss goes when this cannot answer it: the pool's workers. */
    private readonly toWorkers: (request: MissRead) => void,
    /** Called once no miss is in flight after close was asked (the descriptors may go). */
    private readonly drained: () => void,
  ) {
    this.entrySize = subsumsEntrySize(blockSize);
    this.wholeMask = wholeMaskOf(blockSize);
  }

  /**
   * Start reading `r` (a small plain or patch miss, inline-misses.ts
   * qualifies()): true when started — done() or the workers follow;
   * false when it cannot be read this way (no intact entry, a patch without
   * its base): the caller sends it to the workers.
   */
  start(r: MissRead): boolean {
    if (this.closing) return false;
    const slot = r.storeSlot;
    let present = 0xffff_ffff;
    let baseSlot = -1;
    if (isPatchRecord(this.records, slot)) {
      present = patchPresent(this.records, slot);
      baseSlot = r.baseSlot ?? -1;
      if (baseSlot < 0 && present !== this.wholeMask) return false;
    }
    const miss = this.free.pop() ?? new AsyncMiss(this.entrySize, this);
    if (!this.entryRead(slot, miss.entry, r)) {
      this.free.push(miss);
      return false;
    }
    miss.request = r;
    miss.failed = false;
    miss.pending = 1; // held until every pread is issued
    miss.asked = 0;
    miss.got = 0;
    this.inFlight++;
    const wanted = r.subBlocks!;
    const cacheBase = r.cacheSlot * this.blockSize;
    // One pread per run of consecutive wanted sub-blocks from one slot.
    for (let first = 0; first < 32; first++) {
      if ((wanted & (1 << first)) === 0) continue;
      const end = wantedRunEnd(wanted, present, first);
      const from = first * SUB_BLOCK_SIZE;
      const length = (end - first) * SUB_BLOCK_SIZE;
      const source = (present & (1 << first)) !== 0 ? slot : baseSlot;
      miss.pending++;
      miss.asked += length;
      readFile(
        this.dataFd,
        this.cache,
        cacheBase + from,
        length,
        source * this.blockSize + from,
        miss.onRead,
      );
      first = end - 1;
    }
    if (--miss.pending === 0) this.completed(miss);
    return true;
  }

  /** `slot`'s sub-sums entry, intact and made for r's hash; false for none, or an I/O error (the workers read it again and report it). */
  private entryRead(slot: number, entry: Uint8Array, r: MissRead): boolean {
    try {
      return this.io.readEntry(slot, entry, r.hashLo, r.hashHi);
    } catch {
      return false;
    }
  }

  /** Every pread of `miss` is back: answer it with the others back by the end of this poll. */
  completed(miss: AsyncMiss): void {
    this.finished.push(miss);
    if (this.answerScheduled) return;
    this.answerScheduled = true;
    setImmediate(this.answerFinished);
  }

  private readonly answerFinished = (): void => {
    this.answerScheduled = false;
    const batch = this.finished;
    this.finished = this.spare;
    for (const miss of batch) {
      const r = miss.request!;
      miss.request = undefined;
      const good = !miss.failed && miss.got === miss.asked && this.sumsMatch(r, miss.entry);
      this.free.push(miss);
      this.inFlight--;
      if (good) {
        this.answered++;
        r.done(READ_OK, '', false, false);
      } else {
        this.toWorkers(r);
      }
    }
    batch.length = 0;
    this.spare = batch;
    if (this.closing && this.inFlight === 0) this.drained();
  };

  /** Each wanted sub-block, now in the cache slot, against its xxh32 in `entry`. */
  private sumsMatch(r: MissRead, entry: Uint8Array): boolean {
    const wanted = r.subBlocks!;
    const base = r.cacheSlot * this.blockSize;
    for (let k = 0; k < 32; k++) {
      if ((wanted & (1 << k)) === 0) continue;
      const at = base + k * SUB_BLOCK_SIZE;
      if (this.hash.hash32(this.cache.subarray(at, at + SUB_BLOCK_SIZE)) !== subSum(entry, k))
        return false;
    }
    return true;
  }

  /** No more misses: drained() is called now, or once the last in flight is answered. */
  close(): void {
    this.closing = true;
    if (this.inFlight === 0) this.drained();
  }
}
