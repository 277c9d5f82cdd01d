/**
 * Node streams over a VolumeHandle: a Readable of a byte range, read one
 * chunk ahead of the consumer, and a Writable that writes each chunk at the
 * next position and flushes before it finishes.
 */
import { Readable, Writable } from 'node:stream';
import type { VolumeHandle } from './volume-handle.js';

export interface StreamOptions {
  /** Byte position the stream starts at (default 0). */
  start?: number;
  /** Bytes per read of a read stream (default 1 MiB). */
  chunkSize?: number;
}

export function volumeReadStream(
  handle: VolumeHandle,
  start: number,
  end: number,
  chunkSize: number,
): Readable {
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0 || chunkSize % handle.alignment !== 0)
    throw new RangeError(
      `chunkSize must be a positive multiple of ${handle.alignment} bytes, got ${chunkSize}`,
    );
  let position = start;
  return new Readable({
    // One chunk in flight: read() is called again only after push().
    highWaterMark: chunkSize,
    read() {
      if (position >= end) {
        this.push(null);
        return;
      }
      // Each chunk is a fresh buffer: the consumer keeps what it is given.
      const chunk = Buffer.allocUnsafe(Math.min(chunkSize, end - position));
      handle.read(chunk, position).then(
        () => {
          position += chunk.length;
          this.push(chunk);
        },
        (err: Error) => this.destroy(err),
      );
    },
  });
}

export function volumeWriteStream(handle: VolumeHandle, start: number): Writable {
  let position = start;
  return new Writable({
    write(chunk: Buffer, _encoding, done) {
      handle.write(chunk, position).then(() => {
        position += chunk.length;
        done();
      }, done);
    },
    final(done) {
      handle.flush().then(() => done(), done);
    },
  });
}
