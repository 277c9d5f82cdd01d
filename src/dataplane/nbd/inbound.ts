/**
 * Inbound: the bytes a client has sent and we have not consumed yet, kept as
 * the socket's own chunks (no copying on arrival).
 *
 * The handshake reads it with `await need(n)`; the transmission phase parses
 * it synchronously from an `onData` callback. Taking bytes that lie inside one
 * chunk returns a subarray of that chunk (zero copy); only a run that spans
 * chunks is gathered into one fresh buffer, so a WRITE payload is copied at
 * most once here. Chunks are never reused, so a subarray handed out stays
 * valid for as long as anyone holds it.
 *
 * `discard(n)` may cover bytes that have not arrived yet: they are dropped as
 * they come, never buffered (how a refused WRITE's payload is skipped).
 */
import { replyBuffers } from './buffer-pool.js';

const EMPTY = Buffer.alloc(0);

export class Inbound {
  /**
   * While no onData consumer is set (the handshake), stop reading the socket
   * once this much is buffered, so a client that floods us before we asked
   * costs at most this much memory. need() resumes it.
   */
  static readonly PULL_BACKLOG_LIMIT = 1024 * 1024;

  private chunks: Buffer[] = [];
  /** Read position inside chunks[0]. */
  private head = 0;
  private buffered = 0;
  private toDiscard = 0;
  private waiter: { bytes: number; resolve: () => void; reject: (err: Error) => void } | undefined;
  private failure: Error | undefined;
  /** Called after new bytes are buffered (transmission phase). */
  onData: (() => void) | undefined;

  constructor(private readonly source: { pause(): unknown; resume(): unknown }) {}

  get available(): number {
    return this.buffered;
  }

  /** Bytes of a discard still to arrive. */
  get discarding(): number {
    return this.toDiscard;
  }

  push(chunk: Buffer): void {
    if (this.toDiscard > 0) {
      const dropped = Math.min(this.toDiscard, chunk.length);
      this.toDiscard -= dropped;
      if (dropped === chunk.length) {
        // The consumer may be waiting for the discard to finish.
        if (this.toDiscard === 0) this.onData?.();
        return;
      }
      chunk = chunk.subarray(dropped);
    }
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.waiter && this.buffered >= this.waiter.bytes) {
      const { resolve } = this.waiter;
      this.waiter = undefined;
      resolve();
    }
    if (this.onData) this.onData();
    else if (this.buffered >= Inbound.PULL_BACKLOG_LIMIT && !this.waiter) this.source.pause();
  }

  /** No more bytes will come (socket ended, errored or timed out): fail any waiter. */
  fail(err: Error): void {
    this.failure ??= err;
    if (this.waiter) {
      const { reject } = this.waiter;
      this.waiter = undefined;
      reject(err);
    }
  }

  /** Resolve once at least `bytes` are buffered; reject if the stream ends first. One waiter at a time. */
  need(bytes: number): Promise<void> {
    if (this.buffered >= bytes) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    this.source.resume();
    return new Promise((resolve, reject) => {
      this.waiter = { bytes, resolve, reject };
    });
  }

  /**
   * Make the first `bytes` (≤ available) contiguous and return the chunk that
   * holds them and where they start, without consuming them. Gathering only
   * happens when a header straddles two chunks.
   */
  peek(bytes: number): { buf: Buffer; at: number } {
    let first = this.chunks[0];
    if (first.length - this.head < bytes) {
      first = this.gather(bytes);
      this.skip(bytes);
      if (this.head > 0) this.chunks[0] = this.chunks[0].subarray(this.head);
      this.chunks.unshift(first);
      this.head = 0;
      this.buffered += bytes;
    }
    return { buf: first, at: this.head };
  }

  /** Consume and return the first `bytes` (≤ available). */
  take(bytes: number): Buffer {
    if (bytes === 0) return EMPTY;
    const first = this.chunks[0];
    if (first.length - this.head >= bytes) {
      const out = first.subarray(this.head, this.head + bytes);
      this.skip(bytes);
      return out;
    }
    const out = this.gather(bytes);
    this.skip(bytes);
    return out;
  }

  /** Drop `bytes`, including ones that have not arrived yet. */
  discard(bytes: number): void {
    const now = Math.min(bytes, this.buffered);
    this.skip(now);
    this.toDiscard += bytes - now;
  }

  /** Copy the first `bytes` into one new buffer without consuming them. */
  private gather(bytes: number): Buffer {
    // Pooled: a large gathered WRITE payload is given back when the write settles (session.ts).
    const out = replyBuffers.acquire(bytes);
    let filled = 0;
    let start = this.head;
    for (const chunk of this.chunks) {
      if (filled === bytes) break;
      filled += chunk.copy(out, filled, start, Math.min(chunk.length, start + bytes - filled));
      start = 0;
    }
    return out;
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
    if (this.chunks.length > 0 && this.head === this.chunks[0].length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
