/**
 * Dump: copy a whole volume out through a library VolumeHandle (in this
 * process, or over NBD), driven by its extents, into a sink (a file, kept
 * sparse, or a stream), hashing the content with sha256 on the way.
 *
 * Ranges that read as zeros (NBD_STATE_ZERO: holes, trimmed or never
 * written) are not read: a file sink skips them (the file is sized first,
 * so they stay holes), a stream sink writes zeros; the hash covers them as
 * zeros from one shared zero buffer. Data is read in pieces of at most
 * CHUNK_BYTES, up to READS_IN_FLIGHT at once, into a ring of buffer memory
 * (buffer-ring.ts), and each piece goes to the hash and the sink as soon as
 * it and every piece before it are in: strictly in order (the hash needs
 * order; a pipe too). The hash runs on a thread of its own
 * (background-hash.ts) and is the slowest step on two cores, so what
 * matters is that it always has work queued; the sink's writes overlap (a
 * file's pwrites run in the thread pool). A piece's memory is read into
 * again once both the sink and the hash are done with it. A file sink given
 * an O_DIRECT handle writes around the page cache, from the page-aligned
 * memory it hands out (direct-file.ts).
 */
import type { FileHandle } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import type { VolumeHandle } from '../library/volume-handle.js';
import { contentHash, sharedBuffers, type ContentHash } from './background-hash.js';
import { BufferRing } from './buffer-ring.js';
import {
  DIRECT_ALIGNMENT,
  DIRECT_MIN_BYTES,
  directWritable,
  pageAlignedSharedBuffers,
  type OutputFile,
} from './direct-file.js';

export const CHUNK_BYTES = 4 * 1024 * 1024;
/**
 * A dump's buffer memory: READS_IN_FLIGHT pieces being read, and a backlog
 * for the hash and the writes behind them.
 */
const RING_BYTES = 32 * 1024 * 1024;
/** NBD reads a dump keeps in flight. */
const READS_IN_FLIGHT = 8;
/** Most pieces (zero runs included) between the reads and the hash. */
const WINDOW_PIECES = 64;
/** How much one extents() call asks about. */
const STATUS_SPAN = 1024 * 1024 * 1024;
/** Shared, never written: hashing and streaming zeros allocates nothing per hole. */
export const ZEROS = Buffer.alloc(1024 * 1024);

export interface DumpSink {
  /** One shared buffer of `bytes` it writes fastest from, or undefined (dumpVolume makes its own). */
  buffer?(bytes: number): Buffer | undefined;
  /** Before any data: the export's size. */
  start?(size: number): Promise<void>;
  /** `data` belongs to offset; it is reused once the promise settles. */
  data(data: Buffer, offset: number): Promise<void>;
  /** `length` zero bytes at offset. */
  zeros(offset: number, length: number): Promise<void>;
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
 * A file: sized first, data written at its offset, zeros skipped (sparse).
 * Given an OutputFile with an O_DIRECT handle, data from the page-aligned
 * memory it hands out goes around the page cache where aligned and at least
 * `directMinBytes` long (direct-file.ts says which length suits), the rest
 * through the ordinary handle.
 */
export function fileSink(
  output: FileHandle | OutputFile,
  directMinBytes: number = DIRECT_MIN_BYTES,
): DumpSink {
  const { file, direct } = 'direct' in output ? output : { file: output, direct: undefined };
  /** The memory handed out for direct writes. */
  let aligned: ArrayBufferLike | undefined;
  return {
    buffer(bytes) {
      if (!direct) return undefined;
      const [buffer] = pageAlignedSharedBuffers(1, bytes);
      aligned = buffer.buffer;
      return buffer;
    },
    // Sized first, so no write extends the file (an extending direct write
    // also has the size updated in the journal).
    async start(size) {
      await file.truncate(size);
    },
    async data(data, offset) {
      let done = 0;
      if (direct && data.buffer === aligned && directWritable(data, offset, directMinBytes))
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
  };
}

interface Piece {
  offset: number;
  length: number;
  zero: boolean;
  buffer?: Buffer;
  /** Its read: settled, and `arrived` set, once the data is in the buffer. */
  done?: Promise<void>;
  arrived?: boolean;
  /** Set once consumed: settles when the hash and the sink are done with the buffer. */
  finished?: Promise<unknown>;
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
  const ring = new BufferRing(
    sink.buffer?.(RING_BYTES) ?? sharedBuffers(1, RING_BYTES)[0],
    DIRECT_ALIGNMENT,
  );
  /** Pieces not yet handed to the hash and the sink, in volume order. */
  const window: Piece[] = [];
  /** Data pieces holding ring space, oldest first (consumed or not). */
  const holding: Piece[] = [];
  let reading = 0;
  let done = 0;
  let dataBytes = 0;

  // Hand the oldest piece to the hash and the sink (its read awaited first).
  const consume = async (): Promise<void> => {
    const piece = window.shift()!;
    if (piece.zero) {
      hash.zeros(piece.length);
      await sink.zeros(piece.offset, piece.length);
    } else {
      await piece.done;
      reading--;
      const hashed = hash.update(piece.buffer!);
      // Not awaited here: writes overlap (a file's pwrites go to the thread
      // pool; a stream queues them in call order). Awaited before the
      // buffer is read into again, and all of them at the end.
      const written = sink.data(piece.buffer!, piece.offset);
      piece.finished = Promise.all([hashed, written]);
      piece.finished.catch(() => undefined);
      dataBytes += piece.length;
    }
    done += piece.length;
    onProgress(done);
  };

  // Ring space for a piece: the oldest holders are consumed and waited out until it fits.
  const space = async (length: number): Promise<Buffer> => {
    for (;;) {
      const buffer = ring.take(length);
      if (buffer) return buffer;
      const oldest = holding.shift()!;
      while (oldest.finished === undefined) await consume();
      await oldest.finished;
      ring.giveBack();
    }
  };

  try {
    await sink.start?.(volume.size);
    for await (const piece of pieces(volume, CHUNK_BYTES)) {
      if (!piece.zero) {
        piece.buffer = await space(piece.length);
        holding.push(piece);
        piece.done = volume.read(piece.buffer, piece.offset).then(() => {
          piece.arrived = true;
        });
        piece.done.catch(() => undefined); // awaited in order by consume(); not unhandled meanwhile
        reading++;
      }
      window.push(piece);
      // Everything whose data is in goes on at once: the hash (the slowest
      // step, and strictly in order) is fed as early as it can be, so its
      // backlog absorbs the reads' and the writes' jitter. Waiting for a
      // read only once READS_IN_FLIGHT are out.
      while (window.length > 0 && (window[0].zero || window[0].arrived)) await consume();
      while (reading >= READS_IN_FLIGHT || window.length > WINDOW_PIECES) await consume();
    }
    while (window.length > 0) await consume();
    await Promise.all(holding.map((p) => p.finished));
  } catch (err) {
    await hash.close();
    throw err;
  } finally {
    // On failure, let reads and writes still in flight land before their buffers go.
    await Promise.allSettled(holding.flatMap((p) => [p.done, p.finished]));
  }
  return {
    bytes: done,
    dataBytes,
    sha256: await hash.digest(),
    seconds: (performance.now() - started) / 1000,
  };
}
