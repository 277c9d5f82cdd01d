/**
 * FrameReader: the bytes received on one connection and not yet consumed,
 * kept as the socket's own chunks, cut into TBP frames.
 *
 * Zero copy where the bytes allow it: a payload inside one chunk is returned
 * as a view of that chunk; only a payload spanning chunks is gathered, once,
 * into a buffer from `allocate` (the server passes a pool, so gathered
 * payloads are warm memory given back after use; the client allocates exact
 * buffers the caller keeps). A header spanning chunks is copied into a fixed
 * 16-byte scratch buffer, so peeking at headers never allocates.
 *
 * Chunks are never written to, so a view handed out stays valid for as long
 * as anyone holds it. The reader never reads the socket itself: the owner
 * pushes chunks and decides when to pause.
 */
import { HEADER_SIZE } from './wire.js';

export class FrameReader {
  private chunks: Buffer[] = [];
  /** Read position inside chunks[0]. */
  private head = 0;
  private buffered = 0;
  private readonly scratch = Buffer.allocUnsafe(HEADER_SIZE);
  /** After peekHeader() returned true: the buffer and offset holding the 16 header bytes. */
  headerBuf: Buffer = this.scratch;
  headerAt = 0;

  constructor(private readonly allocate: (size: number) => Buffer) {}

  /** Bytes received and not consumed. */
  get available(): number {
    return this.buffered;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
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
    if (payloadLength === 0) return EMPTY;
    const first = this.chunks[0];
    let out: Buffer;
    if (first.length - this.head >= payloadLength) {
      out = first.subarray(this.head, this.head + payloadLength);
    } else {
      out = this.allocate(payloadLength);
      this.copyOut(out, payloadLength);
    }
    this.skip(payloadLength);
    return out;
  }

  /** Drop everything buffered (the connection is being closed). */
  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.buffered = 0;
  }

  /** Copy the first `bytes` (≤ available) into out without consuming them. */
  private copyOut(out: Buffer, bytes: number): void {
    let filled = 0;
    let start = this.head;
    for (const chunk of this.chunks) {
      if (filled === bytes) break;
      filled += chunk.copy(out, filled, start, Math.min(chunk.length, start + bytes - filled));
      start = 0;
    }
  }

  private skip(bytes: number): void {
    this.buffered -= bytes;
    while (bytes > 0) {
      const left = this.chunks[0].length - this.head;
      if (bytes < left) {
        this.head += bytes;
        return;
      }
      bytes -= left;
      this.chunks.shift();
      this.head = 0;
    }
  }
}

const EMPTY = Buffer.alloc(0);
