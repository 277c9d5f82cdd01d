/**
 * The NBD wire format: every magic number, option, reply, command, flag and
 * info constant, name tables for logs, the errno → NBD error mapping, and pure
 * encoders/decoders over Buffers at fixed offsets.
 *
 * Nothing here touches a socket. Encoders that sit on the per-request hot path
 * write into a buffer the caller owns (so a READ reply is one allocation);
 * handshake encoders, which run a handful of times per connection, return a
 * fresh Buffer for clarity.
 *
 * All integers are big-endian (network order). 64-bit fields that carry
 * offsets are read as two 32-bit halves into a double: anything at or above
 * 2^53 loses precision but is still far beyond any export size, so range
 * checks stay correct without BigInt on the hot path. The 64-bit cookie is
 * opaque: it is carried as its two 32-bit halves and echoed back unchanged.
 */
import type { Errno } from '../../common/errors.js';
import { utf8Prefix } from '../transport/utf8-prefix.js';

// ------------------------------------------------------------------ magics

/** 'NBDMAGIC', the first 8 bytes the server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** 'IHAVEOPT': second server magic in newstyle, and the prefix of every client option. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** Prefix of every fixed-newstyle option reply. */
export const NBD_REP_MAGIC = 0x0003e889045565a9n;
export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ----------------------------------------------------------- handshake flags

export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
/** Handshake flags this server sends. */
export const SERVER_HANDSHAKE_FLAGS = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;

export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;
/** Client flags we understand; any other bit set means we must drop the connection. */
export const KNOWN_CLIENT_FLAGS = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

// -------------------------------------------------------- transmission flags

export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// ------------------------------------------------------------------ options

export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_PEEK_EXPORT = 4;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;
export const NBD_OPT_EXTENDED_HEADERS = 11;

// ------------------------------------------------------------ option replies

export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_REP_ERR_UNSUP = (NBD_REP_FLAG_ERROR | 1) >>> 0;
export const NBD_REP_ERR_POLICY = (NBD_REP_FLAG_ERROR | 2) >>> 0;
export const NBD_REP_ERR_INVALID = (NBD_REP_FLAG_ERROR | 3) >>> 0;
export const NBD_REP_ERR_PLATFORM = (NBD_REP_FLAG_ERROR | 4) >>> 0;
export const NBD_REP_ERR_TLS_REQD = (NBD_REP_FLAG_ERROR | 5) >>> 0;
export const NBD_REP_ERR_UNKNOWN = (NBD_REP_FLAG_ERROR | 6) >>> 0;
export const NBD_REP_ERR_SHUTDOWN = (NBD_REP_FLAG_ERROR | 7) >>> 0;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = (NBD_REP_FLAG_ERROR | 8) >>> 0;
export const NBD_REP_ERR_TOO_BIG = (NBD_REP_FLAG_ERROR | 9) >>> 0;

// --------------------------------------------------------------- info types

export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// ----------------------------------------------------------------- commands

export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// -------------------------------------------------------- structured replies

export const NBD_REPLY_FLAG_DONE = 1 << 0;

export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = (1 << 15) | 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) | 2;

// ------------------------------------------------------ base:allocation

export const BASE_ALLOCATION = 'base:allocation';
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

// ------------------------------------------------------------------- errors

export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

const NBD_ERROR_OF: Record<Errno, number> = {
  EPERM: NBD_EPERM,
  EIO: NBD_EIO,
  ENOMEM: NBD_ENOMEM,
  EINVAL: NBD_EINVAL,
  ENOSPC: NBD_ENOSPC,
  EOVERFLOW: NBD_EOVERFLOW,
  ENOTSUP: NBD_ENOTSUP,
  ESHUTDOWN: NBD_ESHUTDOWN,
};

/** The wire code for an errno name; the only place the two vocabularies meet. */
export function errnoToNbd(errno: Errno): number {
  return NBD_ERROR_OF[errno] ?? NBD_EIO;
}

// -------------------------------------------------------------- name tables

function nameTable(entries: Record<string, number>): Map<number, string> {
  return new Map(Object.entries(entries).map(([name, value]) => [value, name]));
}

const OPTION_NAMES = nameTable({
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_LIST,
  NBD_OPT_PEEK_EXPORT,
  NBD_OPT_STARTTLS,
  NBD_OPT_INFO,
  NBD_OPT_GO,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_EXTENDED_HEADERS,
});
const REPLY_NAMES = nameTable({
  NBD_REP_ACK,
  NBD_REP_SERVER,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_ERR_UNSUP,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_PLATFORM,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_BLOCK_SIZE_REQD,
  NBD_REP_ERR_TOO_BIG,
});
const COMMAND_NAMES = nameTable({
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_TRIM,
  NBD_CMD_CACHE,
  NBD_CMD_WRITE_ZEROES,
  NBD_CMD_BLOCK_STATUS,
});
const ERROR_NAMES = nameTable({
  NBD_EPERM,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_EOVERFLOW,
  NBD_ENOTSUP,
  NBD_ESHUTDOWN,
});
const COMMAND_FLAG_NAMES: [number, string][] = [
  [NBD_CMD_FLAG_FUA, 'FUA'],
  [NBD_CMD_FLAG_NO_HOLE, 'NO_HOLE'],
  [NBD_CMD_FLAG_DF, 'DF'],
  [NBD_CMD_FLAG_REQ_ONE, 'REQ_ONE'],
  [NBD_CMD_FLAG_FAST_ZERO, 'FAST_ZERO'],
];
const TRANSMISSION_FLAG_NAMES: [number, string][] = [
  [NBD_FLAG_HAS_FLAGS, 'HAS_FLAGS'],
  [NBD_FLAG_READ_ONLY, 'READ_ONLY'],
  [NBD_FLAG_SEND_FLUSH, 'SEND_FLUSH'],
  [NBD_FLAG_SEND_FUA, 'SEND_FUA'],
  [NBD_FLAG_ROTATIONAL, 'ROTATIONAL'],
  [NBD_FLAG_SEND_TRIM, 'SEND_TRIM'],
  [NBD_FLAG_SEND_WRITE_ZEROES, 'SEND_WRITE_ZEROES'],
  [NBD_FLAG_SEND_DF, 'SEND_DF'],
  [NBD_FLAG_CAN_MULTI_CONN, 'CAN_MULTI_CONN'],
  [NBD_FLAG_SEND_RESIZE, 'SEND_RESIZE'],
  [NBD_FLAG_SEND_CACHE, 'SEND_CACHE'],
  [NBD_FLAG_SEND_FAST_ZERO, 'SEND_FAST_ZERO'],
];

function unknown(kind: string, value: number): string {
  return `${kind}(${value >>> 0})`;
}

export function optionName(option: number): string {
  return OPTION_NAMES.get(option) ?? unknown('NBD_OPT', option);
}
export function replyName(reply: number): string {
  return REPLY_NAMES.get(reply) ?? unknown('NBD_REP', reply);
}
export function commandName(command: number): string {
  return COMMAND_NAMES.get(command) ?? unknown('NBD_CMD', command);
}
export function errorName(error: number): string {
  return error === 0 ? 'OK' : (ERROR_NAMES.get(error) ?? unknown('NBD_E', error));
}

function flagNames(table: [number, string][], flags: number): string {
  const names = table.filter(([bit]) => flags & bit).map(([, name]) => name);
  const rest = flags & ~table.reduce((all, [bit]) => all | bit, 0);
  if (rest) names.push(`0x${rest.toString(16)}`);
  return names.join('|') || '0';
}
export function commandFlagNames(flags: number): string {
  return flagNames(COMMAND_FLAG_NAMES, flags);
}
export function transmissionFlagNames(flags: number): string {
  return flagNames(TRANSMISSION_FLAG_NAMES, flags);
}

// --------------------------------------------------------- shared helpers

const TWO_32 = 4294967296;

/** A 64-bit big-endian unsigned integer as a double (exact below 2^53). */
export function readU64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * TWO_32 + buf.readUInt32BE(at + 4);
}

/** Write a non-negative safe integer as a 64-bit big-endian unsigned integer. */
export function writeU64(buf: Buffer, at: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_32), at);
  buf.writeUInt32BE(value % TWO_32, at + 4);
}

// ---------------------------------------------------------------- handshake

/** S: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
export const SERVER_GREETING_SIZE = 18;
export function encodeServerGreeting(handshakeFlags = SERVER_HANDSHAKE_FLAGS): Buffer {
  const buf = Buffer.alloc(SERVER_GREETING_SIZE);
  buf.writeBigUInt64BE(NBD_MAGIC, 0);
  buf.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
  buf.writeUInt16BE(handshakeFlags, 16);
  return buf;
}

/** C: 32-bit client flags. */
export const CLIENT_FLAGS_SIZE = 4;

/** C: IHAVEOPT, 32-bit option, 32-bit data length. */
export const OPTION_HEADER_SIZE = 16;
export interface OptionHeader {
  magicOk: boolean;
  option: number;
  length: number;
}
export function decodeOptionHeader(buf: Buffer, at = 0): OptionHeader {
  return {
    magicOk: buf.readBigUInt64BE(at) === NBD_OPTS_MAGIC,
    option: buf.readUInt32BE(at + 8),
    length: buf.readUInt32BE(at + 12),
  };
}

/** S: reply magic, option, reply type, 32-bit length, then the data. */
export const OPTION_REPLY_HEADER_SIZE = 20;
export function encodeOptionReply(option: number, reply: number, data: Buffer = EMPTY): Buffer {
  const buf = Buffer.allocUnsafe(OPTION_REPLY_HEADER_SIZE + data.length);
  buf.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  buf.writeUInt32BE(option >>> 0, 8);
  buf.writeUInt32BE(reply >>> 0, 12);
  buf.writeUInt32BE(data.length, 16);
  data.copy(buf, OPTION_REPLY_HEADER_SIZE);
  return buf;
}
const EMPTY = Buffer.alloc(0);

/** NBD_REP_SERVER data: 32-bit name length, name, then a human-readable description. */
export function encodeRepServer(name: string, description = ''): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const descBytes = Buffer.from(description, 'utf8');
  const buf = Buffer.allocUnsafe(4 + nameBytes.length + descBytes.length);
  buf.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buf, 4);
  descBytes.copy(buf, 4 + nameBytes.length);
  return buf;
}

/** NBD_REP_META_CONTEXT data: 32-bit context id, then the context name. */
export function encodeRepMetaContext(contextId: number, name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const buf = Buffer.allocUnsafe(4 + nameBytes.length);
  buf.writeUInt32BE(contextId, 0);
  nameBytes.copy(buf, 4);
  return buf;
}

/** NBD_REP_INFO data for NBD_INFO_EXPORT: type, 64-bit size, 16-bit transmission flags (12 bytes). */
export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const buf = Buffer.allocUnsafe(12);
  buf.writeUInt16BE(NBD_INFO_EXPORT, 0);
  writeU64(buf, 2, size);
  buf.writeUInt16BE(transmissionFlags, 10);
  return buf;
}

/** NBD_REP_INFO data for NBD_INFO_NAME or NBD_INFO_DESCRIPTION: type, then the string. */
export function encodeInfoString(
  infoType: typeof NBD_INFO_NAME | typeof NBD_INFO_DESCRIPTION,
  text: string,
): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const buf = Buffer.allocUnsafe(2 + bytes.length);
  buf.writeUInt16BE(infoType, 0);
  bytes.copy(buf, 2);
  return buf;
}

/** NBD_REP_INFO data for NBD_INFO_BLOCK_SIZE: type, minimum, preferred, maximum payload (14 bytes). */
export function encodeInfoBlockSize(
  minimum: number,
  preferred: number,
  maximumPayload: number,
): Buffer {
  const buf = Buffer.allocUnsafe(14);
  buf.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  buf.writeUInt32BE(minimum, 2);
  buf.writeUInt32BE(preferred, 6);
  buf.writeUInt32BE(maximumPayload, 10);
  return buf;
}

/**
 * The reply that ends NBD_OPT_EXPORT_NAME: 64-bit size, 16-bit transmission
 * flags, and 124 zero bytes unless the client negotiated NBD_FLAG_C_NO_ZEROES.
 */
export function encodeExportNameReply(
  size: number,
  transmissionFlags: number,
  noZeroes: boolean,
): Buffer {
  const buf = Buffer.alloc(noZeroes ? 10 : 134);
  writeU64(buf, 0, size);
  buf.writeUInt16BE(transmissionFlags, 8);
  return buf;
}

// ------------------------------------------------------------- transmission

/**
 * C: request header, 28 bytes:
 *   0 magic u32 | 4 flags u16 | 6 type u16 | 8 cookie u64 | 16 offset u64 | 24 length u32
 * Read the fields straight from the receive buffer with these accessors.
 */
export const REQUEST_HEADER_SIZE = 28;
export const requestMagic = (buf: Buffer, at: number): number => buf.readUInt32BE(at);
export const requestFlags = (buf: Buffer, at: number): number => buf.readUInt16BE(at + 4);
export const requestType = (buf: Buffer, at: number): number => buf.readUInt16BE(at + 6);
export const requestCookieHigh = (buf: Buffer, at: number): number => buf.readUInt32BE(at + 8);
export const requestCookieLow = (buf: Buffer, at: number): number => buf.readUInt32BE(at + 12);
export const requestOffset = (buf: Buffer, at: number): number => readU64(buf, at + 16);
export const requestLength = (buf: Buffer, at: number): number => buf.readUInt32BE(at + 24);

/** Encode a request header (used by tests and hostile-client tools; the server only decodes). */
export function encodeRequest(
  buf: Buffer,
  at: number,
  flags: number,
  type: number,
  cookieHigh: number,
  cookieLow: number,
  offset: number,
  length: number,
): void {
  buf.writeUInt32BE(NBD_REQUEST_MAGIC, at);
  buf.writeUInt16BE(flags, at + 4);
  buf.writeUInt16BE(type, at + 6);
  buf.writeUInt32BE(cookieHigh >>> 0, at + 8);
  buf.writeUInt32BE(cookieLow >>> 0, at + 12);
  writeU64(buf, at + 16, offset);
  buf.writeUInt32BE(length >>> 0, at + 24);
}

/** S: simple reply, 16 bytes: magic, error, cookie. A READ's data follows it. */
export const SIMPLE_REPLY_SIZE = 16;
export function encodeSimpleReply(
  buf: Buffer,
  at: number,
  error: number,
  cookieHigh: number,
  cookieLow: number,
): void {
  buf.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, at);
  buf.writeUInt32BE(error, at + 4);
  buf.writeUInt32BE(cookieHigh, at + 8);
  buf.writeUInt32BE(cookieLow, at + 12);
}

/** S: structured reply chunk header, 20 bytes: magic, flags, type, cookie, payload length. */
export const STRUCTURED_REPLY_HEADER_SIZE = 20;
export function encodeStructuredReplyHeader(
  buf: Buffer,
  at: number,
  flags: number,
  type: number,
  cookieHigh: number,
  cookieLow: number,
  length: number,
): void {
  buf.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, at);
  buf.writeUInt16BE(flags, at + 4);
  buf.writeUInt16BE(type, at + 6);
  buf.writeUInt32BE(cookieHigh, at + 8);
  buf.writeUInt32BE(cookieLow, at + 12);
  buf.writeUInt32BE(length, at + 16);
}

/**
 * Where a READ's data starts inside a one-allocation reply buffer: after the
 * simple reply header, or after the structured chunk header plus its 64-bit
 * offset field.
 */
export const SIMPLE_READ_DATA_AT = SIMPLE_REPLY_SIZE;
export const STRUCTURED_READ_DATA_AT = STRUCTURED_REPLY_HEADER_SIZE + 8;

/** Fill the header of an NBD_REPLY_TYPE_OFFSET_DATA chunk whose dataLength bytes follow at STRUCTURED_READ_DATA_AT. */
export function encodeOffsetDataHeader(
  buf: Buffer,
  at: number,
  flags: number,
  cookieHigh: number,
  cookieLow: number,
  offset: number,
  dataLength: number,
): void {
  encodeStructuredReplyHeader(
    buf,
    at,
    flags,
    NBD_REPLY_TYPE_OFFSET_DATA,
    cookieHigh,
    cookieLow,
    8 + dataLength,
  );
  writeU64(buf, at + STRUCTURED_REPLY_HEADER_SIZE, offset);
}

/**
 * The header of a successful READ reply whose `length` data bytes follow at
 * readDataAt(structured): a simple reply, or one OFFSET_DATA chunk flagged DONE.
 */
export function encodeReadReplyHeader(
  buf: Buffer,
  structured: boolean,
  cookieHigh: number,
  cookieLow: number,
  offset: number,
  length: number,
): void {
  if (structured)
    encodeOffsetDataHeader(buf, 0, NBD_REPLY_FLAG_DONE, cookieHigh, cookieLow, offset, length);
  else encodeSimpleReply(buf, 0, 0, cookieHigh, cookieLow);
}

/** Longest error message we put in an error chunk (the spec's string limit is 4096 bytes). */
export const MAX_ERROR_MESSAGE_BYTES = 1024;

/**
 * A complete error chunk: NBD_REPLY_TYPE_ERROR, or NBD_REPLY_TYPE_ERROR_OFFSET
 * when offset is given. Payload: error u32, message length u16, message,
 * [offset u64].
 */
export function encodeErrorChunk(
  flags: number,
  cookieHigh: number,
  cookieLow: number,
  error: number,
  message: string,
  offset?: number,
): Buffer {
  const text = utf8Prefix(message, MAX_ERROR_MESSAGE_BYTES);
  const payload = 6 + text.length + (offset === undefined ? 0 : 8);
  const buf = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + payload);
  const type = offset === undefined ? NBD_REPLY_TYPE_ERROR : NBD_REPLY_TYPE_ERROR_OFFSET;
  encodeStructuredReplyHeader(buf, 0, flags, type, cookieHigh, cookieLow, payload);
  buf.writeUInt32BE(error, STRUCTURED_REPLY_HEADER_SIZE);
  buf.writeUInt16BE(text.length, STRUCTURED_REPLY_HEADER_SIZE + 4);
  text.copy(buf, STRUCTURED_REPLY_HEADER_SIZE + 6);
  if (offset !== undefined) writeU64(buf, STRUCTURED_REPLY_HEADER_SIZE + 6 + text.length, offset);
  return buf;
}

/**
 * A complete NBD_REPLY_TYPE_BLOCK_STATUS chunk: context id, then one
 * (length u32, flags u32) descriptor per extent.
 */
export function encodeBlockStatusChunk(
  flags: number,
  cookieHigh: number,
  cookieLow: number,
  contextId: number,
  extents: readonly { length: number; flags: number }[],
): Buffer {
  const payload = 4 + 8 * extents.length;
  const buf = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_SIZE + payload);
  encodeStructuredReplyHeader(
    buf,
    0,
    flags,
    NBD_REPLY_TYPE_BLOCK_STATUS,
    cookieHigh,
    cookieLow,
    payload,
  );
  buf.writeUInt32BE(contextId, STRUCTURED_REPLY_HEADER_SIZE);
  let at = STRUCTURED_REPLY_HEADER_SIZE + 4;
  for (const extent of extents) {
    buf.writeUInt32BE(extent.length, at);
    buf.writeUInt32BE(extent.flags, at + 4);
    at += 8;
  }
  return buf;
}

/**
 * A violation that leaves the byte stream unusable (bad magic, truncated
 * header, a length we will not read past, unknown client flags): the one
 * connection is closed; nothing else is affected.
 */
export class NbdFramingError extends Error {
  override name = 'NbdFramingError';
}

/** The flags each command may carry (the spec's per-command flags); a command not listed is unknown. */
export const COMMAND_FLAGS_ALLOWED: Record<number, number> = {
  [NBD_CMD_READ]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF,
  [NBD_CMD_WRITE]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_FLUSH]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_TRIM]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_CACHE]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_WRITE_ZEROES]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
  [NBD_CMD_BLOCK_STATUS]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE,
};

/** A command's NBD_CMD_* name for metrics; unknown ones collapse to NBD_CMD_UNKNOWN so label sets stay bounded. */
export function commandLabel(type: number): string {
  return type in COMMAND_FLAGS_ALLOWED ? commandName(type) : 'NBD_CMD_UNKNOWN';
}
