/**
 * ReplyReceiver: the byte-level state machine that turns an NBD
 * connection's transmission-phase bytes into settled requests. It reads
 * simple and structured reply headers, copies READ data straight from the
 * socket's read buffer into the caller's buffer, zero-fills hole chunks,
 * gathers block-status extents and error chunks into the request's slot,
 * and settles the slot (`RequestSlots.settle`) when its reply is done.
 *
 * Contract:
 * - `receive(view)` takes bytes in any split (a header or chunk may span
 *   many calls); `view` is only read during the call.
 * - A reply is matched to its request by cookie (`RequestSlots.find`); one
 *   that matches none, has a bad magic, carries a chunk that does not belong
 *   to its command, puts data outside the range asked for, or a chunk over
 *   MAX_CHUNK_PAYLOAD, is a protocol error: `onProtocolError` is called once
 *   and the receiver consumes nothing more (the connection is dropped).
 * - Error chunks: the first one's code and message are kept; the request
 *   fails when its reply is done (RequestSlots.settle makes the error).
 * - Nothing is allocated per reply: the header and scratch buffers are the
 *   receiver's, reused (scratch grows to the largest chunk payload seen).
 *   BLOCK_STATUS extents are the exception, being the answer.
 * - After `stop()` (the connection failed) nothing more is consumed.
 * - Bytes may also land in place: `dataTarget(min)` names the rest of the
 *   READ data being received (when at least `min` bytes of it remain), the
 *   socket reads straight into it, and `landed(n)` says how many came. That
 *   saves a copy of every READ byte (a third of a dump's main thread).
 */
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
  NBD_CMD_READ,
  NBD_EIO,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  readU64,
} from '../nbd/wire.js';
import type { RequestSlots, Slot } from './request-slots.js';

/** Longest structured-reply payload (other than READ data) read into memory. */
const MAX_CHUNK_PAYLOAD = 16 * 1024 * 1024;

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

export class ReplyReceiver {
  private stopped = false;
  private state = Receive.Header;
  private readonly head = Buffer.allocUnsafe(32);
  private headHave = 0;
  private headNeed = 4;
  private scratch = Buffer.allocUnsafe(4096);
  private scratchHave = 0;
  private scratchNeed = 0;
  private remaining = 0;
  private destAt = 0;
  /** The request whose reply is coming in (from its header to the end of the chunk). */
  private current: Slot | undefined;
  private chunkType = 0;
  private chunkFlags = 0;
  /** Payload of the current chunk still to come, for Skip and the data of OFFSET_DATA. */
  private chunkLeft = 0;

  constructor(
    private readonly slots: RequestSlots,
    /** The server's id for base:allocation; block status chunks for any other context are ignored. */
    private readonly allocationContextId: number | undefined,
    /** The bytes broke the protocol (`what` they sent); called once, after which nothing is consumed. */
    private readonly onProtocolError: (what: string) => void,
  ) {}

  /** Consume nothing more: the connection has failed. */
  stop(): void {
    this.stopped = true;
  }

  /**
   * Where the next socket read may go directly: the rest of the READ data
   * coming in, when at least `min` bytes of it remain; else undefined.
   */
  dataTarget(min: number): Buffer | undefined {
    if (this.stopped || this.state !== Receive.Data || this.remaining < min) return undefined;
    return this.current!.dest!.subarray(this.destAt, this.destAt + this.remaining);
  }

  /** `bytes` of READ data were read straight into the buffer dataTarget() gave. */
  landed(bytes: number): void {
    if (this.stopped) return;
    if (this.state !== Receive.Data || bytes > this.remaining || bytes <= 0)
      throw new Error(`${bytes} bytes landed in a READ's buffer with ${this.remaining} expected`);
    this.destAt += bytes;
    this.remaining -= bytes;
    if (this.remaining === 0) this.endChunk();
  }

  /** Bytes from the socket; `view` is only valid during this call. */
  receive(view: Buffer): void {
    let at = 0;
    try {
      while (at < view.length && !this.stopped) {
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
    const slot = this.slots.find(replyCookieHigh(head, 0), replyCookieLow(head, 0));
    if (!slot) return this.protocolError('a reply to a request it was not sent');
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
    if (this.chunkFlags & NBD_REPLY_FLAG_DONE) this.slots.settle(slot);
  }

  private protocolError(what: string): void {
    if (this.stopped) return;
    this.stopped = true;
    this.onProtocolError(what);
  }
}
