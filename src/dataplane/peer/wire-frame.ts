/**
 * The TBP frame header, opcodes, statuses, limits, name tables and the two tiers of protocol error.
 * Part of wire.ts (see there for the protocol's rules); import from wire.ts.
 */
import {
  ChecksumError,
  IoError,
  NotFoundError,
  StaleTokenError,
  StoreFullError,
} from '../../common/errors.js';

// ------------------------------------------------------------------ header

/** 'TBP!': an NBD client, an HTTP request or a TLS hello all fail this at byte 0. */
export const TBP_MAGIC = 0x54425021;
export const TBP_VERSION = 1;

/**
 * The frame header, 16 bytes:
 *   0 magic u32 | 4 version u8 | 5 opcode u8 | 6 flags u8 | 7 status u8 |
 *   8 request id u32 | 12 payload length u32
 */
export const HEADER_SIZE = 16;

/** Set on every reply; a request carrying it is a framing error (something is talking to itself). */
export const FLAG_REPLY = 0x01;
/** Flag bits a request may carry. None yet: any bit is answered with BAD_REQUEST. */
export const REQUEST_FLAGS_ALLOWED = 0;

export const headerMagic = (buf: Buffer, at: number): number => buf.readUInt32BE(at);
export const headerVersion = (buf: Buffer, at: number): number => buf[at + 4];
export const headerOpcode = (buf: Buffer, at: number): number => buf[at + 5];
export const headerFlags = (buf: Buffer, at: number): number => buf[at + 6];
export const headerStatus = (buf: Buffer, at: number): number => buf[at + 7];
export const headerRequestId = (buf: Buffer, at: number): number => buf.readUInt32BE(at + 8);
export const headerPayloadLength = (buf: Buffer, at: number): number => buf.readUInt32BE(at + 12);

export function encodeHeader(
  buf: Buffer,
  at: number,
  opcode: number,
  flags: number,
  status: number,
  requestId: number,
  payloadLength: number,
): void {
  buf.writeUInt32BE(TBP_MAGIC, at);
  buf[at + 4] = TBP_VERSION;
  buf[at + 5] = opcode;
  buf[at + 6] = flags;
  buf[at + 7] = status;
  buf.writeUInt32BE(requestId >>> 0, at + 8);
  buf.writeUInt32BE(payloadLength, at + 12);
}

// ----------------------------------------------------------------- opcodes

/** First frame of a connection, both ways: cluster id and node id. Nothing else is served before it. */
export const OP_HELLO = 1;
/** A batch of blocks to store. Reply: empty. */
export const OP_PUT_BLOCKS = 2;
/** One ref. Reply: the block, or NOT_FOUND. */
export const OP_GET_BLOCK = 3;
/** A batch of refs. Reply: one bit per ref. */
export const OP_HAS_BLOCKS = 4;
/** A batch of refs (GC, rebalance). Reply: how many were there and are now gone. */
export const OP_DELETE_BLOCKS = 5;
/** Empty both ways: a liveness probe the server answers without touching storage. */
export const OP_PING = 6;
/**
 * Empty both ways: answered OK once every block the node had stored when the
 * request arrived — put through any connection — is durable (on disk, the
 * store's fdatasync). A put is covered when its OK reply came before the SYNC
 * was sent; puts still in flight alongside it may or may not be.
 */
export const OP_SYNC = 7;
/**
 * Part of a block and its sub-sums entry (wire-ranges.ts). Added after the
 * others without a new header version: a node that predates it answers
 * BAD_REQUEST (unknown opcode) and the client asks it for whole blocks.
 */
export const OP_GET_RANGE = 8;
/**
 * The replicated intent log (wire-intents.ts): append a flush's records to a
 * holder, seal a volume's log at a holder and read it back, drop what a
 * commit holds. Added like GET_RANGE: a node without them answers
 * BAD_REQUEST, and the writer commits a version per FLUSH instead.
 */
export const OP_INTENT_APPEND = 9;
export const OP_INTENT_SEAL = 10;
export const OP_INTENT_COVERED = 11;
/**
 * volumeId u32; reply empty: commit what the volume's writer here has
 * FLUSHed, then answer (a node about to serve the volume read-only asks its
 * writer, so it sees every acknowledged FLUSH). Not written here: OK at once.
 */
export const OP_COMMIT_VOLUME = 12;
/**
 * Blocks as patches over bases the receiver holds (wire-patches.ts). Added
 * like GET_RANGE: a node without it answers BAD_REQUEST, and the writer
 * sends those blocks whole.
 */
export const OP_PUT_PATCHES = 13;

// ---------------------------------------------------------------- statuses

export const STATUS_OK = 0;
export const STATUS_NOT_FOUND = 1;
/** A block's bytes do not match its xxh64: nothing of it was stored. */
export const STATUS_CHECKSUM = 2;
export const STATUS_NO_SPACE = 3;
/** The frame was intact but its content was not acceptable; the connection goes on. */
export const STATUS_BAD_REQUEST = 4;
export const STATUS_INTERNAL = 5;
/** HELLO from a node of another cluster; the server closes the connection after this reply. */
export const STATUS_WRONG_CLUSTER = 6;
/** The server is closing: nothing new is started. Retry elsewhere or later. */
export const STATUS_SHUTTING_DOWN = 7;
/** An intent append under a lock epoch below the volume's seal: a newer writer has taken over. */
export const STATUS_FENCED = 8;

// ------------------------------------------------------------------ limits

/** Largest payload of one frame, checked from the header before anything is buffered for it. */
export const MAX_PAYLOAD_BYTES = 16 * 1024 * 1024;
/** Blocks in one PUT_BLOCKS (and their bytes must also fit MAX_PAYLOAD_BYTES). */
export const MAX_BATCH_BLOCKS = 1024;
/** Refs in one HAS_BLOCKS or DELETE_BLOCKS: 128 KiB of refs. */
export const MAX_BATCH_REFS = 8192;
/** Cluster and node ids in HELLO: one length byte each. */
export const MAX_ID_BYTES = 255;
/** Longest error message carried in a reply. */
export const MAX_MESSAGE_BYTES = 1024;

// ------------------------------------------------------------- name tables

function nameTable(entries: Record<string, number>): Map<number, string> {
  return new Map(Object.entries(entries).map(([name, value]) => [value, name]));
}

const OP_NAMES = nameTable({
  OP_HELLO,
  OP_PUT_BLOCKS,
  OP_GET_BLOCK,
  OP_HAS_BLOCKS,
  OP_DELETE_BLOCKS,
  OP_PING,
  OP_SYNC,
  OP_GET_RANGE,
  OP_INTENT_APPEND,
  OP_INTENT_SEAL,
  OP_INTENT_COVERED,
  OP_COMMIT_VOLUME,
  OP_PUT_PATCHES,
});
const STATUS_NAMES = nameTable({
  STATUS_OK,
  STATUS_NOT_FOUND,
  STATUS_CHECKSUM,
  STATUS_NO_SPACE,
  STATUS_BAD_REQUEST,
  STATUS_INTERNAL,
  STATUS_WRONG_CLUSTER,
  STATUS_SHUTTING_DOWN,
  STATUS_FENCED,
});

/** 'OP_GET_BLOCK', or 'OP(99)' for a value we do not know (so logs and metric labels stay readable). */
export function opName(opcode: number): string {
  return OP_NAMES.get(opcode) ?? `OP(${opcode})`;
}
export function statusName(status: number): string {
  return STATUS_NAMES.get(status) ?? `STATUS(${status})`;
}
export function isKnownOpcode(opcode: number): boolean {
  return OP_NAMES.has(opcode);
}

// ------------------------------------------------------------------ errors

/**
 * The byte stream can no longer be trusted (bad magic, unknown version, a
 * length over the limit, a frame cut short, a reply to nothing we could
 * parse): the one connection is closed; nothing else is affected.
 */
export class TbpFramingError extends Error {
  override name = 'TbpFramingError';
}

/**
 * A well-framed payload whose content is not acceptable (a count over the
 * limit, a length running past the payload, an unsafe index, unknown block
 * flags). The server answers BAD_REQUEST and goes on.
 */
export class TbpPayloadError extends Error {
  override name = 'TbpPayloadError';
}

/**
 * Why this header makes the stream unreadable, or undefined when it is fine.
 * Called on the 16 header bytes alone, before the payload is waited for or
 * any memory is set aside for it. expectReply: true on the client (every
 * frame must be a reply), false on the server (none may be).
 */
export function checkFrameHeader(
  buf: Buffer,
  at: number,
  expectReply: boolean,
): string | undefined {
  const magic = headerMagic(buf, at);
  if (magic !== TBP_MAGIC) return `bad magic 0x${magic.toString(16).padStart(8, '0')}`;
  const version = headerVersion(buf, at);
  if (version !== TBP_VERSION) return `unsupported version ${version}`;
  const length = headerPayloadLength(buf, at);
  if (length > MAX_PAYLOAD_BYTES)
    return `payload of ${length} bytes exceeds the ${MAX_PAYLOAD_BYTES}-byte limit`;
  const isReply = (headerFlags(buf, at) & FLAG_REPLY) !== 0;
  if (isReply !== expectReply)
    return expectReply
      ? 'a request where a reply was expected'
      : 'a reply where a request was expected';
  return undefined;
}

/**
 * The wire status for an error thrown by a backend; the only place the
 * server's typed errors meet the protocol's codes.
 */
export function statusOfError(err: unknown): number {
  if (err instanceof ChecksumError) return STATUS_CHECKSUM;
  if (err instanceof StoreFullError) return STATUS_NO_SPACE;
  if (err instanceof NotFoundError) return STATUS_NOT_FOUND;
  if (err instanceof TbpPayloadError) return STATUS_BAD_REQUEST;
  if (err instanceof StaleTokenError) return STATUS_FENCED;
  if (err instanceof IoError) {
    if (err.errno === 'ENOSPC') return STATUS_NO_SPACE;
    if (err.errno === 'EINVAL') return STATUS_BAD_REQUEST;
    if (err.errno === 'ESHUTDOWN') return STATUS_SHUTTING_DOWN;
  }
  if ((err as NodeJS.ErrnoException | undefined)?.code === 'ENOSPC') return STATUS_NO_SPACE;
  return STATUS_INTERNAL;
}
