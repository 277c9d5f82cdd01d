/**
 * The slot table read as it is on disk, before LocalSlotStore.open() treats
 * every record it cannot trust as free: which records are damaged (neither
 * free nor a used record whose own checksum holds), and the xxh64 and the
 * tree hash (a whole block written into in place, dataplane/blocks/patches.ts)
 * of the data each damaged slot still holds, so a block whose record alone
 * was lost can be found again by the hash its map entry records. (A patch
 * holding only part of its block cannot: its base was named by the lost
 * record.)
 */
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { hasher } from '../dataplane/blocks/hash.js';
import { OFF_STATE, RECORD_SIZE, SLOT_FREE, SLOT_USED } from '../dataplane/blocks/record.js';
import { blockTreeHashInto, subsumsEntrySize } from '../dataplane/blocks/sub-sums.js';

/** A slot whose record is damaged, and what its data hashes to now. */
export interface DamagedSlot {
  slot: number;
  /** Byte offset of its record in `blocks/slots`. */
  recordOffset: number;
  hashLo: number;
  hashHi: number;
  treeLo: number;
  treeHi: number;
}

/**
 * More damaged records than this and fsck stops hashing their data (each
 * is a block read): the table is not damaged, it is gone, and what is left
 * is reported without the search.
 */
export const MAX_HASHED_DAMAGED_SLOTS = 65_536;

/** Damaged records of the store in `blocksDir` (slot count and block size from its store.json). */
export async function scanSlotTable(
  blocksDir: string,
  slotCount: number,
  blockSize: number,
): Promise<DamagedSlot[]> {
  const hash = await hasher();
  const table = Buffer.alloc(slotCount * RECORD_SIZE);
  const slots = await open(join(blocksDir, 'slots'), 'r');
  try {
    // A short slots file reads as free slots, as the store itself reads it.
    await slots.read(table, 0, table.length, 0);
  } finally {
    await slots.close();
  }
  const damaged: number[] = [];
  for (let slot = 0; slot < slotCount; slot++) {
    const record = new DataView(table.buffer, table.byteOffset + slot * RECORD_SIZE, RECORD_SIZE);
    const state = record.getUint32(OFF_STATE, true);
    if (state === SLOT_FREE && isZero(table, slot)) continue;
    if (state === SLOT_USED && hash.recordIsIntact(record)) continue;
    damaged.push(slot);
  }
  const out: DamagedSlot[] = [];
  const data = await open(join(blocksDir, 'data'), 'r');
  try {
    const block = Buffer.alloc(blockSize);
    const sums = new Uint8Array(subsumsEntrySize(blockSize));
    const tree = new Uint32Array(2);
    for (const slot of damaged) {
      let digest = { lo: 0, hi: 0 };
      tree.fill(0);
      if (out.length < MAX_HASHED_DAMAGED_SLOTS) {
        const { bytesRead } = await data.read(block, 0, blockSize, slot * blockSize);
        if (bytesRead === blockSize) {
          digest = hash.hash64(block);
          blockTreeHashInto(block, sums, hash, tree);
        }
      }
      out.push({
        slot,
        recordOffset: slot * RECORD_SIZE,
        hashLo: digest.lo,
        hashHi: digest.hi,
        treeLo: tree[0],
        treeHi: tree[1],
      });
    }
  } finally {
    await data.close();
  }
  return out;
}

/** A free record is all zeros; a free state word over other bytes is damage too (a torn write). */
function isZero(table: Buffer, slot: number): boolean {
  for (let i = slot * RECORD_SIZE; i < (slot + 1) * RECORD_SIZE; i++)
    if (table[i] !== 0) return false;
  return true;
}
