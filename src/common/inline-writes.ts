/**
 * Writes on the event loop's own thread, and when to make them there: the
 * intent logs' O_DSYNC batches (intent-log/), a peer's patches into the
 * block store (blocks/received-blocks.ts).
 */
import { writeSync, writevSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

/** Largest batch written on the calling thread (InlineWrites). */
export const INLINE_MAX_BYTES = 128 * 1024;
/** Smoothed write time above which batches go through the thread pool again (InlineWrites). */
export const INLINE_MAX_MS = 1;

/**
 * Whether a log's next batch is written on the event loop's own thread (a
 * synchronous O_DSYNC write) or through libuv's thread pool. A trip through
 * the pool wakes a pool thread and then the loop: on this project's VMs
 * about 50 µs of latency and 60 µs of CPU on top of a ~190 µs O_DSYNC 4 KiB
 * write (docs/benchmarks.md, session 17), which a FLUSH at queue depth 1
 * pays whole. But a synchronous write holds up every other request the loop
 * serves, so only small batches go inline, and only while the disk answers
 * fast: once the smoothed time of writes (inline or not) passes
 * INLINE_MAX_MS, batches go through the pool until it falls back under.
 */
export class InlineWrites {
  private smoothedMs = 0;

  /** maxMs: the smoothed time past which writes are pooled (page-cache writes: less than O_DSYNC ones). */
  constructor(private readonly maxMs = INLINE_MAX_MS) {}

  /** Write a batch of `bytes` inline? */
  inline(bytes: number): boolean {
    return bytes <= INLINE_MAX_BYTES && this.smoothedMs <= this.maxMs;
  }

  /** A batch's write took `ms` (inline or through the pool). */
  took(ms: number): void {
    this.smoothedMs += (ms - this.smoothedMs) / 8;
  }

  /** Write a batch of `bytes`: `inline` on this thread if inline() says so, else `pooled`; timed. */
  async write(bytes: number, inline: () => void, pooled: () => Promise<unknown>): Promise<void> {
    const started = performance.now();
    if (this.inline(bytes)) inline();
    else await pooled();
    this.took(performance.now() - started);
  }
}

/** Bytes [from, from + length) of `buffer` at `position` of `fd`, on this thread; a short write goes on from where it stopped. */
export function writeFullySync(
  fd: number,
  buffer: Uint8Array,
  from: number,
  length: number,
  position: number,
): void {
  for (let done = 0; done < length;) {
    const n = writeSync(fd, buffer, from + done, length - done, position + done);
    if (n <= 0) throw new Error(`write of ${length} bytes stopped after ${done}`);
    done += n;
  }
}

/** `chunks` one after the other at `position` of `fd`, on this thread; a short write goes on from where it stopped. */
export function writevFullySync(fd: number, chunks: readonly Buffer[], position: number): void {
  const total = chunks.reduce((n, c) => n + c.length, 0);
  let done = writevSync(fd, chunks as Buffer[], position);
  if (done === total) return;
  // Rare (a regular file writes whole unless it fails): the rest a chunk at a time.
  let skip = done;
  for (const chunk of chunks) {
    if (skip >= chunk.length) {
      skip -= chunk.length;
      continue;
    }
    writeFullySync(fd, chunk, skip, chunk.length - skip, position + done);
    done += chunk.length - skip;
    skip = 0;
  }
}
