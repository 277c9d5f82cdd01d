/**
 * The slot table: one fixed-size record per slot of the local data file,
 * stored in `slots` beside `data` and mirrored in a SharedArrayBuffer that the
 * main thread and the pool workers both see.
 *
 * A record says which block a slot holds and how to check it, so the store's
 * whole index (ref → slot, free list) is rebuilt from this file at start-up and
 * nothing else needs to be made durable to allocate a slot.
 *
 * Layout (little-endian, 64 bytes):
 *   0  u32  state         SLOT_FREE (0) or SLOT_USED
 *   4  u32  volumeId
 *   8  u32  generation    the volume version the block was written for
 *  12  u32  flags         RECORD_SEALED, RECORD_MAP_PAGE, RECORD_PATCH
 *  16  u32  index low     block index (or page id) within the volume
 *  20  u32  index high
 *  24  u32  hash low      xxh64 of the bytes stored in the slot
 *  28  u32  hash high
 *  32  12B  nonce         AEAD nonce when sealed
 *  44  16B  tag           AEAD tag when sealed
 *  60  u32  check         xxh32 of bytes 0..59: a torn record reads as free
 *
 * A patch (RECORD_PATCH, store format 3, never sealed) stores only some 4 KiB
 * sub-blocks of its block; the others are its base's, a whole block of the
 * same index in this store (patches.ts). Its nonce bytes say which:
 *  32  u32  base volume    the base's volume id (a clone's ancestor's, for an inherited block)
 *  36  u32  base generation
 *  40  u32  present        mask of the sub-blocks the patch's own slot holds (bit i: sub-block i)
 * and its hash is the tree hash of the whole block (sub-sums.ts treeHash).
 */
export const RECORD_SIZE = 64;
export const SLOT_FREE = 0;
export const SLOT_USED = 0x544f5253; // "TORS" read as little-endian u32: unlikely in garbage

export const RECORD_SEALED = 1;
export const RECORD_MAP_PAGE = 2;
export const RECORD_PATCH = 4;

export const OFF_STATE = 0;
export const OFF_VOLUME = 4;
export const OFF_GENERATION = 8;
export const OFF_FLAGS = 12;
export const OFF_INDEX_LO = 16;
export const OFF_INDEX_HI = 20;
export const OFF_HASH_LO = 24;
export const OFF_HASH_HI = 28;
export const OFF_NONCE = 32;
export const NONCE_SIZE = 12;
export const OFF_TAG = 44;
export const TAG_SIZE = 16;
export const OFF_CHECK = 60;
export const OFF_BASE_VOLUME = 32;
export const OFF_BASE_GENERATION = 36;
export const OFF_PATCH_PRESENT = 40;
export const CHECKED_BYTES = 60;

/** Split a safe integer (< 2^53) into the two u32 halves stored on disk. */
export function lo32(n: number): number {
  return n >>> 0;
}
export function hi32(n: number): number {
  return Math.floor(n / 0x1_0000_0000) >>> 0;
}
export function join64(lo: number, hi: number): number {
  return hi * 0x1_0000_0000 + lo;
}

/**
 * Fill a used record (everything but nonce, tag and check): which block the
 * slot holds, how it is stored and its hash. `record` is the slot's 64-byte
 * view; the caller sets nonce and tag when sealed, then stamps the check.
 */
export function fillRecord(
  record: DataView,
  ref: { volumeId: number; generation: number; index: number },
  flags: number,
  hashLo: number,
  hashHi: number,
): void {
  record.setUint32(OFF_VOLUME, ref.volumeId, true);
  record.setUint32(OFF_GENERATION, ref.generation, true);
  record.setUint32(OFF_FLAGS, flags, true);
  record.setUint32(OFF_INDEX_LO, lo32(ref.index), true);
  record.setUint32(OFF_INDEX_HI, hi32(ref.index), true);
  record.setUint32(OFF_HASH_LO, hashLo >>> 0, true);
  record.setUint32(OFF_HASH_HI, hashHi >>> 0, true);
  record.setUint32(OFF_STATE, SLOT_USED, true);
}
