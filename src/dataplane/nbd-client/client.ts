/**
 * NbdClient: one connection to one export of an NBD server (Torus's own, or
 * any other: nbdkit, qemu-nbd), with a promise per call and many requests in
 * flight.
 *
 * Contract:
 * - Requests are pipelined: each goes out as soon as it is admitted (at most
 *   `maxInFlight` requests and `maxInFlightBytes` of READ/WRITE payload at
 *   once; the rest wait their turn in call order) and settles when its reply
 *   arrives, in whatever order the server answers. Replies are matched by
 *   cookie (slot index and a generation that changes when the slot is
 *   reused, so a stale or forged reply is caught).
 * - A READ or WRITE longer than `maxRequestBytes` (the server's maximum
 *   payload from NBD_INFO_BLOCK_SIZE, at most 32 MiB) is split; the call
 *   settles when every part has. Offsets and lengths should be multiples of
 *   `minimumBlockSize`, which servers may insist on.
 * - Buffers are the caller's: `read` fills the buffer given (reply bytes are
 *   copied from the socket's read buffer straight into it, holes zero-filled),
 *   `write` sends the buffer given, which must not change until the call
 *   settles. Nothing is allocated per request but its promise (and a
 *   BLOCK_STATUS's result).
 * - Errors: a request the server refuses rejects with NbdRequestError (errno
 *   name, command, range, the server's message); the connection goes on. A
 *   dropped connection or a reply that breaks the protocol rejects every
 *   pending and later request with NbdConnectionError.
 * - `close()` waits for what is in flight, sends NBD_CMD_DISC and ends the
 *   socket; `destroy()` drops it at once.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { assert } from '../../common/assert.js';
import {
  chunkFlags,
  chunkLength,
  chunkType,
  decodeErrorChunk,
  forEachBlockStatusExtent,
  isErrorChunkType,
  replyCookieHigh,
  replyCookieLow,
  replyHeaderSize,
  replyMagic,
  simpleReplyError,
} from '../nbd/client-wire.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EIO,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  REQUEST_HEADER_SIZE,
  encodeRequest,
  readU64,
} from '../nbd/wire.js';
import { newReadBuffer } from '../transport/read-buffer.js';
import { NbdConnectionError, NbdRequestError } from './errors.js';
import { HandshakeInput, negotiate, type Negotiated } from './handshake.js';

export type NbdAddress = { host: string; port: number } | { path: string };

export interface NbdClientOptions {
  /** Requests in flight at once (default 64). */
  maxInFlight?: number;
  /** READ/WRITE payload bytes in flight at once (default 64 MiB); one larger request still goes alone. */
  maxInFlightBytes?: number;
  /** Give up on a handshake not finished after this long (default 30 s). */
  handshakeTimeoutMs?: number;
  /** Ask for structured replies (default true); without them there is no block status. */
  structuredReplies?: boolean;
  /** Ask for the base:allocation meta context (default true). */
  blockStatus?: boolean;
}

/** One run of base:allocation, clipped to the range asked about. */
export interface NbdExtent {
  offset: number;
  length: number;
  /** Not allocated (NBD_STATE_HOLE). */
  hole: boolean;
  /** Reads as zeros (NBD_STATE_ZERO). */
  zero: boolean;
}

/** The largest READ/WRITE sent as one request when the server allows more. */
export const MAX_REQUEST_BYTES = 32 * 1024 * 1024;
/** The largest TRIM / WRITE_ZEROES / BLOCK_STATUS length sent as one request (its field is 32 bits). */
const MAX_RANGE_BYTES = 2 ** 31;
/** Longest structured-reply payload (other than READ data) read into memory. */
const MAX_CHUNK_PAYLOAD = 16 * 1024 * 1024;
const CLOSE_TIMEOUT_MS = 5000;

/** One in-flight request. Slots are made once per connection and reused. */
class Slot {
  readonly header = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  generation = 0;
  busy = false;
  command = 0;
  offset = 0;
  length = 0;
  /** Payload bytes counted against maxInFlightBytes. */
  payload = 0;
  /** READ: where the data goes. */
  dest: Buffer | undefined;
  /** BLOCK_STATUS: the extents so far. */
  extents: NbdExtent[] | undefined;
  /** First error chunk's code (0: none) and message. */
  error = 0;
  message = '';
  resolve: ((value: NbdExtent[] | undefined) => void) | undefined;
  reject: ((err: Error) => void) | undefined;
  constructor(readonly index: number) {}
}

/** What the receiver is doing with the bytes that come next. */
const enum Receive {
  /** Collecting a reply header into `head`. */
  Header,
  /** Copying READ data into the slot's buffer. */
  Data,
  /** Collecting a chunk payload (or a data chunk's offset) into `scratch`. */
  Payload,
  /** Dropping the payload of a chunk we do not use. */
  Skip,
}

interface Waiting {
  payload: number;
  start: () => void;
}

export class NbdClient {
  readonly size: number;
  readonly transmissionFlags: number;
  readonly readOnly: boolean;
  readonly structuredReplies: boolean;
  /** True when BLOCK_STATUS reports real allocation; false: blockStatus() says "all data". */
  readonly canBlockStatus: boolean;
  readonly canFlush: boolean;
  readonly canFua: boolean;
  readonly canTrim: boolean;
  readonly canWriteZeroes: boolean;
  readonly minimumBlockSize: number;
  readonly preferredBlockSize: number;
  /** The longest READ/WRITE this client sends as one request. */
  readonly maxRequestBytes: number;

  private readonly slots: Slot[];
  private readonly free: Slot[];
  private readonly waiting: Waiting[] = [];
  private readonly maxInFlightBytes: number;
  private inFlightBytes = 0;
  private failure: Error | undefined;
  private closing: Promise<void> | undefined;
  private idle: (() => void) | undefined;
  private readonly allocationContextId: number | undefined;

  // Receiver state: one reply in progress.
  private state = Receive.Header;
  private readonly head = Buffer.allocUnsafe(32);
  private headHave = 0;
  private headNeed = 4;
  private scratch = Buffer.allocUnsafe(4096);
  private scratchHave = 0;
  private scratchNeed = 0;
  private remaining = 0;
  private destAt = 0;
  private current: Slot | undefined;
  private chunkType = 0;
  private chunkFlags = 0;
  /** Payload of the current chunk still to come, for Skip and the data of OFFSET_DATA. */
  private chunkLeft = 0;

  private constructor(
    private readonly socket: Socket,
    private readonly where: string,
    negotiated: Negotiated,
    options: NbdClientOptions,
  ) {
    const flags = negotiated.transmissionFlags;
    this.size = negotiated.size;
    this.transmissionFlags = flags;
    this.readOnly = (flags & NBD_FLAG_READ_ONLY) !== 0;
    this.structuredReplies = negotiated.structuredReplies;
    this.allocationContextId = negotiated.allocationContextId;
    this.canBlockStatus = negotiated.allocationContextId !== undefined;
    this.canFlush = (flags & NBD_FLAG_SEND_FLUSH) !== 0;
    this.canFua = (flags & NBD_FLAG_SEND_FUA) !== 0;
    this.canTrim = (flags & NBD_FLAG_SEND_TRIM) !== 0;
    this.canWriteZeroes = (flags & NBD_FLAG_SEND_WRITE_ZEROES) !== 0;
    const sizes = negotiated.blockSizes;
    this.minimumBlockSize = sizes?.minimum || 1;
    this.preferredBlockSize = sizes?.preferred || 4096;
    const serverMax = sizes?.maximumPayload || MAX_REQUEST_BYTES;
    this.maxRequestBytes = Math.min(serverMax, MAX_REQUEST_BYTES);
    this.maxInFlightBytes = Math.max(options.maxInFlightBytes ?? 64 * 1024 * 1024, 1);
    const count = Math.max(1, options.maxInFlight ?? 64);
    this.slots = Array.from({ length: count }, (_, i) => new Slot(i));
    this.free = [...this.slots].reverse();
  }

  /**
   * Connect and handshake. Rejects with NotFoundError when the server has no
   * export of that name, NbdHandshakeError when it refuses one,
   * NbdConnectionError when it cannot be reached or does not speak NBD.
   */
  static async connect(
    address: NbdAddress,
    exportName: string,
    options: NbdClientOptions = {},
  ): Promise<NbdClient> {
    const where = 'path' in address ? address.path : `${address.host}:${address.port}`;
    const input = new HandshakeInput();
    let client: NbdClient | undefined;
    // Every read lands in one reused buffer: the handshake copies what it
    // needs, transmission copies READ data straight into callers' buffers.
    const onread = {
      buffer: newReadBuffer(),
      callback: (bytes: number, buf: Uint8Array) => {
        const view = (buf as Buffer).subarray(0, bytes);
        if (client) client.receive(view);
        else input.push(view);
        return true;
      },
    };
    const socket =
      'path' in address
        ? netConnect({ path: address.path, onread })
        : netConnect({ host: address.host, port: address.port, onread });
    socket.setNoDelay(true);
    const timeoutMs = options.handshakeTimeoutMs ?? 30_000;
    const timer = setTimeout(
      () => input.fail(new NbdConnectionError(`${where}: no NBD handshake within ${timeoutMs} ms`)),
      timeoutMs,
    );
    const onError = (err: NodeJS.ErrnoException) =>
      input.fail(
        new NbdConnectionError(`cannot reach NBD server ${where}: ${err.message}`, { cause: err }),
      );
    const onClose = () =>
      input.fail(new NbdConnectionError(`${where} closed the connection during the handshake`));
    socket.on('error', onError);
    socket.on('close', onClose);
    try {
      const negotiated = await negotiate(
        input,
        (bytes) => socket.write(bytes),
        exportName,
        {
          structuredReplies: options.structuredReplies ?? true,
          blockStatus: options.blockStatus ?? true,
        },
        where,
      );
      client = new NbdClient(socket, where, negotiated, options);
    } catch (err) {
      socket.destroy();
      throw err;
    } finally {
      clearTimeout(timer);
      socket.off('error', onError);
      socket.off('close', onClose);
    }
    const ready = client;
    socket.on('error', (err) =>
      ready.fail(new NbdConnectionError(`${where}: ${err.message}`, { cause: err })),
    );
    socket.on('close', () => ready.fail(new NbdConnectionError(`${where} closed the connection`)));
    const rest = input.rest();
    if (rest.length > 0) ready.receive(rest);
    return ready;
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.slots.length - this.free.length;
  }

  // ------------------------------------------------------------ commands

  /** Fill `buffer` with the export's bytes at `offset`. */
  read(buffer: Buffer, offset: number): Promise<void> {
    return this.split(NBD_CMD_READ, buffer, offset, 0);
  }

  /** Write `buffer` at `offset`; with fua, durable when it settles. */
  write(buffer: Buffer, offset: number, options: { fua?: boolean } = {}): Promise<void> {
    return this.split(NBD_CMD_WRITE, buffer, offset, options.fua ? NBD_CMD_FLAG_FUA : 0);
  }

  /** Make every write that has settled durable. */
  async flush(): Promise<void> {
    await this.request(NBD_CMD_FLUSH, 0, 0, 0, undefined);
  }

  /** The range may become a hole; what it reads as afterwards is up to the server. */
  trim(offset: number, length: number): Promise<void> {
    return this.ranges(NBD_CMD_TRIM, offset, length);
  }

  /** The range reads as zeros afterwards (the server may make it a hole). */
  writeZeroes(offset: number, length: number): Promise<void> {
    return this.ranges(NBD_CMD_WRITE_ZEROES, offset, length);
  }

  /**
   * Allocation of [offset, offset + length) from base:allocation: extents in
   * order, clipped to the range, covering at least its start (the server may
   * stop short; ask again from where they end). Without block status
   * negotiated: one extent, all data.
   */
  async blockStatus(offset: number, length: number): Promise<NbdExtent[]> {
    const asked = Math.min(length, MAX_RANGE_BYTES, this.size - offset);
    if (!this.canBlockStatus || asked <= 0)
      return [{ offset, length: Math.max(asked, 0), hole: false, zero: false }];
    const extents = (await this.request(NBD_CMD_BLOCK_STATUS, 0, offset, asked, undefined))!;
    if (extents.length === 0)
      throw new NbdConnectionError(`${this.where} answered BLOCK_STATUS with no extents`);
    return extents;
  }

  /** Wait for what is in flight, send NBD_CMD_DISC, end the connection. */
  close(): Promise<void> {
    this.closing ??= this.closeGracefully();
    return this.closing;
  }

  /** Drop the connection now; pending requests fail. */
  destroy(): void {
    this.fail(new NbdConnectionError(`connection to ${this.where} closed by this client`));
    this.socket.destroy();
  }

  private async closeGracefully(): Promise<void> {
    if (this.inFlight > 0 || this.waiting.length > 0)
      await new Promise<void>((done) => (this.idle = done));
    if (this.socket.destroyed) return;
    const disc = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
    encodeRequest(disc, 0, 0, NBD_CMD_DISC, 0, 0, 0, 0);
    const closed = new Promise<void>((done) => this.socket.once('close', () => done()));
    this.fail(new NbdConnectionError(`connection to ${this.where} is closed`));
    this.socket.end(disc);
    const timer = setTimeout(() => this.socket.destroy(), CLOSE_TIMEOUT_MS);
    await closed;
    clearTimeout(timer);
  }

  // ------------------------------------------------------------ sending

  /** READ/WRITE of a buffer, in parts of at most maxRequestBytes. */
  private split(command: number, buffer: Buffer, offset: number, flags: number): Promise<void> {
    const max = this.maxRequestBytes;
    if (buffer.length <= max)
      return this.request(
        command,
        flags,
        offset,
        buffer.length,
        buffer,
      ) as Promise<unknown> as Promise<void>;
    const parts: Promise<unknown>[] = [];
    for (let at = 0; at < buffer.length; at += max) {
      const part = buffer.subarray(at, Math.min(at + max, buffer.length));
      parts.push(this.request(command, flags, offset + at, part.length, part));
    }
    return Promise.all(parts).then(() => undefined);
  }

  /** TRIM/WRITE_ZEROES of any length, in parts the 32-bit length field can carry. */
  private ranges(command: number, offset: number, length: number): Promise<void> {
    if (length <= MAX_RANGE_BYTES)
      return this.request(
        command,
        0,
        offset,
        length,
        undefined,
      ) as Promise<unknown> as Promise<void>;
    const parts: Promise<unknown>[] = [];
    for (let at = 0; at < length; at += MAX_RANGE_BYTES)
      parts.push(
        this.request(command, 0, offset + at, Math.min(MAX_RANGE_BYTES, length - at), undefined),
      );
    return Promise.all(parts).then(() => undefined);
  }

  private request(
    command: number,
    flags: number,
    offset: number,
    length: number,
    buffer: Buffer | undefined,
  ): Promise<NbdExtent[] | undefined> {
    if (this.failure) return Promise.reject(this.failure);
    const payload = command === NBD_CMD_READ || command === NBD_CMD_WRITE ? length : 0;
    return new Promise((resolve, reject) => {
      const start = () => {
        const slot = this.free.pop()!;
        slot.busy = true;
        slot.command = command;
        slot.offset = offset;
        slot.length = length;
        slot.payload = payload;
        slot.dest = command === NBD_CMD_READ ? buffer : undefined;
        slot.extents = command === NBD_CMD_BLOCK_STATUS ? [] : undefined;
        slot.error = 0;
        slot.message = '';
        slot.resolve = resolve;
        slot.reject = reject;
        this.inFlightBytes += payload;
        encodeRequest(slot.header, 0, flags, command, slot.generation, slot.index, offset, length);
        if (command === NBD_CMD_WRITE) {
          this.socket.cork();
          this.socket.write(slot.header);
          this.socket.write(buffer!);
          this.socket.uncork();
        } else {
          this.socket.write(slot.header);
        }
      };
      if (this.waiting.length === 0 && this.admits(payload)) start();
      else
        this.waiting.push({
          payload,
          start: () => {
            if (this.failure) reject(this.failure);
            else start();
          },
        });
    });
  }

  private admits(payload: number): boolean {
    if (this.free.length === 0) return false;
    return this.inFlightBytes === 0 || this.inFlightBytes + payload <= this.maxInFlightBytes;
  }

  private admitWaiting(): void {
    while (this.waiting.length > 0) {
      // In call order: a waiter never overtakes another.
      const next = this.waiting[0];
      if (!this.admits(next.payload)) return;
      this.waiting.shift();
      next.start();
    }
  }

  // ------------------------------------------------------------ receiving

  /** Bytes from the socket; `view` is only valid during this call. */
  private receive(view: Buffer): void {
    let at = 0;
    try {
      while (at < view.length && !this.failure) {
        const available = view.length - at;
        switch (this.state) {
          case Receive.Header: {
            const n = Math.min(this.headNeed - this.headHave, available);
            view.copy(this.head, this.headHave, at, at + n);
            this.headHave += n;
            at += n;
            if (this.headHave === 4 && this.headNeed === 4) {
              this.headNeed = replyHeaderSize(replyMagic(this.head, 0));
              if (this.headNeed === 0)
                this.protocolError(
                  `a reply with bad magic 0x${replyMagic(this.head, 0).toString(16)}`,
                );
            } else if (this.headHave === this.headNeed) {
              this.onHeader();
            }
            break;
          }
          case Receive.Data: {
            const n = Math.min(this.remaining, available);
            view.copy(this.current!.dest!, this.destAt, at, at + n);
            this.destAt += n;
            this.remaining -= n;
            at += n;
            if (this.remaining === 0) this.endChunk();
            break;
          }
          case Receive.Payload: {
            const n = Math.min(this.scratchNeed - this.scratchHave, available);
            view.copy(this.scratch, this.scratchHave, at, at + n);
            this.scratchHave += n;
            at += n;
            if (this.scratchHave === this.scratchNeed) this.onPayload();
            break;
          }
          case Receive.Skip: {
            const n = Math.min(this.chunkLeft, available);
            this.chunkLeft -= n;
            at += n;
            if (this.chunkLeft === 0) this.endChunk();
            break;
          }
        }
      }
    } catch (err) {
      this.protocolError((err as Error).message);
    }
  }

  private onHeader(): void {
    const head = this.head;
    const slot = this.slots[replyCookieLow(head, 0)];
    if (!slot || !slot.busy || slot.generation !== replyCookieHigh(head, 0))
      return this.protocolError('a reply to a request it was not sent');
    this.current = slot;
    this.headHave = 0;
    this.headNeed = 4;
    if (replyMagic(head, 0) === NBD_SIMPLE_REPLY_MAGIC) {
      slot.error = simpleReplyError(head, 0);
      this.chunkFlags = NBD_REPLY_FLAG_DONE;
      // A simple READ reply carries the data unless it reports an error.
      if (slot.error === 0 && slot.command === NBD_CMD_READ && slot.length > 0) {
        this.destAt = 0;
        this.remaining = slot.length;
        this.state = Receive.Data;
        return;
      }
      return this.endChunk();
    }
    this.chunkFlags = chunkFlags(head, 0);
    this.chunkType = chunkType(head, 0);
    const length = chunkLength(head, 0);
    this.chunkLeft = length;
    switch (this.chunkType) {
      case NBD_REPLY_TYPE_NONE:
        if (length !== 0) return this.protocolError('an NBD_REPLY_TYPE_NONE chunk with a payload');
        return this.endChunk();
      case NBD_REPLY_TYPE_OFFSET_DATA:
        if (slot.command !== NBD_CMD_READ || length < 8)
          return this.protocolError('a data chunk that does not belong to a READ');
        return this.collect(8);
      case NBD_REPLY_TYPE_OFFSET_HOLE:
        if (slot.command !== NBD_CMD_READ || length !== 12)
          return this.protocolError('a hole chunk that does not belong to a READ');
        return this.collect(12);
      case NBD_REPLY_TYPE_BLOCK_STATUS:
        if (slot.command !== NBD_CMD_BLOCK_STATUS || length < 4)
          return this.protocolError('a block status chunk that does not belong to BLOCK_STATUS');
        return this.collect(length);
      default:
        if (isErrorChunkType(this.chunkType)) {
          if (length < 6) return this.protocolError('an error chunk shorter than 6 bytes');
          return this.collect(length);
        }
        // An unknown informational chunk: skip it (the spec lets a client ignore them).
        if (length === 0) return this.endChunk();
        this.state = Receive.Skip;
    }
  }

  /** Read the next `bytes` of the chunk into scratch, then onPayload(). */
  private collect(bytes: number): void {
    if (bytes > MAX_CHUNK_PAYLOAD)
      return this.protocolError(`a ${bytes}-byte reply chunk (the limit is ${MAX_CHUNK_PAYLOAD})`);
    if (this.scratch.length < bytes)
      this.scratch = Buffer.allocUnsafe(Math.max(bytes, this.scratch.length * 2));
    this.scratchHave = 0;
    this.scratchNeed = bytes;
    this.state = Receive.Payload;
    if (bytes === 0) this.onPayload();
  }

  private onPayload(): void {
    const slot = this.current!;
    const payload = this.scratch;
    switch (this.chunkType) {
      case NBD_REPLY_TYPE_OFFSET_DATA: {
        const at = readU64(payload, 0) - slot.offset;
        const length = this.chunkLeft - 8;
        if (at < 0 || at + length > slot.length)
          return this.protocolError('READ data outside the range asked for');
        if (length === 0) return this.endChunk();
        this.destAt = at;
        this.remaining = length;
        this.state = Receive.Data;
        return;
      }
      case NBD_REPLY_TYPE_OFFSET_HOLE: {
        const at = readU64(payload, 0) - slot.offset;
        const length = payload.readUInt32BE(8);
        if (at < 0 || at + length > slot.length)
          return this.protocolError('a READ hole outside the range asked for');
        slot.dest!.fill(0, at, at + length);
        return this.endChunk();
      }
      case NBD_REPLY_TYPE_BLOCK_STATUS:
        this.addExtents(slot, payload, this.scratchNeed);
        return this.endChunk();
      default: {
        // An error chunk: remember the first one; the request fails when its reply is done.
        const { error, message } = decodeErrorChunk(payload.subarray(0, this.scratchNeed));
        if (slot.error === 0) {
          slot.error = error === 0 ? NBD_EIO : error;
          slot.message = message;
        }
        return this.endChunk();
      }
    }
  }

  private addExtents(slot: Slot, payload: Buffer, length: number): void {
    const extents = slot.extents!;
    const end = slot.offset + slot.length;
    let at = slot.offset + extents.reduce((sum, e) => sum + e.length, 0);
    const contextId = payload.readUInt32BE(0);
    if (contextId !== this.allocationContextId) return;
    forEachBlockStatusExtent(payload, length, (extentLength, flags) => {
      const clipped = Math.min(extentLength, end - at);
      if (clipped <= 0) return;
      extents.push({
        offset: at,
        length: clipped,
        hole: (flags & NBD_STATE_HOLE) !== 0,
        zero: (flags & NBD_STATE_ZERO) !== 0,
      });
      at += clipped;
    });
  }

  /** The current chunk is consumed; settle its request if it was the last. */
  private endChunk(): void {
    this.state = Receive.Header;
    const slot = this.current!;
    this.current = undefined;
    if (this.chunkFlags & NBD_REPLY_FLAG_DONE) this.settle(slot);
  }

  private settle(slot: Slot): void {
    assert(slot.busy, 'settling a slot that is not in flight');
    const { resolve, reject, error, extents } = slot;
    const failure =
      error === 0
        ? undefined
        : new NbdRequestError(error, slot.command, slot.offset, slot.length, slot.message);
    this.release(slot);
    if (failure) reject!(failure);
    else resolve!(extents);
    this.admitWaiting();
    if (this.idle && this.inFlight === 0 && this.waiting.length === 0) {
      const idle = this.idle;
      this.idle = undefined;
      idle();
    }
  }

  private release(slot: Slot): void {
    this.inFlightBytes -= slot.payload;
    slot.busy = false;
    slot.generation = (slot.generation + 1) >>> 0;
    slot.dest = undefined;
    slot.extents = undefined;
    slot.resolve = undefined;
    slot.reject = undefined;
    this.free.push(slot);
  }

  private protocolError(what: string): void {
    this.fail(new NbdConnectionError(`${this.where} sent ${what}; connection dropped`));
    this.socket.destroy();
  }

  /** The connection is unusable: fail everything pending and everything after. */
  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    for (const slot of this.slots) {
      if (!slot.busy) continue;
      const reject = slot.reject!;
      this.release(slot);
      reject(err);
    }
    for (const waiter of this.waiting.splice(0)) waiter.start();
    if (this.idle) {
      const idle = this.idle;
      this.idle = undefined;
      idle();
    }
  }
}
