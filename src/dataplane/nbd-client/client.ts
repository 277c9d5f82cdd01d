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
 *   payload from NBD_INFO_BLOCK_SIZE, at most 64 MiB) is split; the call
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
 *
 * This file is the connection: connect and handshake, the commands and their
 * splitting, putting requests on the wire, failure. The request table
 * (slots, admission, cookies, settling) is request-slots.ts; the reply
 * parser (bytes off the socket into callers' buffers) is reply-receiver.ts.
 */
import { connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { loadClientTls, type NbdClientTls, type NbdClientTlsFiles } from '../nbd/tls-config.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  REQUEST_HEADER_SIZE,
  encodeRequest,
} from '../nbd/wire.js';
import { newReadBuffer } from '../transport/read-buffer.js';
import { NbdConnectionError } from './errors.js';
import { HandshakeInput, negotiate, type Negotiated } from './handshake.js';
import { ReplyReceiver } from './reply-receiver.js';
import { RequestSlots, type Settled, type Slot } from './request-slots.js';

export type { NbdClientTls, NbdClientTlsFiles };

/**
 * Where to connect; `tls` names TLS files (loaded at each connect) where an
 * address must travel as JSON, e.g. to the CSI node's volume file helper.
 */
export type NbdAddress = ({ host: string; port: number } | { path: string }) & {
  tls?: NbdClientTlsFiles;
};

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
  /**
   * Require TLS (tls-config.ts loadClientTls): NBD_OPT_STARTTLS first, the
   * server's certificate checked against the CA (and its name against the
   * host over TCP), or the PSK. A server that refuses TLS is an error.
   */
  tls?: NbdClientTls;
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
export const MAX_REQUEST_BYTES = 64 * 1024 * 1024;
/** The largest TRIM / WRITE_ZEROES / BLOCK_STATUS length sent as one request (its field is 32 bits). */
const MAX_RANGE_BYTES = 2 ** 31;
const CLOSE_TIMEOUT_MS = 5000;

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

  /** The request table: what is in flight, what waits, how each settles. */
  private readonly slots: RequestSlots;
  /** The reply parser: bytes off the socket into the slots' buffers and settlements. */
  private readonly receiver: ReplyReceiver;
  private closing: Promise<void> | undefined;

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
    const maxInFlightBytes = Math.max(options.maxInFlightBytes ?? 64 * 1024 * 1024, 1);
    const count = Math.max(1, options.maxInFlight ?? 64);
    this.slots = new RequestSlots(count, maxInFlightBytes, (slot, flags, buffer) =>
      this.send(slot, flags, buffer),
    );
    this.receiver = new ReplyReceiver(this.slots, negotiated.allocationContextId, (what) =>
      this.protocolError(what),
    );
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
    // Reads land in one reused buffer: the handshake copies what it needs,
    // transmission copies replies out of it. Except READ data: when at least
    // a read buffer's worth of it is still to come, the next read goes
    // straight into the caller's buffer (no copy). Not under TLS, whose
    // reads are its own.
    const readBuffer = newReadBuffer();
    const tls = options.tls ?? (address.tls && loadClientTls(address.tls));
    const onread = {
      buffer: (): Uint8Array =>
        (!tls && client?.receiver.dataTarget(readBuffer.length)) || readBuffer,
      callback: (bytes: number, buf: Uint8Array) => {
        if (client && buf !== readBuffer) client.receiver.landed(bytes);
        else if (client) client.receiver.receive(readBuffer.subarray(0, bytes));
        else input.push(readBuffer.subarray(0, bytes));
        return true;
      },
    };
    let socket =
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
    // TLS takes over the plain socket's reads; decrypted bytes come as 'data' chunks.
    const startTls = async (): Promise<void> => {
      const plain = socket;
      const host = 'host' in address ? address.host : undefined;
      const secure = tlsConnect({
        socket: plain,
        ...(host && !isIP(host) ? { servername: host } : {}),
        ...(host ? { host } : { checkServerIdentity: () => undefined }),
        ...tls!.connectOptions,
      });
      socket = secure;
      plain.off('error', onError);
      plain.off('close', onClose);
      // A TLS 1.3 server refuses a client certificate after the client's handshake is done: say TLS, not "cannot reach".
      secure.on('error', (err) =>
        input.fail(
          new NbdConnectionError(`TLS with ${where} failed: ${err.message}`, { cause: err }),
        ),
      );
      secure.on('close', onClose);
      secure.on('data', (chunk: Buffer) => {
        if (client) client.receiver.receive(chunk);
        else input.push(chunk);
      });
      await new Promise<void>((resolve, reject) => {
        secure.once('secureConnect', resolve);
        secure.once('error', (err) =>
          reject(
            new NbdConnectionError(`TLS with ${where} failed: ${err.message}`, { cause: err }),
          ),
        );
        secure.once('close', () =>
          reject(new NbdConnectionError(`${where} closed the connection during the TLS handshake`)),
        );
      });
    };
    try {
      const negotiated = await negotiate(
        input,
        (bytes) => socket.write(bytes),
        exportName,
        {
          structuredReplies: options.structuredReplies ?? true,
          blockStatus: options.blockStatus ?? true,
          startTls: tls && startTls,
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
    if (rest.length > 0) ready.receiver.receive(rest);
    return ready;
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.slots.inFlight;
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
    if (!this.slots.idleNow) await this.slots.whenIdle();
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
  ): Promise<Settled> {
    const failure = this.slots.failure;
    if (failure) return Promise.reject(failure);
    return new Promise((resolve, reject) =>
      this.slots.submit(command, flags, offset, length, buffer, resolve, reject),
    );
  }

  /** Put an admitted request on the wire (RequestSlots calls this; a WRITE's payload follows its header). */
  private send(slot: Slot, flags: number, buffer: Buffer | undefined): void {
    const command = slot.command;
    encodeRequest(
      slot.header,
      0,
      flags,
      command,
      slot.generation,
      slot.index,
      slot.offset,
      slot.length,
    );
    if (command === NBD_CMD_WRITE) {
      this.socket.cork();
      this.socket.write(slot.header);
      this.socket.write(buffer!);
      this.socket.uncork();
    } else {
      this.socket.write(slot.header);
    }
  }

  private protocolError(what: string): void {
    this.fail(new NbdConnectionError(`${this.where} sent ${what}; connection dropped`));
    this.socket.destroy();
  }

  /** The connection is unusable: fail everything pending and everything after. */
  private fail(err: Error): void {
    if (this.slots.failure) return;
    this.receiver.stop();
    this.slots.fail(err);
  }
}
