/**
 * Block refs and block descriptors as TBP carries them (in PUT_BLOCKS, GET_BLOCK replies and listings).
 * Part of wire.ts (see there for the protocol's rules); import from wire.ts.
 */
import {
  RECORD_MAP_PAGE,
  RECORD_PATCH,
  RECORD_SEALED,
  NONCE_SIZE,
  TAG_SIZE,
  hi32,
  join64,
  lo32,
} from '../blocks/record.js';
import { MAP_PAGE_BIT, type BlockRef } from '../../model/block-ref.js';
import { TbpPayloadError } from './wire-frame.js';

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
  if (
    !isU32(ref.volumeId) ||
    !isU32(ref.generation) ||
    !Number.isSafeInteger(ref.index) ||
    ref.index < 0
  ) {
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
  if (hi >= INDEX_HI_LIMIT)
    throw new TbpPayloadError(
      `block index 0x${hi.toString(16)}${buf
        .readUInt32BE(at + 12)
        .toString(16)
        .padStart(8, '0')} is not below 2^53`,
    );
  return {
    volumeId: buf.readUInt32BE(at),
    generation: buf.readUInt32BE(at + 4),
    index: join64(buf.readUInt32BE(at + 12), hi),
  };
}

// ------------------------------------------------------------------ blocks

/**
 * A block as it travels and is stored: its identity, how to check it, how to
 * open it, and its bytes exactly as stored (ciphertext when sealed). On the
 * server the Uint8Array fields are views into the received frame.
 */
export interface WireBlock {
  ref: BlockRef;
  /**
   * RECORD_SEALED, RECORD_MAP_PAGE (blocks/record.ts; RECORD_MAP_PAGE exactly
   * when ref.index ≥ MAP_PAGE_BIT), BLOCK_TREE_HASH (plain data blocks only).
   */
  flags: number;
  /** xxh64 of `data` — or its tree hash under BLOCK_TREE_HASH — low and high u32 halves (as blocks/hash.ts returns them). */
  hashLo: number;
  hashHi: number;
  /** AEAD nonce, NONCE_SIZE (12) bytes; zeros when not sealed. */
  nonce: Uint8Array;
  /** AEAD tag, TAG_SIZE (16) bytes; zeros when not sealed. */
  tag: Uint8Array;
  /** The stored bytes; never empty. */
  data: Uint8Array;
}

/**
 * The block's hash is its tree hash (the xxh64 of its 4 KiB sub-blocks'
 * xxh32s, blocks/sub-sums.ts), not the xxh64 of its bytes: a block stored
 * as a patch somewhere (blocks/patches.ts), whose hash in the block map is
 * the tree hash, travelling whole. The record flag's value: a node stores
 * such a block as a patch holding every sub-block. Never with
 * RECORD_SEALED or RECORD_MAP_PAGE. A node that predates it refuses the
 * flag (a bad request, or a reply it cannot decode), so a writer makes
 * such blocks only when every node says it knows them (membership's
 * features).
 */
export const BLOCK_TREE_HASH = RECORD_PATCH;

export const BLOCK_FLAGS_KNOWN = RECORD_SEALED | RECORD_MAP_PAGE | BLOCK_TREE_HASH;

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
export function assertBlock(block: WireBlock): void {
  assertRef(block.ref);
  if (block.nonce.length !== NONCE_SIZE || block.tag.length !== TAG_SIZE)
    throw new RangeError(`block nonce/tag must be ${NONCE_SIZE}/${TAG_SIZE} bytes`);
  if (block.data.length === 0) throw new RangeError('empty block');
  const problem = blockFlagsProblem(block.flags, block.ref.index);
  if (problem) throw new RangeError(problem);
}

function blockFlagsProblem(flags: number, index: number): string | undefined {
  if (flags & ~BLOCK_FLAGS_KNOWN)
    return `unknown block flags 0x${(flags & ~BLOCK_FLAGS_KNOWN).toString(16)}`;
  if (flags & BLOCK_TREE_HASH && flags & (RECORD_SEALED | RECORD_MAP_PAGE))
    return 'a tree hash on a sealed block or a map page';
  if (((flags & RECORD_MAP_PAGE) !== 0) !== index >= MAP_PAGE_BIT) {
    return flags & RECORD_MAP_PAGE
      ? `map-page flag on data index ${index}`
      : `map-page index ${index} without the map-page flag`;
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
  if (end - at < BLOCK_DESCRIPTOR_SIZE)
    throw new TbpPayloadError(
      `block descriptor cut short (${end - at} of ${BLOCK_DESCRIPTOR_SIZE} bytes)`,
    );
  const ref = decodeRef(buf, at);
  const flags = buf.readUInt32BE(at + DESC_FLAGS);
  const problem = blockFlagsProblem(flags, ref.index);
  if (problem) throw new TbpPayloadError(problem);
  const length = buf.readUInt32BE(at + DESC_LENGTH);
  if (length === 0) throw new TbpPayloadError('empty block');
  const dataAt = at + BLOCK_DESCRIPTOR_SIZE;
  if (length > end - dataAt)
    throw new TbpPayloadError(
      `block of ${length} bytes runs past the payload (${end - dataAt} left)`,
    );
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
