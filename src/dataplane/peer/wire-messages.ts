/**
 * The TBP messages, one section per family: HELLO, PUT_BLOCKS, GET_BLOCK,
 * HAS_BLOCKS / DELETE_BLOCKS, the empty frames, error replies.
 * Part of wire.ts (see there for the protocol's rules); import from wire.ts.
 */
import type { BlockRef } from '../../model/block-ref.js';
import { utf8Prefix } from '../transport/utf8-prefix.js';
import {
  FLAG_REPLY,
  HEADER_SIZE,
  MAX_BATCH_BLOCKS,
  MAX_BATCH_REFS,
  MAX_ID_BYTES,
  MAX_MESSAGE_BYTES,
  MAX_PAYLOAD_BYTES,
  OP_DELETE_BLOCKS,
  OP_GET_BLOCK,
  OP_HAS_BLOCKS,
  OP_HELLO,
  OP_PUT_BLOCKS,
  STATUS_OK,
  TbpPayloadError,
  encodeHeader,
  opName,
} from './wire-frame.js';
import {
  BLOCK_DESCRIPTOR_SIZE,
  REF_SIZE,
  type WireBlock,
  assertBlock,
  decodeBlock,
  decodeRef,
  encodeBlockDescriptor,
  encodeRef,
} from './wire-blocks.js';

// ------------------------------------------------------------ HELLO

export interface Hello {
  /** Every node of a cluster has the same; a peer with another is refused. */
  clusterId: string;
  /** The sender's node UUID (as in the ring). */
  nodeId: string;
}

function idBytes(what: string, id: string): Buffer {
  const bytes = Buffer.from(id, 'utf8');
  if (bytes.length === 0 || bytes.length > MAX_ID_BYTES)
    throw new RangeError(`${what} must be 1..${MAX_ID_BYTES} bytes of UTF-8, got ${bytes.length}`);
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
    if (at + 1 + length > payload.length)
      throw new TbpPayloadError(`HELLO ${what} runs past the payload`);
    const value = payload.toString('utf8', at + 1, at + 1 + length);
    at += 1 + length;
    return value;
  };
  const clusterId = text('cluster id');
  const nodeId = text('node id');
  if (at !== payload.length)
    throw new TbpPayloadError(`${payload.length - at} bytes after the HELLO fields`);
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
  if (blocks.length === 0 || blocks.length > MAX_BATCH_BLOCKS)
    throw new RangeError(`PUT_BLOCKS of ${blocks.length} blocks (1..${MAX_BATCH_BLOCKS})`);
  for (const block of blocks) assertBlock(block);
  const payload = putBlocksPayloadLength(blocks);
  if (payload > MAX_PAYLOAD_BYTES)
    throw new RangeError(`PUT_BLOCKS payload of ${payload} bytes exceeds ${MAX_PAYLOAD_BYTES}`);
  return payload;
}

/** Header and block count of a PUT_BLOCKS frame (20 bytes); descriptor and data of each block follow. */
export const PUT_BLOCKS_HEAD_SIZE = HEADER_SIZE + 4;
export function encodePutBlocksHead(
  buf: Buffer,
  at: number,
  requestId: number,
  count: number,
  payloadLength: number,
): void {
  encodeHeader(buf, at, OP_PUT_BLOCKS, 0, STATUS_OK, requestId, payloadLength);
  buf.writeUInt32BE(count, at + HEADER_SIZE);
}

/**
 * A whole PUT_BLOCKS frame as chunks to write in order: one allocation holds
 * the header, the count and every descriptor; each block's data is its own
 * buffer, not copied. Throws RangeError over the batch limits (the caller
 * splits batches; see putBlocksPayloadLength).
 */
export function encodePutBlocksFrame(
  requestId: number,
  blocks: readonly WireBlock[],
): Uint8Array[] {
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
  if (count === 0 || count > MAX_BATCH_BLOCKS)
    throw new TbpPayloadError(`PUT_BLOCKS of ${count} blocks (1..${MAX_BATCH_BLOCKS})`);
  // Cheapest possible block is a descriptor and one byte: refuse a count the payload cannot hold before building anything.
  if (count * (BLOCK_DESCRIPTOR_SIZE + 1) > payload.length - 4)
    throw new TbpPayloadError(`PUT_BLOCKS of ${count} blocks in ${payload.length} bytes`);
  const blocks: WireBlock[] = new Array(count);
  let at = 4;
  for (let i = 0; i < count; i++) {
    const block = decodeBlock(payload, at, payload.length);
    blocks[i] = block;
    at += BLOCK_DESCRIPTOR_SIZE + block.data.length;
  }
  if (at !== payload.length)
    throw new TbpPayloadError(`${payload.length - at} bytes after the last block`);
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
  if (payload.length !== REF_SIZE)
    throw new TbpPayloadError(`GET_BLOCK payload of ${payload.length} bytes, expected ${REF_SIZE}`);
  return decodeRef(payload, 0);
}

/** Header and descriptor of a GET_BLOCK's OK reply; the block's data follows as its own buffer. */
export const BLOCK_REPLY_HEAD_SIZE = HEADER_SIZE + BLOCK_DESCRIPTOR_SIZE;
export function encodeBlockReplyHead(
  buf: Buffer,
  at: number,
  requestId: number,
  block: WireBlock,
): void {
  encodeHeader(
    buf,
    at,
    OP_GET_BLOCK,
    FLAG_REPLY,
    STATUS_OK,
    requestId,
    BLOCK_DESCRIPTOR_SIZE + block.data.length,
  );
  encodeBlockDescriptor(buf, at + HEADER_SIZE, block);
}

/** The block of a GET_BLOCK OK reply payload (views into it). */
export function decodeBlockReply(payload: Buffer): WireBlock {
  const block = decodeBlock(payload, 0, payload.length);
  if (BLOCK_DESCRIPTOR_SIZE + block.data.length !== payload.length)
    throw new TbpPayloadError('bytes after the block');
  return block;
}

// ---------------------------------------------- HAS_BLOCKS, DELETE_BLOCKS

/**
 * A HAS_BLOCKS or DELETE_BLOCKS frame: count u32, then the refs. A
 * HAS_BLOCKS may add each ref's copy hash after them (u32 hi, u32 lo each):
 * "held" then means a copy with that hash (a stale copy under the same ref
 * is not the one asked about). A node that predates it refuses the longer
 * payload (BAD_REQUEST); the asker then asks by ref alone.
 */
export function encodeRefsFrame(
  opcode: typeof OP_HAS_BLOCKS | typeof OP_DELETE_BLOCKS,
  requestId: number,
  refs: readonly BlockRef[],
  hashes?: Uint32Array,
): Buffer {
  if (refs.length === 0 || refs.length > MAX_BATCH_REFS)
    throw new RangeError(`${opName(opcode)} of ${refs.length} refs (1..${MAX_BATCH_REFS})`);
  if (hashes && (opcode !== OP_HAS_BLOCKS || hashes.length !== 2 * refs.length))
    throw new RangeError(`${opName(opcode)}: ${hashes.length / 2} hashes for ${refs.length} refs`);
  const payload = 4 + refs.length * REF_SIZE + (hashes ? refs.length * COPY_HASH_SIZE : 0);
  const buf = Buffer.allocUnsafe(HEADER_SIZE + payload);
  encodeHeader(buf, 0, opcode, 0, STATUS_OK, requestId, payload);
  buf.writeUInt32BE(refs.length, HEADER_SIZE);
  let at = HEADER_SIZE + 4;
  for (const ref of refs) {
    encodeRef(buf, at, ref);
    at += REF_SIZE;
  }
  if (hashes)
    for (let i = 0; i < refs.length; i++, at += COPY_HASH_SIZE) {
      buf.writeUInt32BE(hashes[2 * i + 1], at);
      buf.writeUInt32BE(hashes[2 * i], at + 4);
    }
  return buf;
}

/** Bytes of one copy hash in a HAS_BLOCKS request (hi, lo). */
export const COPY_HASH_SIZE = 8;

/** A HAS_BLOCKS request: its refs, and their copy hashes as [lo, hi] pairs when it carries them. */
export function decodeHasRequest(payload: Buffer): { refs: BlockRef[]; hashes?: Uint32Array } {
  const count = payload.length >= 4 ? payload.readUInt32BE(0) : 0;
  const plain = 4 + count * REF_SIZE;
  if (count === 0 || payload.length !== plain + count * COPY_HASH_SIZE)
    return { refs: decodeRefs(payload) };
  const refs = decodeRefs(payload.subarray(0, plain));
  const hashes = new Uint32Array(2 * count);
  for (let i = 0, at = plain; i < count; i++, at += COPY_HASH_SIZE) {
    hashes[2 * i + 1] = payload.readUInt32BE(at);
    hashes[2 * i] = payload.readUInt32BE(at + 4);
  }
  return { refs, hashes };
}

export function decodeRefs(payload: Buffer): BlockRef[] {
  if (payload.length < 4) throw new TbpPayloadError('ref list without a count');
  const count = payload.readUInt32BE(0);
  if (count === 0 || count > MAX_BATCH_REFS)
    throw new TbpPayloadError(`ref list of ${count} refs (1..${MAX_BATCH_REFS})`);
  if (payload.length !== 4 + count * REF_SIZE)
    throw new TbpPayloadError(
      `ref list of ${count} refs in ${payload.length} bytes, expected ${4 + count * REF_SIZE}`,
    );
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
  for (let i = 0; i < bits.length; i++)
    if (bits[i]) buf[HEADER_SIZE + 4 + (i >> 3)] |= 1 << (i & 7);
  return buf;
}

/** The bits of a HAS_BLOCKS reply, which must answer exactly `expected` refs. */
export function decodeBitmapReply(payload: Buffer, expected: number): boolean[] {
  if (payload.length < 4) throw new TbpPayloadError('bitmap without a count');
  const count = payload.readUInt32BE(0);
  if (count !== expected) throw new TbpPayloadError(`bitmap of ${count} bits for ${expected} refs`);
  if (payload.length !== 4 + ((count + 7) >> 3))
    throw new TbpPayloadError(`bitmap of ${count} bits in ${payload.length} bytes`);
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
  if (payload.length !== 4)
    throw new TbpPayloadError(`count reply of ${payload.length} bytes, expected 4`);
  return payload.readUInt32BE(0);
}

// --------------------------------------------------- PING, SYNC, empty

/** A frame with no payload: a PING or SYNC request, or the OK reply to PUT_BLOCKS, PING or SYNC. */
export function encodeEmptyFrame(
  buf: Buffer,
  at: number,
  opcode: number,
  flags: number,
  requestId: number,
): void {
  encodeHeader(buf, at, opcode, flags, STATUS_OK, requestId, 0);
}

// ---------------------------------------------------------- error replies

/** A reply with a non-OK status: the payload is a UTF-8 message of at most MAX_MESSAGE_BYTES. */
export function encodeErrorReply(
  opcode: number,
  requestId: number,
  status: number,
  message: string,
): Buffer {
  const text = utf8Prefix(message, MAX_MESSAGE_BYTES);
  const buf = Buffer.allocUnsafe(HEADER_SIZE + text.length);
  encodeHeader(buf, 0, opcode, FLAG_REPLY, status, requestId, text.length);
  text.copy(buf, HEADER_SIZE);
  return buf;
}

export function decodeErrorMessage(payload: Buffer): string {
  return payload.toString('utf8', 0, Math.min(payload.length, MAX_MESSAGE_BYTES));
}
