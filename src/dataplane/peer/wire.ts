/**
 * TBP, the Torus block protocol: how storage nodes move blocks between each
 * other. Every constant, limit, name table and codec of the framed protocol
 * lives here; nothing here touches a socket.
 *
 * A frame is a fixed 16-byte header and a payload of at most
 * MAX_PAYLOAD_BYTES. Requests and replies share the header; a reply echoes
 * the request's opcode and id, sets FLAG_REPLY and carries a status. Replies
 * may come back in any order (the id pairs them), so one connection carries
 * many requests at once.
 *
 * All integers are big-endian. Block indexes are 64-bit on the wire but must
 * stay below 2^53 (the in-memory BlockRef is a double); a larger one is a bad
 * request, never a silently rounded ref. Hashes are xxh64 as a u64 (high half
 * first), carried as the two u32 halves the rest of the code uses.
 *
 * Hot-path encoders write into a buffer the caller owns (a GET is 32 bytes in
 * the client's outbound slab, a reply head 16 or 76); block data is never
 * copied by an encoder: encodePutBlocksFrame returns the frame as a list of
 * chunks in which each block's bytes are the caller's own buffer.
 *
 * Decoders validate everything they read and throw TbpPayloadError (a bad
 * request: answered with BAD_REQUEST, the connection goes on); a header that
 * makes the stream unreadable is a framing error (checkFrameHeader returns the
 * reason; the connection is closed). Decoded blocks are views into the
 * payload, never copies.
 */
import { ChecksumError, IoError, NotFoundError, StoreFullError } from '../../common/errors.js';
import { RECORD_MAP_PAGE, RECORD_SEALED, NONCE_SIZE, TAG_SIZE, hi32, join64, lo32 } from '../blocks/record.js';
import { MAP_PAGE_BIT, type BlockRef } from '../blocks/ref.js';
import { utf8Prefix } from '../transport/utf8-prefix.js';

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

export function encodeHeader(buf: Buffer, at: number, opcode: number, flags: number, status: number, requestId: number, payloadLength: number): void {
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

const OP_NAMES = nameTable({ OP_HELLO, OP_PUT_BLOCKS, OP_GET_BLOCK, OP_HAS_BLOCKS, OP_DELETE_BLOCKS, OP_PING, OP_SYNC });
const STATUS_NAMES = nameTable({
  STATUS_OK, STATUS_NOT_FOUND, STATUS_CHECKSUM, STATUS_NO_SPACE, STATUS_BAD_REQUEST, STATUS_INTERNAL,
  STATUS_WRONG_CLUSTER, STATUS_SHUTTING_DOWN,
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
export function checkFrameHeader(buf: Buffer, at: number, expectReply: boolean): string | undefined {
  const magic = headerMagic(buf, at);
  if (magic !== TBP_MAGIC) return `bad magic 0x${magic.toString(16).padStart(8, '0')}`;
  const version = headerVersion(buf, at);
  if (version !== TBP_VERSION) return `unsupported version ${version}`;
  const length = headerPayloadLength(buf, at);
  if (length > MAX_PAYLOAD_BYTES) return `payload of ${length} bytes exceeds the ${MAX_PAYLOAD_BYTES}-byte limit`;
  const isReply = (headerFlags(buf, at) & FLAG_REPLY) !== 0;
  if (isReply !== expectReply) return expectReply ? 'a request where a reply was expected' : 'a reply where a request was expected';
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
  if (err instanceof IoError) {
    if (err.errno === 'ENOSPC') return STATUS_NO_SPACE;
    if (err.errno === 'EINVAL') return STATUS_BAD_REQUEST;
    if (err.errno === 'ESHUTDOWN') return STATUS_SHUTTING_DOWN;
  }
  if ((err as NodeJS.ErrnoException | undefined)?.code === 'ENOSPC') return STATUS_NO_SPACE;
  return STATUS_INTERNAL;
}

// -------------------------------------------------------------------- refs

/** volumeId u32 | generation u32 | index u64 */
export const REF_SIZE = 16;
/** Index high half must be below this, so the index stays below 2^53. */
const INDEX_HI_LIMIT = 1 << 21;
const U32_MAX = 0xffffffff;

function isU32(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= U32_MAX;
}

/** Throws RangeError for a ref no node could hold (a programmer error, not a peer's). */
export function assertRef(ref: BlockRef): void {
  if (!isU32(ref.volumeId) || !isU32(ref.generation) || !Number.isSafeInteger(ref.index) || ref.index < 0) {
    throw new RangeError(`invalid block ref ${ref.volumeId}/${ref.generation}/${ref.index}`);
  }
}

export function encodeRef(buf: Buffer, at: number, ref: BlockRef): void {
  assertRef(ref);
  buf.writeUInt32BE(ref.volumeId, at);
  buf.writeUInt32BE(ref.generation, at + 4);
  buf.writeUInt32BE(hi32(ref.index), at + 8);
  buf.writeUInt32BE(lo32(ref.index), at + 12);
}

export function decodeRef(buf: Buffer, at: number): BlockRef {
  const hi = buf.readUInt32BE(at + 8);
  if (hi >= INDEX_HI_LIMIT) throw new TbpPayloadError(`block index 0x${hi.toString(16)}${buf.readUInt32BE(at + 12).toString(16).padStart(8, '0')} is not below 2^53`);
  return { volumeId: buf.readUInt32BE(at), generation: buf.readUInt32BE(at + 4), index: join64(buf.readUInt32BE(at + 12), hi) };
}

// ------------------------------------------------------------------ blocks

/**
 * A block as it travels and is stored: its identity, how to check it, how to
 * open it, and its bytes exactly as stored (ciphertext when sealed). On the
 * server the Uint8Array fields are views into the received frame.
 */
export interface WireBlock {
  ref: BlockRef;
  /** RECORD_SEALED, RECORD_MAP_PAGE (blocks/record.ts); RECORD_MAP_PAGE exactly when ref.index ≥ MAP_PAGE_BIT. */
  flags: number;
  /** xxh64 of `data`, low and high u32 halves (as blocks/hash.ts returns them). */
  hashLo: number;
  hashHi: number;
  /** AEAD nonce, NONCE_SIZE (12) bytes; zeros when not sealed. */
  nonce: Uint8Array;
  /** AEAD tag, TAG_SIZE (16) bytes; zeros when not sealed. */
  tag: Uint8Array;
  /** The stored bytes; never empty. */
  data: Uint8Array;
}

export const BLOCK_FLAGS_KNOWN = RECORD_SEALED | RECORD_MAP_PAGE;

/**
 * A block's descriptor, 60 bytes, followed by its data:
 *   0 ref (16) | 16 flags u32 | 20 hash u64 | 28 nonce (12) | 40 tag (16) | 56 data length u32
 */
export const BLOCK_DESCRIPTOR_SIZE = 60;
const DESC_FLAGS = 16;
const DESC_HASH = 20;
const DESC_NONCE = 28;
const DESC_TAG = 40;
const DESC_LENGTH = 56;

/** Throws RangeError for a block we must not send (programmer error). */
function assertBlock(block: WireBlock): void {
  assertRef(block.ref);
  if (block.nonce.length !== NONCE_SIZE || block.tag.length !== TAG_SIZE) throw new RangeError(`block nonce/tag must be ${NONCE_SIZE}/${TAG_SIZE} bytes`);
  if (block.data.length === 0) throw new RangeError('empty block');
  const problem = blockFlagsProblem(block.flags, block.ref.index);
  if (problem) throw new RangeError(problem);
}

function blockFlagsProblem(flags: number, index: number): string | undefined {
  if (flags & ~BLOCK_FLAGS_KNOWN) return `unknown block flags 0x${(flags & ~BLOCK_FLAGS_KNOWN).toString(16)}`;
  if (((flags & RECORD_MAP_PAGE) !== 0) !== index >= MAP_PAGE_BIT) {
    return flags & RECORD_MAP_PAGE ? `map-page flag on data index ${index}` : `map-page index ${index} without the map-page flag`;
  }
  return undefined;
}

/** Write the descriptor of `block` (its data is not written: it follows, as the caller's own buffer). */
export function encodeBlockDescriptor(buf: Buffer, at: number, block: WireBlock): void {
  assertBlock(block);
  encodeRef(buf, at, block.ref);
  buf.writeUInt32BE(block.flags, at + DESC_FLAGS);
  buf.writeUInt32BE(block.hashHi >>> 0, at + DESC_HASH);
  buf.writeUInt32BE(block.hashLo >>> 0, at + DESC_HASH + 4);
  buf.set(block.nonce, at + DESC_NONCE);
  buf.set(block.tag, at + DESC_TAG);
  buf.writeUInt32BE(block.data.length, at + DESC_LENGTH);
}

/** Decode the block at `at` (descriptor and data), which must end by `end`. The result's bytes are views into buf. */
export function decodeBlock(buf: Buffer, at: number, end: number): WireBlock {
  if (end - at < BLOCK_DESCRIPTOR_SIZE) throw new TbpPayloadError(`block descriptor cut short (${end - at} of ${BLOCK_DESCRIPTOR_SIZE} bytes)`);
  const ref = decodeRef(buf, at);
  const flags = buf.readUInt32BE(at + DESC_FLAGS);
  const problem = blockFlagsProblem(flags, ref.index);
  if (problem) throw new TbpPayloadError(problem);
  const length = buf.readUInt32BE(at + DESC_LENGTH);
  if (length === 0) throw new TbpPayloadError('empty block');
  const dataAt = at + BLOCK_DESCRIPTOR_SIZE;
  if (length > end - dataAt) throw new TbpPayloadError(`block of ${length} bytes runs past the payload (${end - dataAt} left)`);
  return {
    ref,
    flags,
    hashHi: buf.readUInt32BE(at + DESC_HASH),
    hashLo: buf.readUInt32BE(at + DESC_HASH + 4),
    nonce: buf.subarray(at + DESC_NONCE, at + DESC_NONCE + NONCE_SIZE),
    tag: buf.subarray(at + DESC_TAG, at + DESC_TAG + TAG_SIZE),
    data: buf.subarray(dataAt, dataAt + length),
  };
}

// ------------------------------------------------------------ HELLO

export interface Hello {
  /** Every node of a cluster has the same; a peer with another is refused. */
  clusterId: string;
  /** The sender's node UUID (as in the ring). */
  nodeId: string;
}

function idBytes(what: string, id: string): Buffer {
  const bytes = Buffer.from(id, 'utf8');
  if (bytes.length === 0 || bytes.length > MAX_ID_BYTES) throw new RangeError(`${what} must be 1..${MAX_ID_BYTES} bytes of UTF-8, got ${bytes.length}`);
  return bytes;
}

/**
 * HELLO payload, both ways: cluster id length u8, cluster id, node id length
 * u8, node id (UTF-8, 1..255 bytes each).
 */
function encodeHelloFrame(flags: number, requestId: number, hello: Hello): Buffer {
  const cluster = idBytes('cluster id', hello.clusterId);
  const node = idBytes('node id', hello.nodeId);
  const payload = 2 + cluster.length + node.length;
  const buf = Buffer.allocUnsafe(HEADER_SIZE + payload);
  encodeHeader(buf, 0, OP_HELLO, flags, STATUS_OK, requestId, payload);
  buf[HEADER_SIZE] = cluster.length;
  cluster.copy(buf, HEADER_SIZE + 1);
  buf[HEADER_SIZE + 1 + cluster.length] = node.length;
  node.copy(buf, HEADER_SIZE + 2 + cluster.length);
  return buf;
}

export function encodeHello(requestId: number, hello: Hello): Buffer {
  return encodeHelloFrame(0, requestId, hello);
}

/** The server's OK answer to HELLO: its own cluster and node id. */
export function encodeHelloReply(requestId: number, hello: Hello): Buffer {
  return encodeHelloFrame(FLAG_REPLY, requestId, hello);
}

export function decodeHello(payload: Buffer): Hello {
  let at = 0;
  const text = (what: string): string => {
    if (at >= payload.length) throw new TbpPayloadError(`HELLO cut short before the ${what}`);
    const length = payload[at];
    if (length === 0) throw new TbpPayloadError(`HELLO with an empty ${what}`);
    if (at + 1 + length > payload.length) throw new TbpPayloadError(`HELLO ${what} runs past the payload`);
    const value = payload.toString('utf8', at + 1, at + 1 + length);
    at += 1 + length;
    return value;
  };
  const clusterId = text('cluster id');
  const nodeId = text('node id');
  if (at !== payload.length) throw new TbpPayloadError(`${payload.length - at} bytes after the HELLO fields`);
  return { clusterId, nodeId };
}

// --------------------------------------------------------------- PUT_BLOCKS

/** Payload bytes of a PUT_BLOCKS carrying these blocks: count u32, then descriptor + data per block. */
export function putBlocksPayloadLength(blocks: readonly WireBlock[]): number {
  let length = 4;
  for (const block of blocks) length += BLOCK_DESCRIPTOR_SIZE + block.data.length;
  return length;
}

/**
 * Throws RangeError unless `blocks` can go in one PUT_BLOCKS (count, sizes,
 * every block well formed); returns the payload length. Check before
 * encoding anything, so a bad block never leaves half a frame behind.
 */
export function checkPutBatch(blocks: readonly WireBlock[]): number {
  if (blocks.length === 0 || blocks.length > MAX_BATCH_BLOCKS) throw new RangeError(`PUT_BLOCKS of ${blocks.length} blocks (1..${MAX_BATCH_BLOCKS})`);
  for (const block of blocks) assertBlock(block);
  const payload = putBlocksPayloadLength(blocks);
  if (payload > MAX_PAYLOAD_BYTES) throw new RangeError(`PUT_BLOCKS payload of ${payload} bytes exceeds ${MAX_PAYLOAD_BYTES}`);
  return payload;
}

/** Header and block count of a PUT_BLOCKS frame (20 bytes); descriptor and data of each block follow. */
export const PUT_BLOCKS_HEAD_SIZE = HEADER_SIZE + 4;
export function encodePutBlocksHead(buf: Buffer, at: number, requestId: number, count: number, payloadLength: number): void {
  encodeHeader(buf, at, OP_PUT_BLOCKS, 0, STATUS_OK, requestId, payloadLength);
  buf.writeUInt32BE(count, at + HEADER_SIZE);
}

/**
 * A whole PUT_BLOCKS frame as chunks to write in order: one allocation holds
 * the header, the count and every descriptor; each block's data is its own
 * buffer, not copied. Throws RangeError over the batch limits (the caller
 * splits batches; see putBlocksPayloadLength).
 */
export function encodePutBlocksFrame(requestId: number, blocks: readonly WireBlock[]): Uint8Array[] {
  const payload = checkPutBatch(blocks);
  const head = Buffer.allocUnsafe(PUT_BLOCKS_HEAD_SIZE + blocks.length * BLOCK_DESCRIPTOR_SIZE);
  encodePutBlocksHead(head, 0, requestId, blocks.length, payload);
  const chunks: Uint8Array[] = [];
  let start = 0;
  let at = PUT_BLOCKS_HEAD_SIZE;
  for (const block of blocks) {
    encodeBlockDescriptor(head, at, block);
    at += BLOCK_DESCRIPTOR_SIZE;
    chunks.push(head.subarray(start, at), block.data);
    start = at;
  }
  return chunks;
}

/** The blocks of a PUT_BLOCKS payload, as views into it. */
export function decodePutBlocks(payload: Buffer): WireBlock[] {
  if (payload.length < 4) throw new TbpPayloadError('PUT_BLOCKS without a block count');
  const count = payload.readUInt32BE(0);
  if (count === 0 || count > MAX_BATCH_BLOCKS) throw new TbpPayloadError(`PUT_BLOCKS of ${count} blocks (1..${MAX_BATCH_BLOCKS})`);
  // Cheapest possible block is a descriptor and one byte: refuse a count the payload cannot hold before building anything.
  if (count * (BLOCK_DESCRIPTOR_SIZE + 1) > payload.length - 4) throw new TbpPayloadError(`PUT_BLOCKS of ${count} blocks in ${payload.length} bytes`);
  const blocks: WireBlock[] = new Array(count);
  let at = 4;
  for (let i = 0; i < count; i++) {
    const block = decodeBlock(payload, at, payload.length);
    blocks[i] = block;
    at += BLOCK_DESCRIPTOR_SIZE + block.data.length;
  }
  if (at !== payload.length) throw new TbpPayloadError(`${payload.length - at} bytes after the last block`);
  return blocks;
}

// ---------------------------------------------------------------- GET_BLOCK

export const GET_BLOCK_FRAME_SIZE = HEADER_SIZE + REF_SIZE;

/** A whole GET_BLOCK frame (32 bytes) into a buffer the caller owns. */
export function encodeGetBlock(buf: Buffer, at: number, requestId: number, ref: BlockRef): void {
  encodeHeader(buf, at, OP_GET_BLOCK, 0, STATUS_OK, requestId, REF_SIZE);
  encodeRef(buf, at + HEADER_SIZE, ref);
}

export function decodeGetBlock(payload: Buffer): BlockRef {
  if (payload.length !== REF_SIZE) throw new TbpPayloadError(`GET_BLOCK payload of ${payload.length} bytes, expected ${REF_SIZE}`);
  return decodeRef(payload, 0);
}

/** Header and descriptor of a GET_BLOCK's OK reply; the block's data follows as its own buffer. */
export const BLOCK_REPLY_HEAD_SIZE = HEADER_SIZE + BLOCK_DESCRIPTOR_SIZE;
export function encodeBlockReplyHead(buf: Buffer, at: number, requestId: number, block: WireBlock): void {
  encodeHeader(buf, at, OP_GET_BLOCK, FLAG_REPLY, STATUS_OK, requestId, BLOCK_DESCRIPTOR_SIZE + block.data.length);
  encodeBlockDescriptor(buf, at + HEADER_SIZE, block);
}

/** The block of a GET_BLOCK OK reply payload (views into it). */
export function decodeBlockReply(payload: Buffer): WireBlock {
  const block = decodeBlock(payload, 0, payload.length);
  if (BLOCK_DESCRIPTOR_SIZE + block.data.length !== payload.length) throw new TbpPayloadError('bytes after the block');
  return block;
}

// ---------------------------------------------- HAS_BLOCKS, DELETE_BLOCKS

/** A HAS_BLOCKS or DELETE_BLOCKS frame: count u32, then the refs. */
export function encodeRefsFrame(opcode: typeof OP_HAS_BLOCKS | typeof OP_DELETE_BLOCKS, requestId: number, refs: readonly BlockRef[]): Buffer {
  if (refs.length === 0 || refs.length > MAX_BATCH_REFS) throw new RangeError(`${opName(opcode)} of ${refs.length} refs (1..${MAX_BATCH_REFS})`);
  const payload = 4 + refs.length * REF_SIZE;
  const buf = Buffer.allocUnsafe(HEADER_SIZE + payload);
  encodeHeader(buf, 0, opcode, 0, STATUS_OK, requestId, payload);
  buf.writeUInt32BE(refs.length, HEADER_SIZE);
  let at = HEADER_SIZE + 4;
  for (const ref of refs) {
    encodeRef(buf, at, ref);
    at += REF_SIZE;
  }
  return buf;
}

export function decodeRefs(payload: Buffer): BlockRef[] {
  if (payload.length < 4) throw new TbpPayloadError('ref list without a count');
  const count = payload.readUInt32BE(0);
  if (count === 0 || count > MAX_BATCH_REFS) throw new TbpPayloadError(`ref list of ${count} refs (1..${MAX_BATCH_REFS})`);
  if (payload.length !== 4 + count * REF_SIZE) throw new TbpPayloadError(`ref list of ${count} refs in ${payload.length} bytes, expected ${4 + count * REF_SIZE}`);
  const refs: BlockRef[] = new Array(count);
  for (let i = 0; i < count; i++) refs[i] = decodeRef(payload, 4 + i * REF_SIZE);
  return refs;
}

/**
 * HAS_BLOCKS OK reply: count u32, then ceil(count / 8) bytes; ref i is bit
 * (i & 7) of byte (i >> 3), least significant bit first. Unused bits are 0.
 */
export function encodeBitmapReply(requestId: number, bits: readonly boolean[]): Buffer {
  const payload = 4 + ((bits.length + 7) >> 3);
  const buf = Buffer.alloc(HEADER_SIZE + payload);
  encodeHeader(buf, 0, OP_HAS_BLOCKS, FLAG_REPLY, STATUS_OK, requestId, payload);
  buf.writeUInt32BE(bits.length, HEADER_SIZE);
  for (let i = 0; i < bits.length; i++) if (bits[i]) buf[HEADER_SIZE + 4 + (i >> 3)] |= 1 << (i & 7);
  return buf;
}

/** The bits of a HAS_BLOCKS reply, which must answer exactly `expected` refs. */
export function decodeBitmapReply(payload: Buffer, expected: number): boolean[] {
  if (payload.length < 4) throw new TbpPayloadError('bitmap without a count');
  const count = payload.readUInt32BE(0);
  if (count !== expected) throw new TbpPayloadError(`bitmap of ${count} bits for ${expected} refs`);
  if (payload.length !== 4 + ((count + 7) >> 3)) throw new TbpPayloadError(`bitmap of ${count} bits in ${payload.length} bytes`);
  const bits: boolean[] = new Array(count);
  for (let i = 0; i < count; i++) bits[i] = (payload[4 + (i >> 3)] & (1 << (i & 7))) !== 0;
  return bits;
}

/** DELETE_BLOCKS OK reply: deleted count u32. */
export const COUNT_REPLY_SIZE = HEADER_SIZE + 4;
export function encodeCountReply(buf: Buffer, at: number, requestId: number, count: number): void {
  encodeHeader(buf, at, OP_DELETE_BLOCKS, FLAG_REPLY, STATUS_OK, requestId, 4);
  buf.writeUInt32BE(count, at + HEADER_SIZE);
}

export function decodeCountReply(payload: Buffer): number {
  if (payload.length !== 4) throw new TbpPayloadError(`count reply of ${payload.length} bytes, expected 4`);
  return payload.readUInt32BE(0);
}

// --------------------------------------------------- PING, SYNC, empty

/** A frame with no payload: a PING or SYNC request, or the OK reply to PUT_BLOCKS, PING or SYNC. */
export function encodeEmptyFrame(buf: Buffer, at: number, opcode: number, flags: number, requestId: number): void {
  encodeHeader(buf, at, opcode, flags, STATUS_OK, requestId, 0);
}

// ---------------------------------------------------------- error replies

/** A reply with a non-OK status: the payload is a UTF-8 message of at most MAX_MESSAGE_BYTES. */
export function encodeErrorReply(opcode: number, requestId: number, status: number, message: string): Buffer {
  const text = utf8Prefix(message, MAX_MESSAGE_BYTES);
  const buf = Buffer.allocUnsafe(HEADER_SIZE + text.length);
  encodeHeader(buf, 0, opcode, FLAG_REPLY, status, requestId, text.length);
  text.copy(buf, HEADER_SIZE);
  return buf;
}

export function decodeErrorMessage(payload: Buffer): string {
  return payload.toString('utf8', 0, Math.min(payload.length, MAX_MESSAGE_BYTES));
}

// ----------------------------------------------- block listings (gRPC)

/**
 * One entry of a block listing (the gRPC ListBlocks stream), 32 bytes:
 *   0 ref (16) | 16 flags u32 | 20 hash u64 | 28 data length u32
 * Enough to compare two nodes' holdings without moving any data.
 */
export interface ListedBlock {
  ref: BlockRef;
  flags: number;
  hashLo: number;
  hashHi: number;
  length: number;
}
export const LISTED_BLOCK_SIZE = 32;
/** Entries in one streamed listing message: 256 KiB. */
export const MAX_LISTING_ENTRIES = 8192;

/** A listing message: count u32, then the entries. */
export function encodeListing(entries: readonly ListedBlock[]): Buffer {
  if (entries.length > MAX_LISTING_ENTRIES) throw new RangeError(`listing of ${entries.length} entries (max ${MAX_LISTING_ENTRIES})`);
  const buf = Buffer.allocUnsafe(4 + entries.length * LISTED_BLOCK_SIZE);
  buf.writeUInt32BE(entries.length, 0);
  let at = 4;
  for (const entry of entries) {
    encodeRef(buf, at, entry.ref);
    buf.writeUInt32BE(entry.flags, at + 16);
    buf.writeUInt32BE(entry.hashHi >>> 0, at + 20);
    buf.writeUInt32BE(entry.hashLo >>> 0, at + 24);
    buf.writeUInt32BE(entry.length, at + 28);
    at += LISTED_BLOCK_SIZE;
  }
  return buf;
}

export function decodeListing(buf: Buffer): ListedBlock[] {
  if (buf.length < 4) throw new TbpPayloadError('listing without a count');
  const count = buf.readUInt32BE(0);
  if (count > MAX_LISTING_ENTRIES) throw new TbpPayloadError(`listing of ${count} entries (max ${MAX_LISTING_ENTRIES})`);
  if (buf.length !== 4 + count * LISTED_BLOCK_SIZE) throw new TbpPayloadError(`listing of ${count} entries in ${buf.length} bytes`);
  const entries: ListedBlock[] = new Array(count);
  for (let i = 0, at = 4; i < count; i++, at += LISTED_BLOCK_SIZE) {
    entries[i] = {
      ref: decodeRef(buf, at),
      flags: buf.readUInt32BE(at + 16),
      hashHi: buf.readUInt32BE(at + 20),
      hashLo: buf.readUInt32BE(at + 24),
      length: buf.readUInt32BE(at + 28),
    };
  }
  return entries;
}

/** A ref list without a frame (gRPC HasBlocks/DeleteBlocks request): count u32, refs. */
export function encodeRefList(refs: readonly BlockRef[]): Buffer {
  const frame = encodeRefsFrame(OP_HAS_BLOCKS, 0, refs);
  return frame.subarray(HEADER_SIZE);
}

/** A bitmap without a frame (gRPC HasBlocks reply). */
export function encodeBitmap(bits: readonly boolean[]): Buffer {
  return encodeBitmapReply(0, bits).subarray(HEADER_SIZE);
}
