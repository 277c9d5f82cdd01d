/**
 * Writes on the event loop's own thread, and when to make them there: the
 * intent logs' O_DSYNC batches (intent-log/), a peer's patches into the
 * block store (blocks/received-blocks.ts, PATCH_WRITES).
 */
import { writeSync, writevSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

/** Largest batch written on the calling thread (InlineWrites). */
export const INLINE_MAX_BYTES = 128 * 1024;
/** Smoothed write time above which batches go through the thread pool again (InlineWrites). */
export const INLINE_MAX_MS = 1;
/** While batches are pooled with `probe`, one in this many is written inline to measure again. */
export const PROBE_EVERY = 32;

export interface InlineWritesOptions {
  /** The smoothed batch time past which batches are pooled. */
  maxMs: number;
  /** The largest batch written inline. */
  maxBytes: number;
  /**
   * Time only inline batches, and while pooled write one in PROBE_EVERY
   * inline anyway (InlineReads' rule): for writes into the page cache, whose
   * time through the pool is mostly the wait for a busy loop, not the disk —
   * timed too, one slow spell would keep them pooled for good.
   */
  probe: boolean;
}

/**
 * A peer's patches (blocks/received-blocks.ts): page-cache writes of a few
 * KiB each, a PUT_PATCHES of up to 64 blocks in one batch. Through the pool
 * every one is a trip of its own (a pool thread woken, then the loop): on a
 * 3-node cluster under 4 KiB random writes, 53–57k context switches a second
 * and 6.1–6.4k IOPS; inline, 32–41k and 6.6–7.0k (docs/benchmarks.md,
 * session 29). A batch of 1 MiB writes in about 1 ms; a disk that makes it
 * slower (dirty-page throttling) sends batches to the pool.
 */
export const PATCH_WRITES: InlineWritesOptions = {
  maxMs: 4,
  maxBytes: 4 * 1024 * 1024,
  probe: true,
};

const INTENT_LOG_WRITES: InlineWritesOptions = {
  maxMs: INLINE_MAX_MS,
  maxBytes: INLINE_MAX_BYTES,
  probe: false,
};

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
  private pooledSinceProbe = 0;

  /** Defaults: the intent logs' O_DSYNC batches (every batch timed). */
  constructor(private readonly options: InlineWritesOptions = INTENT_LOG_WRITES) {}

  /** Write a batch of `bytes` inline? */
  inline(bytes: number): boolean {
    if (bytes > this.options.maxBytes) return false;
    if (this.smoothedMs <= this.options.maxMs) return true;
    if (!this.options.probe || ++this.pooledSinceProbe < PROBE_EVERY) return false;
    this.pooledSinceProbe = 0;
    return true;
  }

  /** A batch's write took `ms`. */
  took(ms: number): void {
    this.smoothedMs += (ms - this.smoothedMs) / 8;
  }

  /** Write a batch of `bytes`: `inline` on this thread if inline() says so, else `pooled`; timed as the options say. */
  async write(bytes: number, inline: () => void, pooled: () => Promise<unknown>): Promise<void> {
    const started = performance.now();
    if (this.inline(bytes)) {
      inline();
    } else {
      await pooled();
      if (this.options.probe) return;
    }
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
