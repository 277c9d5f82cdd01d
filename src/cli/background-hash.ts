/**
 * BackgroundHash: sha256 of a stream of buffers, computed on a thread of its
 * own, so dump and load copy at the speed of the copy and not of the hash
 * (sha256 here costs ~0.8 s of CPU per GiB; on the main thread it was the
 * larger part of a dump's time). The bytes are not copied: buffers live in
 * a SharedArrayBuffer the thread reads; a buffer may be reused once its
 * update() has resolved. Updates are hashed in the order they were made.
 *
 * Commands go to the thread through a ring in shared memory, not as
 * messages: postMessage cost ~0.04 ms a message on the main thread and
 * ~0.2 ms on the hashing thread (its replies), 0.25 s of CPU for the 1,024
 * updates and zero runs of a half-written 1 GiB dump (node --cpu-prof). The
 * thread waits on the ring's POSTED counter (Atomics.wait), hashes what is
 * posted in order and publishes DONE after each command; the main thread
 * waits for DONE with Atomics.waitAsync, only while an update() is pending,
 * and settles every update DONE has passed at once. A SharedArrayBuffer goes
 * to the thread once, by message, before the first command that names it
 * (the thread takes it off its port synchronously). The digest comes back
 * as the one message. Zero runs are not awaited (nothing of the caller's is
 * read); when the ring is full, commands wait in a backlog on this side.
 *
 * Start the hash before connecting (contentHash() in the command): the
 * thread's start-up (~0.1 s of CPU) then overlaps the connection's.
 */
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';

/** Commands the ring holds at once; more wait in the backlog. */
const RING = 256;
/** Control slots (Int32Array indices). */
const POSTED = 0;
const DONE = 1;
const STOP = 2;
/** 1 while the thread sleeps on POSTED: only then does a post need a wake-up (a futex call). */
const SLEEPING = 3;
const CONTROL_SLOTS = 4;
/** A command: four float64s (type, memory index, offset, length). */
const COMMAND_FIELDS = 4;
const DATA = 1;
const ZEROS = 2;
const DIGEST = 3;

/** Atomics.waitAsync (ES2024, in Node since 16), typed here: the compiler's lib predates it. */
const waitAsync = (
  Atomics as unknown as {
    waitAsync(
      array: Int32Array,
      index: number,
      value: number,
    ): { async: boolean; value: Promise<string> | string };
  }
).waitAsync.bind(Atomics);

const THREAD = `
const { workerData, receiveMessageOnPort, parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { control: shared, port, ring } = workerData;
const control = new Int32Array(shared, 0, ${CONTROL_SLOTS});
const commands = new Float64Array(shared, ${CONTROL_SLOTS * 4}, ring * ${COMMAND_FIELDS});
const hash = createHash('sha256');
const zeros = Buffer.alloc(1 << 20);
const memories = [];
let done = 0;
for (;;) {
  const posted = Atomics.load(control, ${POSTED});
  if (posted === done) {
    if (Atomics.load(control, ${STOP}) !== 0) break;
    // Woken by a post or close(); the timeout only bounds a lost wake-up.
    // SLEEPING is set before POSTED is checked again by wait(): a post that
    // saw it clear has changed POSTED already, and wait() returns at once.
    Atomics.store(control, ${SLEEPING}, 1);
    Atomics.wait(control, ${POSTED}, posted, 1000);
    Atomics.store(control, ${SLEEPING}, 0);
    continue;
  }
  for (; done !== posted; done = (done + 1) | 0) {
    const at = ((done >>> 0) % ring) * ${COMMAND_FIELDS};
    const type = commands[at];
    const memory = commands[at + 1];
    const length = commands[at + 3];
    if (type === ${DATA}) {
      while (memories.length <= memory) memories.push(receiveMessageOnPort(port).message);
      hash.update(new Uint8Array(memories[memory], commands[at + 2], length));
    } else if (type === ${ZEROS}) {
      for (let left = length; left > 0; left -= zeros.length)
        hash.update(left >= zeros.length ? zeros : zeros.subarray(0, left));
    } else if (type === ${DIGEST}) {
      parentPort.postMessage(hash.digest('hex'));
    }
    Atomics.store(control, ${DONE}, (done + 1) | 0);
    Atomics.notify(control, ${DONE});
  }
}
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
  private readonly control: Int32Array;
  private readonly commands: Float64Array;
  private readonly port: MessagePort;
  private readonly thread: Worker;
  /** Commands posted so far (the thread's POSTED, kept here too: only this side writes it). */
  private posted = 0;
  /** Commands waiting for room in the ring, in order. */
  private readonly backlog: number[][] = [];
  /** update() calls not yet settled, in order of their command's number. */
  private readonly waiting: { seq: number; done: () => void; failed: (err: Error) => void }[] = [];
  private watching = false;
  private digestWanted: { done: (digest: string) => void; failed: (err: Error) => void }[] = [];
  /** The memories the thread holds, by the index commands name them with. */
  private readonly memories: ArrayBufferLike[] = [];
  private failure: Error | undefined;

  constructor() {
    const shared = new SharedArrayBuffer(CONTROL_SLOTS * 4 + RING * COMMAND_FIELDS * 8);
    this.control = new Int32Array(shared, 0, CONTROL_SLOTS);
    this.commands = new Float64Array(shared, CONTROL_SLOTS * 4, RING * COMMAND_FIELDS);
    const { port1, port2 } = new MessageChannel();
    this.port = port1;
    this.thread = new Worker(THREAD, {
      eval: true,
      workerData: { control: shared, port: port2, ring: RING },
      transferList: [port2],
    });
    this.thread.on('message', (digest: string) => {
      for (const wanted of this.digestWanted.splice(0)) wanted.done(digest);
      this.holdOpen();
    });
    this.thread.on('error', (err) => this.fail(err));
    // Kept alive only while an answer is awaited (holdOpen): an idle hash
    // never holds the process open, a pending update or digest always does.
    this.thread.unref();
  }

  /** Hash `data` (a view of a sharedBuffers() buffer); resolves when the thread is done with it. */
  update(data: Buffer): Promise<void> {
    if (!(data.buffer instanceof SharedArrayBuffer))
      return Promise.reject(
        new TypeError('BackgroundHash.update takes views of sharedBuffers() buffers'),
      );
    if (this.failure) return Promise.reject(this.failure);
    let memory = this.memories.indexOf(data.buffer);
    if (memory < 0) {
      // By message, before the command naming it: the thread takes it off the port first.
      memory = this.memories.push(data.buffer) - 1;
      this.port.postMessage(data.buffer);
    }
    const seq = this.post([DATA, memory, data.byteOffset, data.length]);
    return new Promise((done, failed) => {
      this.waiting.push({ seq, done, failed });
      this.watch();
    });
  }

  /** Hash `length` zero bytes (nothing to wait for). */
  zeros(length: number): void {
    if (!this.failure && length > 0) this.post([ZEROS, 0, 0, length]);
  }

  /** The hex digest of everything so far; the thread ends. */
  async digest(): Promise<string> {
    if (this.failure) throw this.failure;
    const digest = new Promise<string>((done, failed) => this.digestWanted.push({ done, failed }));
    this.post([DIGEST, 0, 0, 0]);
    this.holdOpen();
    this.watch();
    try {
      return await digest;
    } finally {
      await this.close();
    }
  }

  /** End the thread; what still waits on it is let go (its buffers are no longer read). */
  async close(): Promise<void> {
    Atomics.store(this.control, STOP, 1);
    Atomics.notify(this.control, POSTED);
    await this.thread.terminate();
    this.port.close();
    this.fail(new Error('the hashing thread was closed'));
  }

  /** Put a command in the ring (or the backlog when it is full); its sequence number. */
  private post(command: number[]): number {
    const seq = (this.posted + this.backlog.length) | 0;
    if (this.backlog.length > 0 || !this.enter(command)) {
      this.backlog.push(command);
      this.watch();
    }
    return seq;
  }

  /** Write `command` into the ring and publish it, when there is room. */
  private enter(command: number[]): boolean {
    if (((this.posted - Atomics.load(this.control, DONE)) | 0) >= RING) return false;
    this.commands.set(command, ((this.posted >>> 0) % RING) * COMMAND_FIELDS);
    this.posted = (this.posted + 1) | 0;
    Atomics.store(this.control, POSTED, this.posted);
    if (Atomics.load(this.control, SLEEPING) !== 0) Atomics.notify(this.control, POSTED);
    return true;
  }

  /**
   * Follow DONE while anything waits on it: settle the updates it passed,
   * move the backlog into the ring, and wait (asynchronously) for it to move.
   */
  private watch(): void {
    if (this.watching || this.failure) return;
    this.watching = true;
    this.holdOpen();
    const step = (): void => {
      if (this.failure) return;
      const done = Atomics.load(this.control, DONE);
      while (this.waiting.length > 0 && ((done - this.waiting[0].seq) | 0) > 0)
        this.waiting.shift()!.done();
      while (this.backlog.length > 0 && this.enter(this.backlog[0])) this.backlog.shift();
      if (this.waiting.length === 0 && this.backlog.length === 0) {
        this.watching = false;
        this.holdOpen();
        return;
      }
      const wait = waitAsync(this.control, DONE, done);
      if (wait.async) void (wait.value as Promise<string>).then(step);
      else queueMicrotask(step);
    };
    step();
  }

  /** The thread holds the process open exactly while an update or the digest is awaited. */
  private holdOpen(): void {
    if (this.failure) return;
    if (this.waiting.length > 0 || this.digestWanted.length > 0) this.thread.ref();
    else this.thread.unref();
  }

  /** Everything pending fails with `err`; later calls too. */
  private fail(err: Error): void {
    this.failure ??= err;
    for (const w of this.waiting.splice(0)) w.failed(this.failure);
    for (const w of this.digestWanted.splice(0)) w.failed(this.failure);
    this.backlog.length = 0;
  }
}
