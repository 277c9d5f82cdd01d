/**
 * The transmission phase of one connection: decode requests, run them against
 * the export, reply.
 *
 * Contract:
 * - Pipelined: requests are decoded and started as they arrive; replies go out
 *   as each settles, in any order.
 * - Two tiers of error. A framing error (bad request magic, a WRITE too long
 *   to skip, bytes left in a truncated header) closes this connection only. A
 *   bad request (out of range, too long, unknown command or flag, zero
 *   length, write to a read-only export, BLOCK_STATUS without a context) gets
 *   an errno reply — a WRITE's payload is read past first — and the session
 *   goes on. Export failures are answered with the errno of the IoError (EIO
 *   for anything else); they never end the session.
 * - Exports only ever see validated, in-range requests (see export.ts).
 * - Backpressure: at most maxInflightRequests / maxInflightBytes are being
 *   served at once, and reading stops while replies over maxQueuedReplyBytes
 *   wait in the socket; reading resumes as they drain.
 * - NBD_CMD_DISC, or the client half-closing, lets in-flight requests finish
 *   and then closes. shutdown() (server closing) answers new requests with
 *   ESHUTDOWN and closes once in-flight ones are answered.
 * - export.close() is called exactly once, after the socket has closed and
 *   every in-flight request has settled; `finished` resolves after it.
 *
 * Backpressure, draining and ending are the shared ServedConnection
 * (transport/served-connection.ts); this file is the NBD part.
 */
import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Logger } from '../../common/log.js';
import { errnoOf, type Errno } from '../../common/errors.js';
import type { Extent, NbdExport, ReadViews } from './export.js';
import type { Negotiated } from './handshake.js';
import type { Inbound } from './inbound.js';
import { RateLimitedLog } from '../transport/rate-limited-log.js';
import { replyBuffers } from './reply-buffers.js';
import {
  connectionLimits,
  ServedConnection,
  type ConnectionLimits,
} from '../transport/served-connection.js';
import {
  COMMAND_FLAGS_ALLOWED,
  commandLabel,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_REPLY_FLAG_DONE,
  NBD_REQUEST_MAGIC,
  REQUEST_HEADER_SIZE,
  SIMPLE_READ_DATA_AT,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_READ_DATA_AT,
  commandFlagNames,
  commandName,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeReadReplyHeader,
  encodeSimpleReply,
  errnoToNbd,
  requestCookieHigh,
  requestCookieLow,
  requestFlags,
  requestLength,
  requestMagic,
  requestOffset,
  requestType,
} from './wire.js';

/** maxInflightBytes counts READ and WRITE payload bytes. */
export type SessionLimits = ConnectionLimits;

export const DEFAULT_SESSION_LIMITS: SessionLimits = connectionLimits(128);

/** Never hold more than this of one WRITE in memory, whatever an export advertises. */
export const MAX_BUFFERED_PAYLOAD = 64 * 1024 * 1024;
/**
 * A refused WRITE up to this long has its payload skipped so the stream stays
 * in step (the spec says payloads ≤ 2^25 are never to be treated as an
 * attack). Twice the largest we accept, so a client that overshoots the
 * advertised maximum a little gets EINVAL and keeps its connection; skipping
 * holds nothing in memory. Anything longer is a framing error: we hang up
 * rather than read it.
 */
export const MAX_SKIPPABLE_WRITE = 2 * MAX_BUFFERED_PAYLOAD;
/** The spec's ceiling on descriptors in one block status chunk. */
const MAX_EXTENTS = 1 << 20;

/** Per-request observation for metrics. command is an NBD_CMD_* name (unknown ones collapse to NBD_CMD_UNKNOWN). */
export type RequestObserver = (
  command: string,
  bytes: number,
  seconds: number,
  errno: Errno | undefined,
) => void;

export class Session extends ServedConnection {
  private readonly exp: NbdExport;
  private readonly structured: boolean;
  private readonly allocationContextId: number | undefined;
  /** The largest READ/WRITE we accept: the export's limit, capped by what we will buffer. */
  private readonly maxPayload: number;
  /** A WRITE refused while its payload is still being skipped; answered once the skip is done. */
  private refusedWrite:
    | {
        flags: number;
        cookieHigh: number;
        cookieLow: number;
        offset: number;
        length: number;
        refusal: { errno: Errno; message: string };
      }
    | undefined;
  private corked = false;
  private exportClosed = false;
  /** Failed requests, logged at most once a second per errno. */
  private failureLog: RateLimitedLog | undefined;

  /** `finished` resolves once the socket is closed and the export has been closed. */
  constructor(
    socket: Socket,
    private readonly inbound: Inbound,
    negotiated: Negotiated,
    private readonly log: Logger,
    limits: SessionLimits,
    private readonly observe: RequestObserver | undefined,
  ) {
    super(socket, limits, 'serving');
    this.exp = negotiated.export;
    this.structured = negotiated.structuredReplies;
    this.allocationContextId = negotiated.allocationContextId;
    this.maxPayload = Math.min(this.exp.maximumPayload, MAX_BUFFERED_PAYLOAD);
  }

  /** Begin serving: bytes already buffered after the handshake are parsed now. */
  start(): void {
    this.inbound.onData = this.pump;
    if (!this.attach()) return;
    this.pump();
    if (this.socket.readableEnded) this.onEnd();
  }

  // shutdown() (ServedConnection): the server is closing; new requests get ESHUTDOWN.

  // ---------------------------------------------------------------- reading

  /** Decode and start every complete request buffered, until a limit says stop. */
  protected readonly pump = (): void => {
    const inbound = this.inbound;
    while (this.phase === 'serving' || this.phase === 'shutting-down') {
      if (this.readingBlocked()) return;
      if (this.refusedWrite) {
        // Answer a refused WRITE only once its payload is behind us: clients
        // (libnbd) do not expect a reply to a request they are still sending.
        if (inbound.discarding > 0) break;
        const r = this.refusedWrite;
        this.refusedWrite = undefined;
        this.refuse(
          NBD_CMD_WRITE,
          r.flags,
          r.cookieHigh,
          r.cookieLow,
          r.offset,
          r.length,
          r.refusal,
        );
      }
      if (inbound.available < REQUEST_HEADER_SIZE) break;
      const { buf, at } = inbound.peek(REQUEST_HEADER_SIZE);
      if (requestMagic(buf, at) !== NBD_REQUEST_MAGIC) {
        this.framingError(`bad request magic 0x${requestMagic(buf, at).toString(16)}`);
        return;
      }
      const flags = requestFlags(buf, at);
      const type = requestType(buf, at);
      const cookieHigh = requestCookieHigh(buf, at);
      const cookieLow = requestCookieLow(buf, at);
      const offset = requestOffset(buf, at);
      const length = requestLength(buf, at);

      if (type === NBD_CMD_DISC) {
        inbound.take(REQUEST_HEADER_SIZE);
        this.log.debug({ inflight: this.inflight }, 'NBD_CMD_DISC');
        this.drain();
        return;
      }

      const refusal = this.check(type, flags, offset, length);
      if (type === NBD_CMD_WRITE) {
        if (refusal !== undefined) {
          if (length > MAX_SKIPPABLE_WRITE) {
            this.framingError(`NBD_CMD_WRITE of ${length} bytes is too long to skip`);
            return;
          }
          inbound.take(REQUEST_HEADER_SIZE);
          inbound.discard(length);
          this.refusedWrite = { flags, cookieHigh, cookieLow, offset, length, refusal };
          continue;
        }
        inbound.take(REQUEST_HEADER_SIZE);
        if (inbound.available >= length) {
          void this.execute(
            type,
            flags,
            cookieHigh,
            cookieLow,
            offset,
            length,
            inbound.takeToKeep(length),
          );
          continue;
        }
        // The payload is still arriving: have it copied straight into its own
        // buffer as it comes, and start the write once it is complete.
        const payload = replyBuffers.acquire(length);
        inbound.fill(
          payload,
          () => void this.execute(type, flags, cookieHigh, cookieLow, offset, length, payload),
        );
        break;
      }
      inbound.take(REQUEST_HEADER_SIZE);
      if (refusal !== undefined)
        this.refuse(type, flags, cookieHigh, cookieLow, offset, length, refusal);
      else void this.execute(type, flags, cookieHigh, cookieLow, offset, length, undefined);
    }
    this.resumeReading();
  };

  /** Why a request is refused (errno and a message for the client), or undefined if it may run. */
  private check(
    type: number,
    flags: number,
    offset: number,
    length: number,
  ): { errno: Errno; message: string } | undefined {
    const allowed = COMMAND_FLAGS_ALLOWED[type];
    if (allowed === undefined) return { errno: 'EINVAL', message: `unknown command ${type}` };
    let effectiveAllowed = allowed;
    if (!this.structured) effectiveAllowed &= ~NBD_CMD_FLAG_DF;
    if (flags & ~effectiveAllowed)
      return {
        errno: 'EINVAL',
        message: `flags ${commandFlagNames(flags & ~effectiveAllowed)} not valid for ${commandName(type)}`,
      };
    if (this.phase === 'shutting-down')
      return { errno: 'ESHUTDOWN', message: 'server is shutting down' };
    if (type === NBD_CMD_FLUSH) {
      return offset === 0 && length === 0
        ? undefined
        : { errno: 'EINVAL', message: 'NBD_CMD_FLUSH offset and length must be zero' };
    }
    if (type === NBD_CMD_BLOCK_STATUS && this.allocationContextId === undefined) {
      return {
        errno: 'EINVAL',
        message: 'NBD_CMD_BLOCK_STATUS needs structured replies and the base:allocation context',
      };
    }
    const writes = type === NBD_CMD_WRITE || type === NBD_CMD_TRIM || type === NBD_CMD_WRITE_ZEROES;
    if (writes && this.exp.readOnly) return { errno: 'EPERM', message: 'export is read-only' };
    if (length === 0) return { errno: 'EINVAL', message: `zero-length ${commandName(type)}` };
    if ((type === NBD_CMD_READ || type === NBD_CMD_WRITE) && length > this.maxPayload) {
      return {
        errno: 'EINVAL',
        message: `${commandName(type)} of ${length} bytes exceeds the maximum payload of ${this.maxPayload}`,
      };
    }
    const block = this.exp.minimumBlockSize;
    if (block > 1 && (offset % block !== 0 || length % block !== 0)) {
      return {
        errno: 'EINVAL',
        message: `request not aligned to the ${block}-byte minimum block size`,
      };
    }
    if (offset + length > this.exp.size) {
      const errno: Errno =
        type === NBD_CMD_WRITE || type === NBD_CMD_WRITE_ZEROES ? 'ENOSPC' : 'EINVAL';
      return {
        errno,
        message: `${commandName(type)} of ${length} bytes at ${offset} runs past the end of the ${this.exp.size}-byte export`,
      };
    }
    return undefined;
  }

  // --------------------------------------------------------------- serving

  /** Run one validated request and send its reply; never rejects. */
  private async execute(
    type: number,
    flags: number,
    cookieHigh: number,
    cookieLow: number,
    offset: number,
    length: number,
    payload: Buffer | undefined,
  ): Promise<void> {
    const started = performance.now();
    const cost = type === NBD_CMD_READ || type === NBD_CMD_WRITE ? length : 0;
    this.begun(cost);
    const exp = this.exp;
    const fua = (flags & NBD_CMD_FLAG_FUA) !== 0;
    let errno: Errno | undefined;
    try {
      switch (type) {
        case NBD_CMD_READ:
          errno = await this.read(cookieHigh, cookieLow, offset, length);
          break;
        case NBD_CMD_WRITE:
          try {
            await exp.write(offset, payload!, fua);
          } finally {
            // The export is done with it (see export.ts). A payload gathered from
            // several socket chunks came from the pool and goes back; one that is
            // a slice of a socket chunk is not the pool's and is left alone.
            replyBuffers.release(payload!);
          }
          break;
        case NBD_CMD_FLUSH:
          await exp.flush();
          break;
        case NBD_CMD_TRIM:
          await exp.trim(offset, length, fua);
          break;
        case NBD_CMD_WRITE_ZEROES:
          await exp.writeZeroes(offset, length, {
            fua,
            noHole: (flags & NBD_CMD_FLAG_NO_HOLE) !== 0,
            fastZero: (flags & NBD_CMD_FLAG_FAST_ZERO) !== 0,
          });
          break;
        case NBD_CMD_CACHE:
          await exp.cache(offset, length);
          break;
        case NBD_CMD_BLOCK_STATUS:
          this.sendBlockStatus(
            cookieHigh,
            cookieLow,
            length,
            (flags & NBD_CMD_FLAG_REQ_ONE) !== 0,
            await exp.blockStatus(offset, length),
          );
          break;
      }
      if (type !== NBD_CMD_READ && type !== NBD_CMD_BLOCK_STATUS)
        this.sendSimple(0, cookieHigh, cookieLow);
    } catch (err) {
      errno = errnoOf(err);
      this.exportFailed(type, offset, length, err, errno);
      this.sendError(
        cookieHigh,
        cookieLow,
        errno,
        (err as Error)?.message ?? String(err),
        undefined,
      );
    } finally {
      this.ended(cost);
      this.observe?.(
        commandName(type),
        errno === undefined ? cost : 0,
        (performance.now() - started) / 1000,
        errno,
      );
      this.settled();
    }
  }

  /**
   * A READ reply. Zero copy when the export has the range's bytes at hand, or
   * once it has loaded them: a small header, then the export's own buffers
   * (the socket gathers them into one writev). Otherwise one allocation:
   * header and data share a pooled buffer the export fills in place. Returns
   * the errno when the export failed (the error reply is already sent).
   */
  private async read(
    cookieHigh: number,
    cookieLow: number,
    offset: number,
    length: number,
  ): Promise<Errno | undefined> {
    const dataAt = this.structured ? STRUCTURED_READ_DATA_AT : SIMPLE_READ_DATA_AT;
    let views: ReadViews | undefined;
    let reply: Buffer | undefined;
    try {
      views = this.exp.readViews?.(offset, length) ?? (await this.exp.loadViews?.(offset, length));
      if (!views) {
        reply = replyBuffers.acquire(dataAt + length);
        await this.exp.read(offset, reply.subarray(dataAt));
      }
    } catch (err) {
      if (reply) replyBuffers.release(reply);
      const errno = errnoOf(err);
      this.exportFailed(NBD_CMD_READ, offset, length, err, errno);
      // Nothing was sent for this request yet, so the error is the whole reply;
      // with structured replies it names the offset the failed range starts at.
      this.sendError(cookieHigh, cookieLow, errno, (err as Error)?.message ?? String(err), offset);
      return errno;
    }
    if (views) {
      const { buffers, release } = views;
      const header = Buffer.allocUnsafe(dataAt);
      encodeReadReplyHeader(header, this.structured, cookieHigh, cookieLow, offset, length);
      this.send(header);
      const last = buffers.length - 1;
      for (let i = 0; i < last; i++) this.send(buffers[i]);
      // Callbacks run in write order, so the last one means all are taken.
      if (!this.send(buffers[last], () => release())) release();
    } else {
      const data = reply!;
      encodeReadReplyHeader(data, this.structured, cookieHigh, cookieLow, offset, length);
      this.send(data, () => replyBuffers.release(data));
    }
    return undefined;
  }

  /**
   * Answer BLOCK_STATUS with one base:allocation chunk. The export may stop
   * short; we also cut its answer to the requested range (so every length fits
   * in 32 bits) and, for REQ_ONE, to a single extent.
   */
  private sendBlockStatus(
    cookieHigh: number,
    cookieLow: number,
    length: number,
    reqOne: boolean,
    extents: Extent[],
  ): void {
    const out: Extent[] = [];
    let covered = 0;
    for (const extent of extents) {
      if (!(extent.length > 0)) break;
      const take = Math.min(extent.length, length - covered);
      out.push(take === extent.length ? extent : { length: take, flags: extent.flags });
      covered += take;
      if (covered >= length || reqOne || out.length >= MAX_EXTENTS) break;
    }
    if (out.length === 0) throw new Error('export returned no usable block status extent');
    this.send(
      encodeBlockStatusChunk(
        NBD_REPLY_FLAG_DONE,
        cookieHigh,
        cookieLow,
        this.allocationContextId!,
        out,
      ),
    );
  }

  private refuse(
    type: number,
    flags: number,
    cookieHigh: number,
    cookieLow: number,
    offset: number,
    length: number,
    refusal: { errno: Errno; message: string },
  ): void {
    this.log.debug(
      {
        command: commandName(type),
        flags: commandFlagNames(flags),
        offset,
        length,
        errno: refusal.errno,
        reason: refusal.message,
      },
      'request refused',
    );
    this.sendError(cookieHigh, cookieLow, refusal.errno, refusal.message, undefined);
    this.observe?.(commandLabel(type), 0, 0, refusal.errno);
  }

  private exportFailed(
    type: number,
    offset: number,
    length: number,
    err: unknown,
    errno: Errno,
  ): void {
    // One line per errno a second, or a client retrying on a full store writes one per request.
    const fields = { command: commandName(type), offset, length, errno, err };
    this.failureLog ??= new RateLimitedLog(this.log);
    this.failureLog.note('warn', `request failed: ${errno}`, fields);
  }

  // ---------------------------------------------------------------- replies

  private sendSimple(error: number, cookieHigh: number, cookieLow: number): void {
    const reply = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
    encodeSimpleReply(reply, 0, error, cookieHigh, cookieLow);
    this.send(reply);
  }

  /** An error reply: a structured error chunk (with the message) when negotiated, else a simple reply. */
  private sendError(
    cookieHigh: number,
    cookieLow: number,
    errno: Errno,
    message: string,
    offset: number | undefined,
  ): void {
    const error = errnoToNbd(errno);
    if (this.structured)
      this.send(
        encodeErrorChunk(NBD_REPLY_FLAG_DONE, cookieHigh, cookieLow, error, message, offset),
      );
    else this.sendSimple(error, cookieHigh, cookieLow);
  }

  /**
   * Queue a reply. Replies settled in the same tick are corked together so a
   * burst of small ones costs one syscall. Reading stops while too much waits
   * in the socket.
   */
  /** Returns false when the socket is gone and nothing was queued (`written` will not be called). */
  private send(buf: Buffer, written?: (err?: Error | null) => void): boolean {
    const socket = this.socket;
    if (this.socketClosed || !socket.writable) return false;
    if (!this.corked) {
      this.corked = true;
      socket.cork();
      process.nextTick(this.uncork);
    }
    if (!socket.write(buf, written)) this.noteQueued();
    return true;
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  // -------------------------------------------------------------- lifecycle

  private framingError(reason: string): void {
    this.log.warn({ reason }, 'framing error: closing connection');
    this.phase = 'closed';
    this.inbound.onData = undefined;
    this.socket.destroy();
  }

  /** Stop reading; close once every in-flight request has been answered. */
  private drain(): void {
    if (this.phase === 'closed' || this.phase === 'draining') return;
    this.phase = 'draining';
    this.inbound.onData = undefined;
    this.endIfIdle();
  }

  /** The client half-closed: whatever it sent is all there is. */
  protected readonly onEnd = (): void => {
    const partial = this.inbound.available + this.inbound.filling;
    if (this.phase === 'serving' && partial > 0 && this.inbound.discarding === 0) {
      this.log.debug(
        { bytes: partial },
        'client closed mid-request; the partial request is ignored',
      );
    }
    this.drain();
  };

  protected stopReading(): void {
    this.inbound.onData = undefined;
  }

  protected finish(): void {
    void this.closeExport();
  }

  private async closeExport(): Promise<void> {
    if (this.exportClosed) return;
    this.exportClosed = true;
    this.failureLog?.dispose();
    try {
      await this.exp.close();
    } catch (err) {
      this.log.warn({ err }, 'closing the export failed');
    }
    this.resolveFinished();
  }
}
