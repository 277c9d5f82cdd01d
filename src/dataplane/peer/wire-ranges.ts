/**
 * GET_RANGE: part of a block, with what the reader needs to check that part
 * alone — the block's sub-sums entry (blocks/sub-sums.ts: an xxh32 per 4 KiB
 * sub-block, bound to the block's xxh64). A 4 KiB cache miss served by a
 * replica moves 4 KiB and an 80-byte entry instead of 64 KiB.
 * Part of wire.ts (see there for the protocol's rules); import from wire.ts.
 *
 * Added to TBP version 1 as a new opcode (the header's version stays 1, so
 * old and new nodes still frame each other). A node from before it answers
 * the unknown opcode with BAD_REQUEST and goes on, as TBP 1 always has; the
 * client then asks that connection for whole blocks (GET_BLOCK) instead.
 *
 * Request payload, 24 bytes: ref (16) | offset u32 | length u32 — a byte
 * range of the block, both multiples of SUB_BLOCK_SIZE, length > 0. The
 * server refuses a range past its block size with BAD_REQUEST.
 *
 * OK reply payload:
 *   0      offset u32       where in the block the data starts
 *   4      entry length u32 0, or the block's sub-sums entry size (16 + 4 n)
 *   8      entry            the entry as stored (little-endian inside, as on disk)
 *   8 + E  block descriptor (60) whose data length is the bytes sent, then the data
 * Range form (E > 0): the data is exactly the range asked for; the reader
 * checks the entry against the block's xxh64 and each sub-block against its
 * sum. Whole form (E = 0): offset 0 and the whole block as stored (the
 * server had no usable entry, or the block is sealed: the AEAD tag covers
 * the whole block), checked by its xxh64 as a GET_BLOCK reply is. NOT_FOUND
 * as for GET_BLOCK.
 */
import { SUB_BLOCK_SIZE } from '../blocks/sub-sums.js';
import type { BlockRef } from '../../model/block-ref.js';
import {
  FLAG_REPLY,
  HEADER_SIZE,
  OP_GET_RANGE,
  STATUS_OK,
  TbpPayloadError,
  encodeHeader,
} from './wire-frame.js';
import {
  BLOCK_DESCRIPTOR_SIZE,
  REF_SIZE,
  type WireBlock,
  decodeBlock,
  decodeRef,
  encodeBlockDescriptor,
  encodeRef,
} from './wire-blocks.js';

/** A byte range of one block. */
export interface BlockRange {
  ref: BlockRef;
  /** Multiple of SUB_BLOCK_SIZE. */
  offset: number;
  /** Multiple of SUB_BLOCK_SIZE, > 0. */
  length: number;
}

/**
 * A GET_RANGE answer: `block.data` holds bytes [offset, offset + data length)
 * of the block; `entry` is the block's sub-sums entry (range form) or
 * undefined (whole form: offset 0, the whole block, check its xxh64).
 */
export interface RangeReply {
  offset: number;
  entry: Uint8Array | undefined;
  block: WireBlock;
}

export const GET_RANGE_PAYLOAD_SIZE = REF_SIZE + 8;
export const GET_RANGE_FRAME_SIZE = HEADER_SIZE + GET_RANGE_PAYLOAD_SIZE;
/** An entry is 16 + 4 n bytes for n sub-blocks; n ≤ 1024 (4 MiB blocks) bounds it. */
const MAX_ENTRY_BYTES = 16 + 4 * 1024;

function rangeProblem(offset: number, length: number): string | undefined {
  if (offset % SUB_BLOCK_SIZE !== 0 || length % SUB_BLOCK_SIZE !== 0 || length === 0)
    return `range ${offset}+${length} is not whole ${SUB_BLOCK_SIZE}-byte sub-blocks`;
  return undefined;
}

/** A whole GET_RANGE frame (40 bytes) into a buffer the caller owns. Throws RangeError for a range no block has. */
export function encodeGetRange(
  buf: Buffer,
  at: number,
  requestId: number,
  range: BlockRange,
): void {
  const problem = rangeProblem(range.offset, range.length);
  if (problem || range.offset + range.length > 0xffffffff) throw new RangeError(problem);
  encodeHeader(buf, at, OP_GET_RANGE, 0, STATUS_OK, requestId, GET_RANGE_PAYLOAD_SIZE);
  encodeRef(buf, at + HEADER_SIZE, range.ref);
  buf.writeUInt32BE(range.offset, at + HEADER_SIZE + REF_SIZE);
  buf.writeUInt32BE(range.length, at + HEADER_SIZE + REF_SIZE + 4);
}

export function decodeGetRange(payload: Buffer): BlockRange {
  if (payload.length !== GET_RANGE_PAYLOAD_SIZE)
    throw new TbpPayloadError(
      `GET_RANGE payload of ${payload.length} bytes, expected ${GET_RANGE_PAYLOAD_SIZE}`,
    );
  const ref = decodeRef(payload, 0);
  const offset = payload.readUInt32BE(REF_SIZE);
  const length = payload.readUInt32BE(REF_SIZE + 4);
  const problem = rangeProblem(offset, length);
  if (problem) throw new TbpPayloadError(problem);
  return { ref, offset, length };
}

/** Bytes of a GET_RANGE OK reply before the data: header, offset, entry length, entry, descriptor. */
export function rangeReplyHeadSize(reply: RangeReply): number {
  return HEADER_SIZE + 8 + (reply.entry?.length ?? 0) + BLOCK_DESCRIPTOR_SIZE;
}

/** The head of a GET_RANGE OK reply (rangeReplyHeadSize bytes); the data follows as its own buffer. */
export function encodeRangeReplyHead(
  buf: Buffer,
  at: number,
  requestId: number,
  reply: RangeReply,
): void {
  const entryLength = reply.entry?.length ?? 0;
  if (entryLength === 0 && reply.offset !== 0)
    throw new RangeError('a whole-form GET_RANGE reply starts at offset 0');
  if (entryLength > MAX_ENTRY_BYTES) throw new RangeError(`sub-sums entry of ${entryLength} bytes`);
  const payload = 8 + entryLength + BLOCK_DESCRIPTOR_SIZE + reply.block.data.length;
  encodeHeader(buf, at, OP_GET_RANGE, FLAG_REPLY, STATUS_OK, requestId, payload);
  let p = at + HEADER_SIZE;
  buf.writeUInt32BE(reply.offset, p);
  buf.writeUInt32BE(entryLength, p + 4);
  p += 8;
  if (reply.entry) buf.set(reply.entry, p);
  encodeBlockDescriptor(buf, p + entryLength, reply.block);
}

/**
 * A GET_RANGE OK reply payload (views into it), checked against the range
 * asked for: the range form must carry exactly that range, the whole form
 * starts at 0. Whether the bytes are right is the reader's check.
 */
export function decodeRangeReply(payload: Buffer, asked: BlockRange): RangeReply {
  if (payload.length < 8 + BLOCK_DESCRIPTOR_SIZE)
    throw new TbpPayloadError(`GET_RANGE reply of ${payload.length} bytes`);
  const offset = payload.readUInt32BE(0);
  const entryLength = payload.readUInt32BE(4);
  if (entryLength > MAX_ENTRY_BYTES || 8 + entryLength > payload.length)
    throw new TbpPayloadError(`sub-sums entry of ${entryLength} bytes`);
  const block = decodeBlock(payload, 8 + entryLength, payload.length);
  if (8 + entryLength + BLOCK_DESCRIPTOR_SIZE + block.data.length !== payload.length)
    throw new TbpPayloadError('bytes after the block');
  const { ref } = asked;
  if (
    block.ref.volumeId !== ref.volumeId ||
    block.ref.generation !== ref.generation ||
    block.ref.index !== ref.index
  )
    throw new TbpPayloadError(
      `asked for ${ref.volumeId}/${ref.generation}/${ref.index}, got ${block.ref.volumeId}/${block.ref.generation}/${block.ref.index}`,
    );
  if (entryLength === 0) {
    if (offset !== 0) throw new TbpPayloadError(`whole block at offset ${offset}`);
    return { offset, entry: undefined, block };
  }
  if (offset !== asked.offset || block.data.length !== asked.length)
    throw new TbpPayloadError(
      `range ${offset}+${block.data.length} for ${asked.offset}+${asked.length}`,
    );
  return { offset, entry: payload.subarray(8, 8 + entryLength), block };
}
