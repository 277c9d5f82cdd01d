/**
 * The client side of the fixed-newstyle handshake, up to transmission:
 * greeting, client flags, NBD_OPT_STARTTLS when TLS is wanted (first, so
 * nothing else is said in clear; a refusal ends the connection — never a
 * quiet fall-back to clear text), NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT
 * for base:allocation, NBD_OPT_GO asking for NBD_INFO_BLOCK_SIZE. An option
 * the server refuses is done without (plain replies, no block status); a
 * server that does not know NBD_OPT_GO gets NBD_OPT_EXPORT_NAME.
 *
 * It runs once per connection, so clarity wins over allocation here: received
 * bytes are copied into a list and taken as fresh Buffers.
 */
import { NotFoundError } from '../../common/errors.js';
import {
  decodeExportNameReply,
  decodeInfoReply,
  decodeOptionReplyHeader,
  decodeRepMetaContext,
  decodeServerGreeting,
  encodeGoData,
  encodeMetaContextData,
  encodeOption,
} from '../nbd/client-wire.js';
import {
  BASE_ALLOCATION,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  OPTION_REPLY_HEADER_SIZE,
  SERVER_GREETING_SIZE,
  optionName,
  replyName,
} from '../nbd/wire.js';
import { NbdConnectionError, NbdHandshakeError } from './errors.js';

/** Longest option reply we read into memory; real ones are tens of bytes. */
const MAX_OPTION_REPLY_BYTES = 64 * 1024;
const FLAG_REP_ERROR = 0x80000000;

/** What the handshake settled: everything transmission needs. */
export interface Negotiated {
  size: number;
  transmissionFlags: number;
  structuredReplies: boolean;
  /** The server's id for base:allocation, when block status was negotiated. */
  allocationContextId: number | undefined;
  /** NBD_INFO_BLOCK_SIZE, or undefined when the server sent none. */
  blockSizes: { minimum: number; preferred: number; maximumPayload: number } | undefined;
}

export interface HandshakeWishes {
  structuredReplies: boolean;
  blockStatus: boolean;
  /**
   * Upgrade to TLS: called once the server acknowledged NBD_OPT_STARTTLS;
   * resolves when the TLS handshake is done and `send`/`input` carry TLS.
   */
  startTls?: () => Promise<void>;
}

/** Bytes received during the handshake, taken in exact amounts. */
export class HandshakeInput {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter:
    { bytes: number; done: (buf: Buffer) => void; fail: (e: Error) => void } | undefined;
  private failure: Error | undefined;

  /** A view that is only valid during this call: it is copied. */
  push(view: Buffer): void {
    this.chunks.push(Buffer.from(view));
    this.buffered += view.length;
    this.wake();
  }

  fail(err: Error): void {
    this.failure ??= err;
    this.wake();
  }

  take(bytes: number): Promise<Buffer> {
    return new Promise((done, fail) => {
      this.waiter = { bytes, done, fail };
      this.wake();
    });
  }

  /** Bytes received and not yet taken. */
  get pending(): number {
    return this.buffered;
  }

  /** Whatever arrived after the handshake's last reply (normally nothing). */
  rest(): Buffer {
    const all = Buffer.concat(this.chunks);
    this.chunks = [];
    this.buffered = 0;
    return all;
  }

  private wake(): void {
    const waiter = this.waiter;
    if (!waiter) return;
    if (this.buffered >= waiter.bytes) {
      this.waiter = undefined;
      const all = Buffer.concat(this.chunks);
      this.chunks = all.length > waiter.bytes ? [all.subarray(waiter.bytes)] : [];
      this.buffered -= waiter.bytes;
      waiter.done(all.subarray(0, waiter.bytes));
    } else if (this.failure) {
      this.waiter = undefined;
      waiter.fail(this.failure);
    }
  }
}

interface OptionReply {
  reply: number;
  data: Buffer;
}

/**
 * Haggle over `input`/`send` until transmission. Rejects with NotFoundError
 * when the server has no such export, NbdHandshakeError when it refuses what
 * transmission needs, NbdConnectionError when the bytes are not NBD.
 */
export async function negotiate(
  input: HandshakeInput,
  send: (bytes: Buffer) => void,
  exportName: string,
  wishes: HandshakeWishes,
  where: string,
): Promise<Negotiated> {
  const greeting = decodeServerGreeting(await input.take(SERVER_GREETING_SIZE));
  if (!greeting.magicOk) throw new NbdConnectionError(`${where} is not an NBD server`);
  if (!(greeting.handshakeFlags & NBD_FLAG_FIXED_NEWSTYLE))
    throw new NbdHandshakeError(`${where} does not speak fixed-newstyle NBD`);
  const noZeroes = (greeting.handshakeFlags & NBD_FLAG_NO_ZEROES) !== 0;
  const clientFlags = Buffer.alloc(4);
  clientFlags.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0));
  send(clientFlags);

  const ask = async (option: number, data?: Buffer): Promise<OptionReply> => {
    send(encodeOption(option, data));
    return readReply(option);
  };
  const readReply = async (option: number): Promise<OptionReply> => {
    const header = decodeOptionReplyHeader(await input.take(OPTION_REPLY_HEADER_SIZE));
    if (!header.magicOk || header.option !== option)
      throw new NbdConnectionError(
        `${where} answered ${optionName(option)} with a malformed option reply`,
      );
    if (header.length > MAX_OPTION_REPLY_BYTES)
      throw new NbdConnectionError(
        `${where} sent a ${header.length}-byte reply to ${optionName(option)}`,
      );
    const data = header.length > 0 ? await input.take(header.length) : Buffer.alloc(0);
    return { reply: header.reply, data };
  };
  const isError = (reply: number) => (reply & FLAG_REP_ERROR) !== 0;

  if (wishes.startTls) {
    const { reply, data } = await ask(NBD_OPT_STARTTLS);
    if (reply !== NBD_REP_ACK) {
      const text = data.toString('utf8');
      throw new NbdHandshakeError(
        `${where} refused TLS: ${replyName(reply)}${text ? ` (${text})` : ''}`,
      );
    }
    // Anything the server sent after its ACK came in clear where TLS was promised.
    if (input.pending > 0)
      throw new NbdConnectionError(`${where} sent clear-text bytes after acknowledging STARTTLS`);
    await wishes.startTls();
  }

  let structuredReplies = false;
  if (wishes.structuredReplies) {
    const { reply } = await ask(NBD_OPT_STRUCTURED_REPLY);
    structuredReplies = reply === NBD_REP_ACK;
  }

  let allocationContextId: number | undefined;
  if (structuredReplies && wishes.blockStatus) {
    let { reply, data } = await ask(
      NBD_OPT_SET_META_CONTEXT,
      encodeMetaContextData(exportName, [BASE_ALLOCATION]),
    );
    // Zero or more contexts, then ACK; an error instead means none (an unknown export shows up at GO).
    while (reply === NBD_REP_META_CONTEXT) {
      const context = decodeRepMetaContext(data);
      if (context.name === BASE_ALLOCATION) allocationContextId = context.contextId;
      ({ reply, data } = await readReply(NBD_OPT_SET_META_CONTEXT));
    }
    if (reply !== NBD_REP_ACK) allocationContextId = undefined;
  }

  let size: number | undefined;
  let transmissionFlags = 0;
  let blockSizes: Negotiated['blockSizes'];
  let { reply, data } = await ask(NBD_OPT_GO, encodeGoData(exportName, [NBD_INFO_BLOCK_SIZE]));
  while (reply === NBD_REP_INFO) {
    const info = data.length >= 2 ? decodeInfoReply(data) : undefined;
    if (info?.type === NBD_INFO_EXPORT) {
      size = info.size;
      transmissionFlags = info.transmissionFlags;
    } else if (info?.type === NBD_INFO_BLOCK_SIZE) {
      const { minimum, preferred, maximumPayload } = info;
      blockSizes = { minimum, preferred, maximumPayload };
    }
    ({ reply, data } = await readReply(NBD_OPT_GO));
  }
  if (reply === NBD_REP_ERR_UNKNOWN)
    throw new NotFoundError(`no export named "${exportName}" on ${where}`);
  if (reply === NBD_REP_ERR_UNSUP) {
    // A server older than NBD_OPT_GO: EXPORT_NAME has no error reply (an unknown name closes the connection).
    send(encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from(exportName, 'utf8')));
    const end = decodeExportNameReply(
      await input.take(noZeroes ? 10 : 134).catch((err: Error) => {
        throw new NotFoundError(
          `${where} closed the connection on NBD_OPT_EXPORT_NAME: no export named "${exportName}"? (${err.message})`,
        );
      }),
    );
    return {
      size: end.size,
      transmissionFlags: end.transmissionFlags,
      structuredReplies,
      allocationContextId,
      blockSizes: undefined,
    };
  }
  if (isError(reply)) {
    const text = data.toString('utf8');
    throw new NbdHandshakeError(
      `${where} refused export "${exportName}": ${replyName(reply)}${text ? ` (${text})` : ''}`,
    );
  }
  if (reply !== NBD_REP_ACK || size === undefined)
    throw new NbdConnectionError(
      `${where} ended NBD_OPT_GO with ${replyName(reply)}${size === undefined ? ' and no NBD_INFO_EXPORT' : ''}`,
    );
  return { size, transmissionFlags, structuredReplies, allocationContextId, blockSizes };
}
