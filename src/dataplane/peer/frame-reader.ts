/**
 * FrameReader: the bytes received on one connection and not yet consumed,
 * cut into TBP frames.
 *
 * The chunk list is the shared ByteQueue (transport/byte-queue.ts). Two kinds
 * of chunk come in. An owned chunk (a socket 'data' buffer) is kept as it is
 * and never written to, so views into it stay valid. A transient chunk is a
 * view of the connection's reused read buffer (transport/read-buffer.ts),
 * valid only until the owner calls settle() at the end of that read:
 * payloads found whole inside it are handed out as views and flagged
 * `payloadTransient` (copy what you keep past the read), and settle() copies
 * whatever was not consumed into memory of our own.
 *
 * A frame that has not fully arrived when a read ends is moved into one
 * buffer of exactly its size (from `allocate`: the server's pool) and filled
 * in place by the following reads, so a 64 KiB block is copied once on its
 * way in, whatever the read sizes; while much of it is still to come (a
 * batch of blocks), the socket reads straight into it (inPlaceTarget), and
 * those bytes are copied only by the kernel. A payload spanning owned chunks is
 * gathered once into `allocate` memory. A header spanning chunks is copied
 * into a fixed 16-byte scratch buffer, so peeking never allocates.
 *
 * A frame buffer from `allocate` only ever holds one frame, so the owner may
 * give it back (via the payload's underlying memory) when that request is
 * done. The reader never reads the socket itself: the owner pushes chunks
 * and decides when to pause.
 */
import { assert } from '../../common/assert.js';
import { ByteQueue } from '../transport/byte-queue.js';
import { HEADER_SIZE, MAX_PAYLOAD_BYTES, headerPayloadLength } from './wire.js';

/**
 * The least of a frame still to come for the next read to land in it
 * directly (inPlaceTarget): a read that stops at the frame's end costs a
 * system call more per frame, which outweighs copying a few KiB.
 */
export const IN_PLACE_MIN_BYTES = 16 * 1024;

export class FrameReader extends ByteQueue {
  private readonly scratch = Buffer.allocUnsafe(HEADER_SIZE);
  /** A frame being filled in place (while set, chunks is empty), and how much of it has arrived. */
  private frame: Buffer | undefined;
  private filled = 0;
  /** After peekHeader() returned true: the buffer and offset holding the 16 header bytes. */
  headerBuf: Buffer = this.scratch;
  headerAt = 0;
  /** The payload takeFrame() just returned lies in a transient chunk: it is valid only until settle(). */
  payloadTransient = false;

  constructor(private readonly allocate: (size: number) => Buffer) {
    super();
  }

  /** Bytes held for a frame that has not fully arrived, plus those available. */
  get pending(): number {
    return this.buffered + this.filled;
  }

  /** Add received bytes. transient: `chunk` is reused after this read; call settle() before returning from it. */
  push(chunk: Buffer, transient = false): void {
    if (this.frame) {
      const take = Math.min(this.frame.length - this.filled, chunk.length);
      chunk.copy(this.frame, this.filled, 0, take);
      this.fillFrame(take);
      chunk = chunk.subarray(take);
    }
    if (chunk.length === 0) return;
    this.append(chunk, transient);
  }

  /**
   * Where the next read may land: the rest of a frame being filled in place,
   * when at least `min` bytes of it are still to come (else undefined: read
   * into the read buffer and push()). The socket then copies a large frame's
   * bytes once, into the frame, instead of into the read buffer and again
   * from there; a read into it never takes bytes of the next frame. Valid
   * until the next call into the reader.
   */
  inPlaceTarget(min: number): Buffer | undefined {
    const frame = this.frame;
    if (frame === undefined || frame.length - this.filled < min) return undefined;
    return frame.subarray(this.filled);
  }

  /** `bytes` were read into the memory inPlaceTarget() returned. */
  filledInPlace(bytes: number): void {
    assert(
      this.frame !== undefined && bytes <= this.frame.length - this.filled,
      'bytes read in place past the frame being filled',
    );
    this.fillFrame(bytes);
  }

  /** `bytes` more of the frame being filled have arrived; once whole it is an ordinary owned chunk. */
  private fillFrame(bytes: number): void {
    const frame = this.frame!;
    this.filled += bytes;
    if (this.filled < frame.length) return;
    // chunks was empty while filling.
    this.chunks.push(frame);
    this.buffered = frame.length;
    this.frame = undefined;
    this.filled = 0;
  }

  /**
   * The read is over and its buffer will be reused: keep what was not
   * consumed. An incomplete frame (its header here, its length within the
   * limit) moves into a buffer of its own size to be filled in place; other
   * leftovers (part of a header, or whole frames left while the owner
   * stopped for backpressure) are copied into one exact buffer.
   */
  settle(): void {
    const t = this.transient;
    if (!t) return;
    this.transient = undefined;
    if (this.buffered === 0 || this.chunks[this.chunks.length - 1] !== t) return;
    if (this.buffered >= HEADER_SIZE) {
      this.peekHeader();
      const length = headerPayloadLength(this.headerBuf, this.headerAt);
      // The limit check guards the allocation; the owner validates the rest of the header when it peeks.
      if (length <= MAX_PAYLOAD_BYTES && HEADER_SIZE + length > this.buffered) {
        const frame = this.allocate(HEADER_SIZE + length);
        this.copyOut(frame, this.buffered);
        this.filled = this.buffered;
        this.frame = frame;
        this.chunks = [];
        this.head = 0;
        this.buffered = 0;
        return;
      }
    }
    // Not from `allocate`: this buffer may hold several frames, so it must never go back to a pool.
    const rest = Buffer.allocUnsafe(this.buffered);
    this.copyOut(rest, this.buffered);
    this.chunks = [rest];
    this.head = 0;
  }

  /**
   * When a whole header is buffered, point headerBuf/headerAt at it and
   * return true (nothing is consumed). The bytes stay valid until the next
   * call into the reader.
   */
  peekHeader(): boolean {
    if (this.buffered < HEADER_SIZE) return false;
    const first = this.chunks[0];
    if (first.length - this.head >= HEADER_SIZE) {
      this.headerBuf = first;
      this.headerAt = this.head;
      return true;
    }
    this.copyOut(this.scratch, HEADER_SIZE);
    this.headerBuf = this.scratch;
    this.headerAt = 0;
    return true;
  }

  /**
   * Consume a whole frame whose header was just peeked, returning its
   * payload. The caller has checked `available ≥ HEADER_SIZE + payloadLength`.
   */
  takeFrame(payloadLength: number): Buffer {
    this.skip(HEADER_SIZE);
    this.payloadTransient = false;
    if (payloadLength === 0) return EMPTY;
    const first = this.chunks[0];
    let out: Buffer;
    if (first.length - this.head >= payloadLength) {
      out = first.subarray(this.head, this.head + payloadLength);
      this.payloadTransient = first === this.transient;
    } else {
      out = this.allocate(payloadLength);
      this.copyOut(out, payloadLength);
    }
    this.skip(payloadLength);
    return out;
  }

  /** Drop everything buffered (the connection is being closed). */
  clear(): void {
    this.clearChunks();
    this.frame = undefined;
    this.filled = 0;
  }
}

const EMPTY = Buffer.alloc(0);

/** Copies up to this size are carved from a slab; larger ones get memory of their own. */
export const MAX_CARVED_BYTES = 16 * 1024;
const CARVE_SLAB_BYTES = 64 * 1024;

/**
 * An allocator for the small copies a reused read buffer forces (a 4 KiB
 * block leaving the read buffer, the tail of a read): they are carved from
 * 64 KiB slabs, because a fresh ArrayBuffer each measured as a fifth of the
 * CPU of 4 KiB transfers. Carved memory is never handed out twice; a slab is
 * freed by the GC once nothing refers to any part of it (so a caller keeping
 * one small block for long keeps its slab: copy it if that matters). Larger
 * sizes go to `large`. Offsets are 8-byte aligned, so word-wise scans of
 * block data (blocks/hash.ts isAllZero) keep their fast path; plus `skew`
 * bytes, for memory whose interesting part starts `8 - skew` bytes in
 * (reply-memory.ts).
 */
export function slabAllocator(large: (size: number) => Buffer, skew = 0): (size: number) => Buffer {
  let slab = Buffer.allocUnsafeSlow(CARVE_SLAB_BYTES);
  let used = 0;
  return (size) => {
    if (size > MAX_CARVED_BYTES) return large(size);
    if (used + skew + size > slab.length) {
      slab = Buffer.allocUnsafeSlow(CARVE_SLAB_BYTES);
      used = 0;
    }
    const out = slab.subarray(used + skew, used + skew + size);
    used = (used + skew + size + 7) & ~7;
    return out;
  };
}
