/**
 * Block listings and frameless payloads for the gRPC service (grpc.ts).
 * Part of wire.ts (see there for the protocol's rules); import from wire.ts.
 */
import type { BlockRef } from '../../model/block-ref.js';
import { HEADER_SIZE, OP_HAS_BLOCKS, TbpPayloadError } from './wire-frame.js';
import { decodeRef, encodeRef } from './wire-blocks.js';
import { encodeBitmapReply, encodeRefsFrame } from './wire-messages.js';

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
  if (entries.length > MAX_LISTING_ENTRIES)
    throw new RangeError(`listing of ${entries.length} entries (max ${MAX_LISTING_ENTRIES})`);
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
  if (count > MAX_LISTING_ENTRIES)
    throw new TbpPayloadError(`listing of ${count} entries (max ${MAX_LISTING_ENTRIES})`);
  if (buf.length !== 4 + count * LISTED_BLOCK_SIZE)
    throw new TbpPayloadError(`listing of ${count} entries in ${buf.length} bytes`);
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

/** A ref list without a frame (gRPC HasBlocks/DeleteBlocks request): count u32, refs (and, for HasBlocks, copy hashes). */
export function encodeRefList(refs: readonly BlockRef[], hashes?: Uint32Array): Buffer {
  const frame = encodeRefsFrame(OP_HAS_BLOCKS, 0, refs, hashes);
  return frame.subarray(HEADER_SIZE);
}

/** A bitmap without a frame (gRPC HasBlocks reply). */
export function encodeBitmap(bits: readonly boolean[]): Buffer {
  return encodeBitmapReply(0, bits).subarray(HEADER_SIZE);
}
