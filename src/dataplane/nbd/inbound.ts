/**
 * Inbound: the bytes a client has sent and we have not consumed yet.
 *
 * Bytes arrive in one of two ways:
 *   - owned chunks (a socket's 'data' events): kept as they are, and taking
 *     bytes inside one chunk returns a subarray of it (zero copy);
 *   - transient views of a per-connection read buffer that the socket
 *     refills on its next read (server.ts reads that way: a warm 64 KiB
 *     buffer costs about half the CPU per byte of a fresh one per read).
 *     Whatever of a transient view is left unconsumed when push() returns is
 *     copied into memory of our own, so nothing ever points into the read
 *     buffer afterwards.
 *
 * The handshake reads with `await need(n)`; the transmission phase parses
 * synchronously from the `onData` callback. A WRITE payload that has not
 * fully arrived is collected with `fill(target)`: later bytes are copied
 * straight into the target as they come, once each.
 *
 * `discard(n)` may cover bytes that have not arrived yet: they are dropped as
 * they come, never buffered (how a refused WRITE's payload is skipped).
 *
 * The chunk list itself (positions, copying out, consuming) is the shared
 * ByteQueue (transport/byte-queue.ts).
 */
import { ByteQueue } from '../transport/byte-queue.js';
import { replyBuffers } from './reply-buffers.js';

const EMPTY = Buffer.alloc(0);

interface Sink {
  target: Buffer;
  filled: number;
  onFull: () => void;
}

export class Inbound extends ByteQueue {
  /**
   * While no onData consumer is set (the handshake), stop reading the socket
   * once this much is buffered, so a client that floods us before we asked
   * costs at most this much memory. need() resumes it.
   */
  static readonly PULL_BACKLOG_LIMIT = 1024 * 1024;

  private toDiscard = 0;
  private sink: Sink | undefined;
  private waiter: { bytes: number; resolve: () => void; reject: (err: Error) => void } | undefined;
  private failure: Error | undefined;
  /** Called after new bytes are buffered (transmission phase). */
  onData: (() => void) | undefined;

  constructor(private source: { pause(): unknown; resume(): unknown }) {
    super();
  }

  /** Bytes come from `source` from now on (the connection switched to TLS); nothing may be buffered. */
  switchSource(source: { pause(): unknown; resume(): unknown }): void {
    if (this.buffered !== 0 || this.toDiscard !== 0 || this.sink)
      throw new Error('Inbound.switchSource: bytes of the old source are still pending');
    this.source = source;
  }

  /** Bytes of a discard still to arrive. */
  get discarding(): number {
    return this.toDiscard;
  }

  /** Bytes a fill() still waits for (0 when none is active). */
  get filling(): number {
    return this.sink ? this.sink.target.length - this.sink.filled : 0;
  }

  /**
   * New bytes from the socket. `transient`: `chunk` is only valid until this
   * call returns (the socket reuses its memory for the next read).
   */
  push(chunk: Buffer, transient = false): void {
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
    const sink = this.sink;
    if (sink) {
      const n = Math.min(sink.target.length - sink.filled, chunk.length);
      chunk.copy(sink.target, sink.filled, 0, n);
      sink.filled += n;
      if (sink.filled < sink.target.length) return;
      this.sink = undefined;
      sink.onFull();
      chunk = chunk.subarray(n);
    }
    if (chunk.length > 0) {
      this.append(chunk, transient);
      if (this.waiter && this.buffered >= this.waiter.bytes) {
        const { resolve } = this.waiter;
        this.waiter = undefined;
        resolve();
      }
    }
    if (this.onData) this.onData();
    else if (this.buffered >= Inbound.PULL_BACKLOG_LIMIT && !this.waiter) this.source.pause();
    if (this.transient) this.keepTransientRest();
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
      if (this.head > 0) {
        const rest = this.chunks[0].subarray(this.head);
        if (this.chunks[0] === this.transient) this.transient = rest;
        this.chunks[0] = rest;
      }
      this.chunks.unshift(first);
      this.head = 0;
      this.buffered += bytes;
    }
    return { buf: first, at: this.head };
  }

  /**
   * Consume and return the first `bytes` (≤ available), valid only until
   * control returns to the socket (it may lie in a transient view).
   */
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

  /**
   * Consume the first `bytes` (≤ available) as a buffer the caller may keep:
   * a subarray of an owned chunk, or else a copy from the pool (give it back
   * with replyBuffers.release()).
   */
  takeToKeep(bytes: number): Buffer {
    const first = this.chunks[0];
    if (bytes > 0 && first !== this.transient && first.length - this.head >= bytes)
      return this.take(bytes);
    const out = this.gather(bytes);
    this.skip(bytes);
    return out;
  }

  /**
   * Collect the next `target.length` bytes into `target`: what is buffered
   * now (all of it, which must be less than the target), then what arrives,
   * copied straight in. `onFull` runs, from push(), once the target is full;
   * bytes after it are buffered as usual.
   */
  fill(target: Buffer, onFull: () => void): void {
    if (this.sink) throw new Error('Inbound.fill: a fill is already in progress');
    if (this.buffered >= target.length)
      throw new Error('Inbound.fill: enough is buffered already; take it');
    const filled = this.buffered;
    this.copyOut(target, filled);
    this.skip(filled);
    this.sink = { target, filled, onFull };
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
    this.copyOut(out, bytes);
    return out;
  }

  /** The transient view is about to be reused: keep what is left of it in memory of our own. */
  private keepTransientRest(): void {
    const view = this.transient!;
    this.transient = undefined;
    const last = this.chunks.length - 1;
    if (last < 0 || this.chunks[last] !== view) return; // consumed entirely
    const from = last === 0 ? this.head : 0;
    this.chunks[last] = Buffer.from(view.subarray(from));
    if (last === 0) this.head = 0;
  }
}
