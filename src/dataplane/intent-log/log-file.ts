/**
 * The file under an intent log (a single node's, intent-log.ts, or a
 * holder's, holder-log.ts): created empty and private when absent, opened
 * O_DSYNC — a batch's write returns once its bytes are durable, the
 * fdatasync in the same system call (one write per batch, inline or one
 * trip through the thread pool: InlineWrites) — and preallocated with zeros, so later writes land on
 * allocated blocks and an fdatasync of them needs no metadata journal.
 */
import { closeSync, constants, openSync, writeSync, writevSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';

const ZERO_CHUNK = 1024 * 1024;

export interface OpenedLogFile {
  file: FileHandle;
  /** Created by this call: nothing in it. */
  created: boolean;
  /** Its first `headerBytes` bytes (zeros when created). */
  head: Buffer;
  size: number;
}

export async function openLogFile(path: string, headerBytes: number): Promise<OpenedLogFile> {
  let created = false;
  try {
    closeSync(openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o600));
    created = true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const file = await open(path, constants.O_RDWR | constants.O_DSYNC);
  try {
    const head = Buffer.alloc(headerBytes);
    await file.read(head, 0, headerBytes, 0);
    return { file, created, head, size: (await file.stat()).size };
  } catch (err) {
    await file.close();
    throw err;
  }
}

/** Zeros over bytes [from, to) of the file (durable on return: the file is O_DSYNC). */
export async function writeZeros(file: FileHandle, from: number, to: number): Promise<void> {
  const zeros = Buffer.alloc(Math.min(ZERO_CHUNK, Math.max(0, to - from)));
  for (let at = from; at < to; at += ZERO_CHUNK)
    await file.write(zeros, 0, Math.min(ZERO_CHUNK, to - at), at);
}

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

  /** Write a batch of `bytes` inline? */
  inline(bytes: number): boolean {
    return bytes <= INLINE_MAX_BYTES && this.smoothedMs <= INLINE_MAX_MS;
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
  buffer: Buffer,
  from: number,
  length: number,
  position: number,
): void {
  for (let done = 0; done < length;) {
    const n = writeSync(fd, buffer, from + done, length - done, position + done);
    if (n <= 0) throw new Error(`log write of ${length} bytes stopped after ${done}`);
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

/**
 * In a log file used as a ring: whether bytes [start, start + bytes) meet
 * the run from `tail` to `head` (non-empty; it wraps at the end of the file
 * when the tail is not below the head).
 */
export function overlapsRun(tail: number, head: number, start: number, bytes: number): boolean {
  const end = start + bytes;
  if (tail < head) return start < head && end > tail;
  return end > tail || start < head;
}
