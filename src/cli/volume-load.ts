/**
 * Load: copy a source (a file or a stream) into a volume through a library
 * VolumeHandle from offset 0, hashing the source's bytes with sha256.
 *
 * The input is read in CHUNK_BYTES pieces into DEPTH buffers made once; each
 * piece is scanned in blocks of the volume's block size (4 KiB to 1 MiB),
 * and runs of non-zero blocks become one write each. Runs of zero blocks
 * are not stored: into a fresh volume (nothing to cover) they are skipped;
 * into an existing one they are trimmed (holes that read as zeros), and so
 * is everything past the end of the input, so no old content shows through.
 * A buffer is read into again only once every write from it has settled
 * and the hash is done with it. A FLUSH goes out every FLUSH_EVERY_BYTES of
 * data, and one at the end: when loadVolume resolves, the content is
 * durable. The hash is the slower side: the last FLUSH goes out as soon as
 * the last write settled, and the hash's tail overlaps it.
 */
import type { FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { UsageError } from '../common/errors.js';
import { formatSize } from '../common/size.js';
import type { VolumeHandle } from '../library/volume-handle.js';
import { contentHash, sharedBuffers } from './background-hash.js';
import { CHUNK_BYTES, ZEROS, type HashOptions, type TransferResult } from './volume-dump.js';

/** Buffers of CHUNK_BYTES the input is read into, each reused once its writes and its hash are done. */
const DEPTH = 8;

/**
 * A FLUSH goes out (one at a time, not awaited) each time this much more
 * data has been written. The server then writes back as the load goes,
 * beside the hash, instead of all at the end: on the 2-core VM of
 * docs/benchmarks.md, a 1 GiB half-written load's closing FLUSH took 0.55-
 * 0.62 s after the hash was done; with one every 64 MiB the last takes
 * ~0.1 s and the load 1.30-1.38 s instead of 1.56 s. It also bounds what a
 * crash of the server mid-load can lose to what is not flushed yet.
 */
const FLUSH_EVERY_BYTES = 64 * 1024 * 1024;

export interface LoadSource {
  /** Fill `buffer` as far as the input goes; fewer bytes only at its end, 0 after it. */
  read(buffer: Buffer): Promise<number>;
}

export function fileSource(file: FileHandle): LoadSource {
  return {
    async read(buffer) {
      let filled = 0;
      while (filled < buffer.length) {
        const { bytesRead } = await file.read(buffer, filled, buffer.length - filled, null);
        if (bytesRead === 0) break;
        filled += bytesRead;
      }
      return filled;
    },
  };
}

/** A stream (stdin): its chunks copied into the caller's buffers. */
export function streamSource(stream: Readable): LoadSource {
  const chunks = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  let left: Buffer | undefined;
  let ended = false;
  return {
    async read(buffer) {
      let filled = 0;
      while (filled < buffer.length) {
        if (!left || left.length === 0) {
          if (ended) break;
          const next = await chunks.next();
          if (next.done) {
            ended = true;
            break;
          }
          left = next.value;
        }
        const n = left.copy(buffer, filled);
        filled += n;
        left = left.subarray(n);
      }
      return filled;
    },
  };
}

export interface LoadResult extends TransferResult {
  /** Bytes of the input found zero and not written as data. */
  zeroBytes: number;
}

export async function loadVolume(
  volume: VolumeHandle,
  source: LoadSource,
  options: { fresh: boolean } & HashOptions,
  onProgress: (done: number) => void = () => undefined,
): Promise<LoadResult> {
  const started = performance.now();
  // sha256 on a thread of its own; a buffer is read into again once its writes and its hash are done.
  const hash = options.hash ?? contentHash(options.checksum ?? true);
  const grain = Math.min(Math.max(volume.blockSize, 4096), ZEROS.length);
  const buffers = sharedBuffers(DEPTH, CHUNK_BYTES);
  const writing: Promise<unknown>[] = Array.from({ length: DEPTH }, () => Promise.resolve());
  const hashing: Promise<void>[] = Array.from({ length: DEPTH }, () => Promise.resolve());
  let offset = 0;
  let dataBytes = 0;
  /** dataBytes when the last FLUSH along the way was sent; the one in flight, if any. */
  let flushedAt = 0;
  let midFlush: Promise<void> | undefined;
  let zeroBytes = 0;
  const zeroRange = (at: number, length: number): Promise<void> | undefined => {
    zeroBytes += length;
    return options.fresh ? undefined : volume.trim(at, length);
  };

  try {
    for (let piece = 0; ; piece++) {
      const slot = piece % DEPTH;
      await writing[slot];
      await hashing[slot];
      const buffer = buffers[slot];
      let n = await source.read(buffer);
      if (n === 0) break;
      if (offset + n > volume.size)
        throw new UsageError(
          `the input is larger than the volume (${formatSize(volume.size)}); ${formatSize(offset)} were loaded before that showed (load into a larger volume)`,
        );
      hashing[slot] = hash.update(buffer.subarray(0, n));
      hashing[slot].catch(() => undefined); // awaited before the buffer is reused, and at the end
      const length = n;
      // A server with a minimum block size gets a last piece padded with zeros to it.
      const unaligned = n % volume.alignment;
      if (unaligned) n = Math.min(n + volume.alignment - unaligned, volume.size - offset);
      buffer.fill(0, length, n);
      const writes: Promise<void>[] = [];
      let runStart = 0;
      let runZero = false;
      const endRun = (end: number) => {
        if (end === runStart) return;
        if (runZero) {
          const zeroing = zeroRange(offset + runStart, end - runStart);
          if (zeroing) writes.push(zeroing);
        } else {
          writes.push(
            volume.write(buffer.subarray(runStart, end), offset + runStart).then(() => undefined),
          );
          dataBytes += end - runStart;
        }
      };
      for (let at = 0; at < n; at += grain) {
        const end = Math.min(at + grain, n);
        const zero = buffer.compare(ZEROS, 0, end - at, at, end) === 0;
        if (at === 0) runZero = zero;
        else if (zero !== runZero) {
          endRun(at);
          runStart = at;
          runZero = zero;
        }
      }
      endRun(n);
      const all = Promise.all(writes);
      all.catch(() => undefined); // awaited before the buffer is reused, and at the end
      writing[slot] = all;
      if (dataBytes - flushedAt >= FLUSH_EVERY_BYTES && !midFlush) {
        // Not awaited: the server writes back what it holds while the hash
        // (the slower side) goes on; see FLUSH_EVERY_BYTES.
        flushedAt = dataBytes;
        midFlush = all.then(() => volume.flush());
        midFlush.then(
          () => (midFlush = undefined),
          () => undefined, // awaited at the end, where it fails the load
        );
      }
      offset += length;
      onProgress(offset);
    }
    await Promise.all(writing);
    const tail = Math.ceil(offset / volume.alignment) * volume.alignment;
    if (!options.fresh && tail < volume.size) await volume.trim(tail, volume.size - tail);
    await midFlush;
    // The FLUSH does not wait for the hash: the two overlap.
    await Promise.all([volume.flush(), ...hashing]);
  } catch (err) {
    await hash.close();
    throw err;
  } finally {
    await Promise.allSettled([...writing, ...hashing, midFlush]);
  }
  return {
    bytes: offset,
    dataBytes,
    zeroBytes,
    sha256: await hash.digest(),
    seconds: (performance.now() - started) / 1000,
  };
}
