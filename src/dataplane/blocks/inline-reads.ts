/**
 * InlineReads: whether the main thread's next read of the store is a
 * synchronous pread on the event loop's own thread or a round trip through
 * libuv's thread pool.
 *
 * A storage node serves a peer's GET_RANGE with two small reads (the range
 * and its sub-sums entry) from data that is usually in the page cache. Each
 * pooled read wakes a pool thread and then the loop: on this project's VMs
 * that is two context switches and a few futex calls around a pread of a
 * few microseconds, and the replies to one received burst go out one writev
 * each instead of together (docs/benchmarks.md, session 19). Read inline,
 * the burst is answered within one turn of the loop.
 *
 * But a synchronous read that misses the page cache holds up every request
 * the loop serves for a disk read. So only reads up to INLINE_READ_MAX_BYTES
 * go inline, and only while the smoothed time of the inline ones stays under
 * INLINE_READ_MAX_MS. Past it, reads go through the pool, and one in
 * PROBE_EVERY is read inline anyway to notice when the disk (or the cache)
 * answers fast again. Unlike the intent log's InlineWrites, only inline
 * reads are timed: a pooled read's time is mostly the wait for a busy loop,
 * not the disk.
 */
import { readSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

/** Largest read made on the calling thread. */
export const INLINE_READ_MAX_BYTES = 128 * 1024;
/** Smoothed time of inline reads above which reads go through the pool. */
export const INLINE_READ_MAX_MS = 0.25;
/** While reads are pooled, one in this many is made inline to measure again. */
export const PROBE_EVERY = 32;

export class InlineReads {
  private smoothedMs = 0;
  private pooledSinceProbe = 0;

  /** maxMs: the smoothed time past which reads are pooled (tests that must see reads inline pass Infinity). */
  constructor(private readonly maxMs = INLINE_READ_MAX_MS) {}

  /** Read `bytes` inline? */
  inline(bytes: number): boolean {
    if (bytes > INLINE_READ_MAX_BYTES) return false;
    if (this.smoothedMs <= this.maxMs) return true;
    if (++this.pooledSinceProbe < PROBE_EVERY) return false;
    this.pooledSinceProbe = 0;
    return true;
  }

  /** An inline read took `ms`. */
  took(ms: number): void {
    this.smoothedMs += (ms - this.smoothedMs) / 8;
  }

  /** The smoothed time of inline reads, in ms. */
  get averageMs(): number {
    return this.smoothedMs;
  }

  /** Whether reads are inline now (for tests and status). */
  get fast(): boolean {
    return this.smoothedMs <= this.maxMs;
  }

  /**
   * Fill dest[from, from + length) from `position` of `fd` on this thread,
   * timed; a short read goes on from where it stopped. Returns the bytes
   * read, fewer than asked only at the end of the file.
   */
  readFully(fd: number, dest: Uint8Array, from: number, length: number, position: number): number {
    const started = performance.now();
    let done = 0;
    while (done < length) {
      const n = readSync(fd, dest, from + done, length - done, position + done);
      if (n === 0) break;
      done += n;
    }
    this.took(performance.now() - started);
    return done;
  }
}
