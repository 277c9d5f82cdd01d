/**
 * Dump: copy a whole volume out through a library VolumeHandle (in this
 * process, or over NBD), driven by its extents, into a sink (a file, kept sparse, or a stream), hashing the
 * content with sha256 on the way.
 *
 * Ranges that read as zeros (NBD_STATE_ZERO: holes, trimmed or never
 * written) are not read: a file sink skips them (it is truncated to the
 * export's size at the end, so they stay holes), a stream sink writes zeros;
 * the hash covers them as zeros from one shared zero buffer. Data is read in
 * CHUNK_BYTES pieces with up to DEPTH reads in flight into DEPTH buffers made
 * once, and handed to the hash and the sink strictly in order (the hash needs
 * order; a pipe too). The hash runs on a thread of its own (background-hash.ts)
 * and the sink's writes overlap (a file's pwrites run in the thread pool): a
 * buffer is read into again once both the sink and the hash are done with it.
 * A file sink given an O_DIRECT handle writes around the page cache, from
 * page-aligned buffers it hands out (direct-file.ts).
 */
import type { FileHandle } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import type { VolumeHandle } from '../library/volume-handle.js';
import { contentHash, sharedBuffers, type ContentHash } from './background-hash.js';
import {
  DIRECT_ALIGNMENT,
  directWritable,
  pageAlignedSharedBuffers,
  type OutputFile,
} from './direct-file.js';

export const CHUNK_BYTES = 4 * 1024 * 1024;
export const DEPTH = 8;
/** How much one extents() call asks about. */
const STATUS_SPAN = 1024 * 1024 * 1024;
/** Shared, never written: hashing and streaming zeros allocates nothing per hole. */
export const ZEROS = Buffer.alloc(1024 * 1024);

export interface DumpSink {
  /**
   * `count` shared buffers of `size` bytes it writes fastest from, or
   * undefined (dumpVolume makes its own).
   */
  buffers?(count: number, size: number): Buffer[] | undefined;
  /** `data` belongs to offset; it is reused once the promise settles. */
  data(data: Buffer, offset: number): Promise<void>;
  /** `length` zero bytes at offset. */
  zeros(offset: number, length: number): Promise<void>;
  /** Everything is through; `size` is the export's. */
  finish(size: number): Promise<void>;
}

export interface TransferResult {
  /** Bytes of content (the export's size for a dump, the input's for a load). */
  bytes: number;
  /** Bytes read and written as data (not skipped as zeros). */
  dataBytes: number;
  /** Hex sha256 of the content; undefined with --no-checksum. */
  sha256: string | undefined;
  seconds: number;
}

/**
 * A file: data written at its offset, zeros skipped, size set at the end
 * (sparse). Given an OutputFile with an O_DIRECT handle, data from the
 * page-aligned buffers it hands out goes around the page cache where
 * aligned (direct-file.ts), the rest through the ordinary handle.
 */
export function fileSink(output: FileHandle | OutputFile): DumpSink {
  const { file, direct } = 'direct' in output ? output : { file: output, direct: undefined };
  /** The memory of the buffers handed out for direct writes. */
  let aligned: ArrayBufferLike | undefined;
  return {
    buffers(count, size) {
      if (!direct) return undefined;
      const buffers = pageAlignedSharedBuffers(count, size);
      aligned = buffers[0].buffer;
      return buffers;
    },
    async data(data, offset) {
      let done = 0;
      if (direct && data.buffer === aligned && directWritable(data, offset))
        while (done < data.length) {
          const { bytesWritten } = await direct.write(
            data,
            done,
            data.length - done,
            offset + done,
          );
          done += bytesWritten;
          // A short direct write leaves an unaligned rest: the page cache takes it.
          if (bytesWritten === 0 || bytesWritten % DIRECT_ALIGNMENT !== 0) break;
        }
      while (done < data.length) {
        const { bytesWritten } = await file.write(data, done, data.length - done, offset + done);
        done += bytesWritten;
      }
    },
    async zeros() {},
    async finish(size) {
      await file.truncate(size);
    },
  };
}

/** A stream (stdout): everything in order, zeros included; each buffer waited out before it is reused. */
export function streamSink(stream: Writable): DumpSink {
  const write = (data: Buffer) =>
    new Promise<void>((done, fail) => stream.write(data, (err) => (err ? fail(err) : done())));
  return {
    data: (data) => write(data),
    async zeros(_offset, length) {
      for (let left = length; left > 0; left -= ZEROS.length)
        await write(left >= ZEROS.length ? ZEROS : ZEROS.subarray(0, left));
    },
    async finish() {},
  };
}

interface Piece {
  offset: number;
  length: number;
  zero: boolean;
  buffer?: Buffer;
  /** Which of the DEPTH buffers it is read into. */
  slot?: number;
  done?: Promise<void>;
}

/** The volume in order, as zero runs and data pieces of at most chunk bytes, from its extents. */
async function* pieces(volume: VolumeHandle, chunk: number): AsyncGenerator<Piece> {
  let offset = 0;
  while (offset < volume.size) {
    const extents = await volume.extents(offset, Math.min(STATUS_SPAN, volume.size - offset));
    for (const extent of extents) {
      const end = extent.offset + extent.length;
      if (extent.zero) yield { offset: extent.offset, length: extent.length, zero: true };
      else
        for (let at = extent.offset; at < end; at += chunk)
          yield { offset: at, length: Math.min(chunk, end - at), zero: false };
      offset = end;
    }
  }
}

/** How a transfer hashes: `hash` (started early by the caller, ended here), else contentHash(checksum). */
export interface HashOptions {
  checksum?: boolean;
  hash?: ContentHash;
}

export async function dumpVolume(
  volume: VolumeHandle,
  sink: DumpSink,
  onProgress: (done: number) => void = () => undefined,
  options: HashOptions = {},
): Promise<TransferResult> {
  const started = performance.now();
  const hash = options.hash ?? contentHash(options.checksum ?? true);
  const buffers = sink.buffers?.(DEPTH, CHUNK_BYTES) ?? sharedBuffers(DEPTH, CHUNK_BYTES);
  // When the hash and the sink are done with each buffer (it is then free to be read into again).
  const hashed: Promise<void>[] = Array.from({ length: DEPTH }, () => Promise.resolve());
  const written: Promise<void>[] = Array.from({ length: DEPTH }, () => Promise.resolve());
  const window: Piece[] = [];
  let reading = 0;
  let readsStarted = 0;
  let done = 0;
  let dataBytes = 0;

  // Hand the oldest piece to the hash and the sink. Returns 1 for a data piece (one read fewer in flight).
  const consume = async (): Promise<number> => {
    const piece = window.shift()!;
    if (piece.zero) {
      hash.zeros(piece.length);
      await sink.zeros(piece.offset, piece.length);
    } else {
      await piece.done;
      hashed[piece.slot!] = hash.update(piece.buffer!);
      // Not awaited here: up to DEPTH writes overlap (a file's pwrites go to
      // the thread pool; a stream queues them in call order). Awaited before
      // the buffer is read into again, and all of them at the end.
      written[piece.slot!] = sink.data(piece.buffer!, piece.offset);
      written[piece.slot!].catch(() => undefined);
      dataBytes += piece.length;
    }
    done += piece.length;
    onProgress(done);
    return piece.zero ? 0 : 1;
  };

  try {
    for await (const piece of pieces(volume, CHUNK_BYTES)) {
      if (!piece.zero) {
        // Piece k reuses buffer k % DEPTH: piece k - DEPTH has been consumed (reading < DEPTH).
        piece.slot = readsStarted++ % DEPTH;
        await hashed[piece.slot];
        await written[piece.slot];
        piece.buffer = buffers[piece.slot].subarray(0, piece.length);
        piece.done = volume.read(piece.buffer, piece.offset).then(() => undefined);
        piece.done.catch(() => undefined); // awaited in order by consume(); not unhandled meanwhile
        reading++;
      }
      window.push(piece);
      while (reading >= DEPTH || window.length > 4 * DEPTH) reading -= await consume();
    }
    while (window.length > 0) await consume();
    await Promise.all(written);
  } catch (err) {
    await hash.close();
    throw err;
  } finally {
    // On failure, let reads and writes still in flight land before their buffers go.
    await Promise.allSettled([...window.map((p) => p.done), ...written]);
  }
  await sink.finish(volume.size);
  return {
    bytes: done,
    dataBytes,
    sha256: await hash.digest(),
    seconds: (performance.now() - started) / 1000,
  };
}
