/**
 * BackgroundHash: sha256 of a stream of buffers, computed on a thread of its
 * own, so dump and load copy at the speed of the copy and not of the hash
 * (sha256 here costs ~1.3 s of CPU per GiB; on the main thread it was the
 * larger part of a dump's time). The bytes are not copied: buffers live in
 * a SharedArrayBuffer the thread reads; a buffer may be reused once its
 * update() has resolved. Updates are hashed in the order they were made.
 *
 * The SharedArrayBuffer goes to the thread once, with the first update from
 * it; later updates name only offset and length. Sending it with every
 * message cost ~0.3 ms a message on each side (a 1 GiB dump spent 0.3 s of
 * main-thread CPU in postMessage alone, as much again on the thread).
 * Start the hash before connecting (contentHash() in the command): the
 * thread's start-up (~0.1 s of CPU) then overlaps the connection's.
 */
import { Worker } from 'node:worker_threads';

const THREAD = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const hash = createHash('sha256');
const zeros = Buffer.alloc(1 << 20);
let memory;
parentPort.on('message', (m) => {
  if (m.memory) memory = m.memory;
  if (m.type === 'data') hash.update(new Uint8Array(memory, m.offset, m.length));
  else if (m.type === 'zeros')
    for (let left = m.length; left > 0; left -= zeros.length)
      hash.update(left >= zeros.length ? zeros : zeros.subarray(0, left));
  parentPort.postMessage(m.type === 'digest' ? { id: m.id, digest: hash.digest('hex') } : { id: m.id });
});
`;

/** Buffers a BackgroundHash can read: `count` of `size` bytes in one SharedArrayBuffer. */
export function sharedBuffers(count: number, size: number): Buffer[] {
  const memory = new SharedArrayBuffer(count * size);
  return Array.from({ length: count }, (_, i) => Buffer.from(memory, i * size, size));
}

/** What dump and load hash their content with: sha256 on a thread, or nothing (--no-checksum). */
export interface ContentHash {
  update(data: Buffer): Promise<void>;
  zeros(length: number): void;
  /** The hex digest, or undefined when nothing is hashed; ends the hash. */
  digest(): Promise<string | undefined>;
  close(): Promise<void>;
}

/** --no-checksum: a copy at the speed of the copy, no digest. */
export class NoHash implements ContentHash {
  async update(): Promise<void> {}
  zeros(): void {}
  async digest(): Promise<undefined> {
    return undefined;
  }
  async close(): Promise<void> {}
}

/** sha256 when `checksum`, else nothing. */
export function contentHash(checksum: boolean): ContentHash {
  return checksum ? new BackgroundHash() : new NoHash();
}

export class BackgroundHash implements ContentHash {
  private readonly thread = new Worker(THREAD, { eval: true });
  private readonly waiting = new Map<number, (reply: { digest?: string }) => void>();
  private nextId = 0;
  private failure: Error | undefined;
  /** The SharedArrayBuffer the thread holds (sent with the first update from it). */
  private memorySent: SharedArrayBuffer | undefined;

  constructor() {
    this.thread.on('message', (reply: { id: number; digest?: string }) => {
      const done = this.waiting.get(reply.id);
      this.waiting.delete(reply.id);
      if (this.waiting.size === 0) this.thread.unref();
      done?.(reply);
    });
    this.thread.on('error', (err) => {
      this.failure = err;
      for (const done of this.waiting.values()) done({});
      this.waiting.clear();
    });
    // Kept alive only while an answer is awaited (post() refs it): an idle
    // hash never holds the process open, a pending digest always does.
    this.thread.unref();
  }

  private post(message: Record<string, unknown>): Promise<{ digest?: string }> {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise((done) => {
      if (this.waiting.size === 0) this.thread.ref();
      this.waiting.set(id, done);
      this.thread.postMessage({ ...message, id });
    });
  }

  /** Hash `data` (a view of a sharedBuffers() buffer); resolves when the thread is done with it. */
  async update(data: Buffer): Promise<void> {
    if (!(data.buffer instanceof SharedArrayBuffer))
      throw new TypeError('BackgroundHash.update takes views of sharedBuffers() buffers');
    const memory = data.buffer;
    const fresh = memory !== this.memorySent;
    this.memorySent = memory;
    await this.post(
      fresh
        ? { type: 'data', memory, offset: data.byteOffset, length: data.length }
        : { type: 'data', offset: data.byteOffset, length: data.length },
    );
  }

  /** Hash `length` zero bytes (nothing to wait for). */
  zeros(length: number): void {
    void this.post({ type: 'zeros', length }).catch(() => undefined);
  }

  /** The hex digest of everything so far; the thread ends. */
  async digest(): Promise<string> {
    const { digest } = await this.post({ type: 'digest' });
    await this.close();
    if (digest === undefined) throw this.failure ?? new Error('the hashing thread ended');
    return digest;
  }

  /** End the thread; what still waits on it is let go (its buffers are no longer read). */
  async close(): Promise<void> {
    await this.thread.terminate();
    this.failure ??= new Error('the hashing thread was closed');
    for (const done of this.waiting.values()) done({});
    this.waiting.clear();
  }
}
