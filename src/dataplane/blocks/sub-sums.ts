/**
 * The sub-block checksum table (`subsums`, beside `data` and `slots`): one
 * entry per slot holding an xxh32 of each 4 KiB sub-block of the block as
 * stored, so a 4 KiB cache miss reads and checks 4 KiB instead of the whole
 * block (16× less for 64 KiB blocks).
 *
 * Why a side table, not a tree hash (a block hash derived from the
 * sub-hashes): the block's xxh64 is what the block map, map pages, peers
 * (PUT verification), the scrub and fsck all check; a tree hash would change
 * the hash of every block already committed — their maps name the old
 * hashes — and the peer protocol with it. A side table leaves all of that as
 * it is.
 *
 * Why an entry can be trusted without being synced: it names the block hash
 * it was computed for, and a reader uses it only when it is intact (its own
 * xxh32), carries the magic, and names the hash the reader expects (the
 * map's). So a stale entry (the slot's earlier block), a torn, lost or
 * never-written one (a store upgraded from format 1, a sealed block) is never
 * wrong, only unused: the reader falls back to the whole block and its xxh64.
 * Nothing is fsynced for the table; a crash costs speed, not data.
 *
 * Layout of an entry (little-endian, 16 + 4 × n bytes, n = blockSize / 4096):
 *   0       u32  magic            SUBSUMS_MAGIC
 *   4       u32  block hash low   xxh64 of the whole block as stored (as in its slot record)
 *   8       u32  block hash high
 *   12      4n   sums             xxh32 of sub-block 0 … n-1, in order
 *   12 + 4n u32  check            xxh32 of bytes [0, 12 + 4n)
 */
import { assert } from '../../common/assert.js';
import type { Hasher } from './hash.js';

export const SUB_BLOCK_SIZE = 4096;
export const SUBSUMS_FILE = 'subsums';
/** "SUBS" read as a little-endian u32: an all-zero (never written) entry is not intact. */
export const SUBSUMS_MAGIC = 0x53425553;

const OFF_MAGIC = 0;
const OFF_HASH_LO = 4;
const OFF_HASH_HI = 8;
const OFF_SUMS = 12;

// Byte-wise little-endian u32s: the read path checks entries per request, and a DataView each time would allocate.
function getU32(bytes: Uint8Array, offset: number): number {
  return (
    (bytes[offset] |
      (bytes[offset + 1] << 8) |
      (bytes[offset + 2] << 16) |
      (bytes[offset + 3] << 24)) >>>
    0
  );
}

function setU32(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = value & 0xff;
  bytes[offset + 1] = (value >>> 8) & 0xff;
  bytes[offset + 2] = (value >>> 16) & 0xff;
  bytes[offset + 3] = (value >>> 24) & 0xff;
}

/** Sub-blocks of one block. */
export function subBlocksPer(blockSize: number): number {
  assert(
    blockSize >= SUB_BLOCK_SIZE && blockSize % SUB_BLOCK_SIZE === 0,
    'block size is a multiple of the 4 KiB sub-block',
  );
  return blockSize / SUB_BLOCK_SIZE;
}

/** Bytes of one slot's entry in the table. */
export function subsumsEntrySize(blockSize: number): number {
  return 16 + 4 * subBlocksPer(blockSize);
}

/**
 * Fill `entry` (subsumsEntrySize(block.length) bytes) for `block`, the bytes
 * as stored, whose xxh64 is (hashLo, hashHi).
 */
export function encodeSubsums(
  entry: Uint8Array,
  block: Uint8Array,
  hashLo: number,
  hashHi: number,
  hash: Hasher,
): void {
  setSumsOf(entry, block, hash);
  sealSubsums(entry, hashLo, hashHi, hash);
}

/** Set the sum of every sub-block of `block` in `entry`. */
function setSumsOf(entry: Uint8Array, block: Uint8Array, hash: Hasher): void {
  const n = subBlocksPer(block.length);
  assert(entry.length === 16 + 4 * n, 'a sub-sums entry is sized for its block');
  for (let i = 0; i < n; i++)
    setSubSum(entry, i, hash.hash32(block.subarray(i * SUB_BLOCK_SIZE, (i + 1) * SUB_BLOCK_SIZE)));
}

/** Set the sum of sub-block `i` in an entry being made (sealSubsums finishes it). */
export function setSubSum(entry: Uint8Array, i: number, sum: number): void {
  setU32(entry, OFF_SUMS + 4 * i, sum);
}

/** Finish an entry whose sums are set: the magic, the block hash it is for, its own check. */
export function sealSubsums(entry: Uint8Array, hashLo: number, hashHi: number, hash: Hasher): void {
  setU32(entry, OFF_MAGIC, SUBSUMS_MAGIC);
  setU32(entry, OFF_HASH_LO, hashLo);
  setU32(entry, OFF_HASH_HI, hashHi);
  const checked = entry.length - 4;
  setU32(entry, checked, hash.hash32(entry.subarray(0, checked)));
}

/**
 * The tree hash of a block whose sub-block sums `entry` holds: the xxh64 of
 * the sums (4 bytes each, little-endian, in order) — the hash of a patch
 * (patches.ts). A patch is written without reading the sub-blocks it does
 * not hold: their sums come from its base's entry, so its hash can be
 * computed where an xxh64 of the whole block would need the whole block.
 * Any reader holding the whole block can check it the same way (sum each
 * sub-block, hash the sums); one holding the entry checks each sub-block
 * on its own, the entry being bound to the hash by construction.
 */
export function treeHashInto(entry: Uint8Array, hash: Hasher, out: Uint32Array): void {
  hash.hash64Into(entry.subarray(OFF_SUMS, entry.length - 4), out, 0);
}

/** The tree hash of a whole block's bytes into `out`, its sums set in `entry` on the way (seal it to store it). */
export function blockTreeHashInto(
  block: Uint8Array,
  entry: Uint8Array,
  hash: Hasher,
  out: Uint32Array,
): void {
  setSumsOf(entry, block, hash);
  treeHashInto(entry, hash, out);
}

/**
 * True when `entry` is intact and was computed for the block whose xxh64 is
 * (hashLo, hashHi): only then may its sums check that block's sub-blocks.
 */
export function subsumsMatch(
  entry: Uint8Array,
  hashLo: number,
  hashHi: number,
  hash: Hasher,
): boolean {
  const checked = entry.length - 4;
  return (
    getU32(entry, OFF_MAGIC) === SUBSUMS_MAGIC &&
    getU32(entry, OFF_HASH_LO) === hashLo >>> 0 &&
    getU32(entry, OFF_HASH_HI) === hashHi >>> 0 &&
    getU32(entry, checked) === hash.hash32(entry.subarray(0, checked))
  );
}

/** The xxh32 stored for sub-block `i` (check subsumsMatch first). */
/** The block hash an entry says it was made for (whether or not it is intact: check with subsumsMatch). */
export function sealedHashOf(entry: Uint8Array): { lo: number; hi: number } {
  return { lo: getU32(entry, OFF_HASH_LO), hi: getU32(entry, OFF_HASH_HI) };
}

export function subSum(entry: Uint8Array, i: number): number {
  return getU32(entry, OFF_SUMS + 4 * i);
}
