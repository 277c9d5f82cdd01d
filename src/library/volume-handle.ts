/**
 * VolumeHandle: an open volume that behaves like a file of fixed size —
 * read and write at any byte position, flush, trim, block status, Node
 * streams — over a BlockDevice (block-device.ts: in this process, or over
 * NBD to a running torusd).
 *
 * Contract
 * - Every call is checked before the device sees it: position and length
 *   are whole numbers inside [0, size] (RangeError naming offset, length and
 *   size otherwise), multiples of `alignment` (1 on Torus); writes, trims and
 *   write streams on a read-only handle reject with ReadOnlyVolumeError;
 *   any call after close() began rejects with HandleClosedError.
 * - Calls may overlap (as many in flight as the caller likes): reads and
 *   writes of one handle run concurrently, like pread/pwrite on one fd. A
 *   write's buffer must stay unchanged until its promise settles.
 * - flush() makes every write that completed before it durable: a committed
 *   version, what a snapshot taken afterwards holds. close() waits for the
 *   calls in flight, flushes (a writable handle), then lets go.
 * - `size` is the volume's size when opened; a resize reaches handles
 *   opened after it.
 */
import type { Readable, Writable } from 'node:stream';
import type { BlockDevice, Extent } from './block-device.js';
import { HandleClosedError, ReadOnlyVolumeError } from './errors.js';
import { volumeReadStream, volumeWriteStream, type StreamOptions } from './volume-streams.js';

/** What extents() asks the device about at once. */
const EXTENTS_SPAN = 1024 * 1024 * 1024;

export interface OpenVolumeOptions {
  /**
   * Open for reading only: writes and trims are refused. On a cluster the
   * open still takes the volume's write lock when nobody holds it, as an NBD
   * client's would (see src/library/README.md); a snapshot (VOL@SNAP), or a
   * volume another node writes, is read-only whatever this says.
   */
  readOnly?: boolean;
}

export class VolumeHandle {
  /** Size in bytes (when opened). */
  readonly size: number;
  readonly readOnly: boolean;
  /** The volume's block size: I/O in whole, aligned blocks of it is cheapest. */
  readonly blockSize: number;
  /** Positions and lengths must be multiples of it: 1 on Torus (any byte). */
  readonly alignment: number;
  private readonly readOnlyWhy: string | undefined;
  private inFlight = 0;
  private idle: (() => void) | undefined;
  private closing: Promise<void> | undefined;

  /** @internal Made by Torus.openVolume (or openNbdVolume); onClose runs once, after the device closed. */
  constructor(
    readonly name: string,
    private readonly device: BlockDevice,
    options: OpenVolumeOptions,
    private readonly onClose: (handle: VolumeHandle) => void = () => undefined,
  ) {
    this.size = device.size;
    this.blockSize = device.blockSize;
    this.alignment = device.alignment;
    this.readOnlyWhy = device.readOnly
      ? 'served read-only: a snapshot, or a volume another node writes'
      : options.readOnly
        ? 'opened with readOnly'
        : undefined;
    this.readOnly = this.readOnlyWhy !== undefined;
  }

  /** Whether close() has begun. */
  get closed(): boolean {
    return this.closing !== undefined;
  }

  /** Fill `buffer` with the volume's bytes at `position`; resolves with buffer.length. */
  async read(buffer: Uint8Array, position: number): Promise<number> {
    this.checkOpen();
    this.checkRange('read', position, buffer.byteLength);
    await this.run(this.device.read(asBuffer(buffer), position));
    return buffer.byteLength;
  }

  /** Write `buffer` at `position` (unchanged until this settles); resolves with buffer.length. */
  async write(buffer: Uint8Array, position: number): Promise<number> {
    this.checkWritable();
    this.checkRange('write', position, buffer.byteLength);
    await this.run(this.device.write(asBuffer(buffer), position));
    return buffer.byteLength;
  }

  /** Make every completed write durable. Nothing to do on a read-only handle. */
  async flush(): Promise<void> {
    this.checkOpen();
    if (this.readOnly) return;
    await this.run(this.device.flush());
  }

  /** Discard [position, position + length): it reads as zeros afterwards and holds no space. */
  async trim(position: number, length: number): Promise<void> {
    this.checkWritable();
    this.checkRange('trim', position, length);
    await this.run(this.device.zero(position, length));
  }

  /**
   * Which runs of [position, position + length) hold data and which read as
   * zeros (holes), in order, covering the range: what a sparse copy skips.
   */
  async extents(position = 0, length = this.size - position): Promise<Extent[]> {
    this.checkOpen();
    this.checkRange('extents', position, length);
    const all: Extent[] = [];
    const end = position + length;
    for (let at = position; at < end;) {
      const some = await this.run(this.device.extents(at, Math.min(EXTENTS_SPAN, end - at)));
      for (const extent of some) {
        const clipped = Math.min(extent.length, end - extent.offset);
        if (clipped <= 0) break;
        all.push(clipped === extent.length ? extent : { ...extent, length: clipped });
        at = extent.offset + clipped;
      }
    }
    return all;
  }

  /** The volume's bytes from `start` (default 0) to `end` (exclusive, default size), in chunks. */
  createReadStream(options: StreamOptions & { end?: number } = {}): Readable {
    this.checkOpen();
    const start = options.start ?? 0;
    const end = options.end ?? this.size;
    this.checkRange('read stream', start, end - start);
    return volumeReadStream(this, start, end, options.chunkSize ?? DEFAULT_CHUNK);
  }

  /**
   * Write what is piped in from `start` (default 0) on; a write past the end
   * fails the stream with a RangeError. The stream finishes after a flush:
   * on 'finish', everything written is durable.
   */
  createWriteStream(options: StreamOptions = {}): Writable {
    this.checkWritable();
    const start = options.start ?? 0;
    this.checkRange('write stream', start, 0);
    return volumeWriteStream(this, start);
  }

  /** Wait for the calls in flight, flush (when writable) and let go. Later calls reject; calling again returns the same promise. */
  close(): Promise<void> {
    this.closing ??= this.shut();
    return this.closing;
  }

  private async shut(): Promise<void> {
    if (this.inFlight > 0) await new Promise<void>((done) => (this.idle = done));
    try {
      if (!this.readOnly) await this.device.flush();
    } finally {
      try {
        await this.device.close();
      } finally {
        this.onClose(this);
      }
    }
  }

  /** Count `work` in flight until it settles (close() waits for it). */
  private async run<T>(work: Promise<T>): Promise<T> {
    this.inFlight++;
    try {
      return await work;
    } finally {
      if (--this.inFlight === 0 && this.idle) this.idle();
    }
  }

  private checkOpen(): void {
    if (this.closing) throw new HandleClosedError(this.name);
  }

  private checkWritable(): void {
    this.checkOpen();
    if (this.readOnlyWhy) throw new ReadOnlyVolumeError(this.name, this.readOnlyWhy);
  }

  private checkRange(what: string, position: number, length: number): void {
    if (
      !Number.isSafeInteger(position) ||
      !Number.isSafeInteger(length) ||
      position < 0 ||
      length < 0 ||
      position + length > this.size
    )
      throw new RangeError(
        `${what} of ${length} bytes at offset ${position} is outside volume "${this.name}" (size ${this.size} bytes)`,
      );
    if (this.alignment > 1 && (position % this.alignment !== 0 || length % this.alignment !== 0))
      throw new RangeError(
        `${what} of ${length} bytes at offset ${position}: volume "${this.name}" takes offsets and lengths in multiples of ${this.alignment} bytes`,
      );
  }
}

const DEFAULT_CHUNK = 1024 * 1024;

/** A Buffer over the same memory (no copy): devices take Buffers. */
function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes)
    ? bytes
    : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
