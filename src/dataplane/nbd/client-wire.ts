/**
 * The client's half of the NBD wire format: option requests it sends, and the
 * option replies, info payloads and transmission replies it decodes. The
 * constants and the request-header encoder are in `wire.ts`, shared with the
 * server; nothing here touches a socket (`../nbd-client/` does).
 *
 * Handshake encoders run a handful of times per connection and return a fresh
 * Buffer; the transmission decoders read fixed offsets of a buffer the caller
 * owns, so a reply costs no allocation.
 */
import {
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REP_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  OPTION_HEADER_SIZE,
  readU64,
} from './wire.js';

// ---------------------------------------------------------------- handshake

/** S: NBDMAGIC, IHAVEOPT, 16-bit handshake flags (18 bytes; SERVER_GREETING_SIZE). */
export function decodeServerGreeting(buf: Buffer): { magicOk: boolean; handshakeFlags: number } {
  return {
    magicOk: buf.readBigUInt64BE(0) === NBD_MAGIC && buf.readBigUInt64BE(8) === NBD_OPTS_MAGIC,
    handshakeFlags: buf.readUInt16BE(16),
  };
}

/** C: IHAVEOPT, option, data length, data. */
export function encodeOption(option: number, data: Buffer = EMPTY): Buffer {
  const buf = Buffer.allocUnsafe(OPTION_HEADER_SIZE + data.length);
  buf.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
  buf.writeUInt32BE(option >>> 0, 8);
  buf.writeUInt32BE(data.length, 12);
  data.copy(buf, OPTION_HEADER_SIZE);
  return buf;
}
const EMPTY = Buffer.alloc(0);

/** Data of NBD_OPT_GO / NBD_OPT_INFO: name length u32, name, request count u16, info types u16 each. */
export function encodeGoData(exportName: string, infoRequests: readonly number[]): Buffer {
  const name = Buffer.from(exportName, 'utf8');
  const buf = Buffer.allocUnsafe(4 + name.length + 2 + 2 * infoRequests.length);
  buf.writeUInt32BE(name.length, 0);
  name.copy(buf, 4);
  let at = 4 + name.length;
  buf.writeUInt16BE(infoRequests.length, at);
  for (const info of infoRequests) buf.writeUInt16BE(info, (at += 2));
  return buf;
}

/** Data of NBD_OPT_SET_META_CONTEXT / LIST_META_CONTEXT: name length u32, name, query count u32, (length u32, query) each. */
export function encodeMetaContextData(exportName: string, queries: readonly string[]): Buffer {
  const parts = [exportName, ...queries].map((text) => Buffer.from(text, 'utf8'));
  const buf = Buffer.allocUnsafe(4 + parts.reduce((sum, p) => sum + 4 + p.length, 0));
  let at = 0;
  const put = (part: Buffer) => {
    buf.writeUInt32BE(part.length, at);
    part.copy(buf, at + 4);
    at += 4 + part.length;
  };
  put(parts[0]);
  buf.writeUInt32BE(queries.length, at);
  at += 4;
  for (const part of parts.slice(1)) put(part);
  return buf;
}

/** S: reply magic, option, reply type, data length (20 bytes; OPTION_REPLY_HEADER_SIZE). */
export interface OptionReplyHeader {
  magicOk: boolean;
  option: number;
  reply: number;
  length: number;
}
export function decodeOptionReplyHeader(buf: Buffer, at = 0): OptionReplyHeader {
  return {
    magicOk: buf.readBigUInt64BE(at) === NBD_REP_MAGIC,
    option: buf.readUInt32BE(at + 8),
    reply: buf.readUInt32BE(at + 12),
    length: buf.readUInt32BE(at + 16),
  };
}

/** What an NBD_REP_INFO payload says, for the info types a client acts on; undefined for the others. */
export type InfoReply =
  | { type: typeof NBD_INFO_EXPORT; size: number; transmissionFlags: number }
  | {
      type: typeof NBD_INFO_BLOCK_SIZE;
      minimum: number;
      preferred: number;
      maximumPayload: number;
    };

/** Decode an NBD_REP_INFO payload; throws RangeError when it is shorter than its type needs. */
export function decodeInfoReply(data: Buffer): InfoReply | undefined {
  const type = data.readUInt16BE(0);
  if (type === NBD_INFO_EXPORT) {
    if (data.length < 12) throw new RangeError(`NBD_INFO_EXPORT of ${data.length} bytes`);
    return { type, size: readU64(data, 2), transmissionFlags: data.readUInt16BE(10) };
  }
  if (type === NBD_INFO_BLOCK_SIZE) {
    if (data.length < 14) throw new RangeError(`NBD_INFO_BLOCK_SIZE of ${data.length} bytes`);
    return {
      type,
      minimum: data.readUInt32BE(2),
      preferred: data.readUInt32BE(6),
      maximumPayload: data.readUInt32BE(10),
    };
  }
  return undefined;
}

/** NBD_REP_META_CONTEXT payload: context id u32, then its name. */
export function decodeRepMetaContext(data: Buffer): { contextId: number; name: string } {
  return { contextId: data.readUInt32BE(0), name: data.toString('utf8', 4) };
}

/** The end of NBD_OPT_EXPORT_NAME: size u64, transmission flags u16 (then 124 zeroes unless NO_ZEROES). */
export function decodeExportNameReply(buf: Buffer): { size: number; transmissionFlags: number } {
  return { size: readU64(buf, 0), transmissionFlags: buf.readUInt16BE(8) };
}

// ------------------------------------------------------------- transmission

/**
 * Both reply kinds start with a 32-bit magic; it says how long the header is:
 * simple (16 bytes: magic, error, cookie) or structured (20 bytes: magic,
 * flags u16, type u16, cookie, payload length u32). 0 for anything else.
 */
export function replyHeaderSize(magic: number): number {
  if (magic === NBD_SIMPLE_REPLY_MAGIC) return 16;
  if (magic === NBD_STRUCTURED_REPLY_MAGIC) return 20;
  return 0;
}
export const replyMagic = (buf: Buffer, at: number): number => buf.readUInt32BE(at);
export const simpleReplyError = (buf: Buffer, at: number): number => buf.readUInt32BE(at + 4);
/** Both kinds carry the cookie at offset 8 as two 32-bit halves. */
export const replyCookieHigh = (buf: Buffer, at: number): number => buf.readUInt32BE(at + 8);
export const replyCookieLow = (buf: Buffer, at: number): number => buf.readUInt32BE(at + 12);
export const chunkFlags = (buf: Buffer, at: number): number => buf.readUInt16BE(at + 4);
export const chunkType = (buf: Buffer, at: number): number => buf.readUInt16BE(at + 6);
export const chunkLength = (buf: Buffer, at: number): number => buf.readUInt32BE(at + 16);

/** Error chunks (NBD_REPLY_TYPE_ERROR*) have bit 15 of the type set, known type or not. */
export function isErrorChunkType(type: number): boolean {
  return (type & 0x8000) !== 0;
}

/**
 * The payload of an error chunk: error u32, message length u16, message,
 * [offset u64 for NBD_REPLY_TYPE_ERROR_OFFSET]. A message running past the
 * payload is cut to it.
 */
export function decodeErrorChunk(payload: Buffer): { error: number; message: string } {
  const error = payload.readUInt32BE(0);
  const length = Math.min(payload.readUInt16BE(4), payload.length - 6);
  return { error, message: payload.toString('utf8', 6, 6 + length) };
}

/**
 * The descriptors of an NBD_REPLY_TYPE_BLOCK_STATUS payload (context id u32,
 * then length u32 + flags u32 per extent), one call per extent, no array
 * made. Returns the context id; a trailing partial descriptor is ignored.
 */
export function forEachBlockStatusExtent(
  payload: Buffer,
  length: number,
  onExtent: (extentLength: number, flags: number) => void,
): number {
  for (let at = 4; at + 8 <= length; at += 8)
    onExtent(payload.readUInt32BE(at), payload.readUInt32BE(at + 4));
  return payload.readUInt32BE(0);
}
