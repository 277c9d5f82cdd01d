/**
 * The sub-block checksum entry, byte for byte, and the store formats: a
 * format 2 store has its `subsums` table; a format 1 store (the same `data`
 * and `slots` files, no table) is upgraded in place when opened and keeps
 * its blocks; a format from a newer torus is refused.
 */
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { hasher } from './hash.js';
import { LocalSlotStore } from './slot-store.js';
import {
  STORE_FORMAT,
  STORE_FORMAT_WHOLE_BLOCK_SUMS,
  STORE_FORMAT_WHOLE_BLOCKS,
} from './store-format.js';
import {
  SUB_BLOCK_SIZE,
  SUBSUMS_FILE,
  encodeSubsums,
  subBlocksPer,
  subSum,
  subsumsEntrySize,
  subsumsMatch,
} from './sub-sums.js';

describe('sub-block checksum entries', () => {
  test('an 8 KiB block: magic, block hash, one xxh32 per 4 KiB, and a check over the rest', async () => {
    const hash = await hasher();
    const block = new Uint8Array(2 * SUB_BLOCK_SIZE);
    block.fill(0x11, 0, SUB_BLOCK_SIZE);
    block.fill(0x22, SUB_BLOCK_SIZE);
    assert.equal(subBlocksPer(block.length), 2);
    assert.equal(subsumsEntrySize(block.length), 24);
    assert.equal(subsumsEntrySize(64 * 1024), 80);
    const entry = new Uint8Array(24);
    encodeSubsums(entry, block, 0x04030201, 0x08070605, hash);
    const bytes = Buffer.from(entry);
    assert.equal(bytes.subarray(0, 4).toString('latin1'), 'SUBS');
    assert.deepEqual([...bytes.subarray(4, 12)], [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.equal(bytes.readUInt32LE(12), hash.hash32(block.subarray(0, SUB_BLOCK_SIZE)));
    assert.equal(bytes.readUInt32LE(16), hash.hash32(block.subarray(SUB_BLOCK_SIZE)));
    assert.equal(bytes.readUInt32LE(20), hash.hash32(entry.subarray(0, 20)));
    assert.equal(subSum(entry, 1), bytes.readUInt32LE(16));
    assert.ok(subsumsMatch(entry, 0x04030201, 0x08070605, hash));
  });

  test('an entry is used only when intact and made for the expected block hash', async () => {
    const hash = await hasher();
    const block = new Uint8Array(4 * SUB_BLOCK_SIZE).map((_, i) => i * 7);
    const entry = new Uint8Array(subsumsEntrySize(block.length));
    encodeSubsums(entry, block, 0xdeadbeef, 0x12345678, hash);
    assert.ok(subsumsMatch(entry, 0xdeadbeef, 0x12345678, hash));
    // Another block's entry (a stale one, left by the slot's earlier block).
    assert.equal(subsumsMatch(entry, 0xdeadbeef, 0x12345679, hash), false);
    assert.equal(subsumsMatch(entry, 0xdeadbeee, 0x12345678, hash), false);
    // A torn or damaged entry: any byte changed.
    for (const at of [0, 5, 13, entry.length - 1]) {
      const damaged = entry.slice();
      damaged[at] ^= 0x40;
      assert.equal(subsumsMatch(damaged, 0xdeadbeef, 0x12345678, hash), false, `byte ${at}`);
    }
    // Never written (a fresh or upgraded table): all zeros, even for a zero hash.
    assert.equal(subsumsMatch(new Uint8Array(entry.length), 0, 0, hash), false);
  });
});

describe('store formats', { timeout: 30_000 }, () => {
  const BS = 16 * 1024;
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'torus-subsums-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  const layoutOf = async (dir: string) =>
    JSON.parse(await readFile(join(dir, 'store.json'), 'utf8')) as { format: number };

  test('a new store is format 3 with a sub-sums table of one entry per slot', async () => {
    const dir = join(root, 'new');
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 32 * BS });
    assert.equal((await layoutOf(dir)).format, STORE_FORMAT);
    assert.equal(STORE_FORMAT, 3);
    assert.equal((await stat(join(dir, SUBSUMS_FILE))).size, 32 * subsumsEntrySize(BS));
  });

  test('a format 1 store is upgraded in place at open (not by fsck) and keeps its blocks', async () => {
    const dir = join(root, 'old');
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 32 * BS });
    let store = await LocalSlotStore.open(dir);
    const ref = { volumeId: 3, generation: 1, index: 7 };
    const slot = store.allocate();
    const written = await store.writeBlock(slot, ref, Buffer.alloc(BS, 0x5a), 0);
    await store.sync();
    await store.close();
    // What format 1 code left: the same data and slots files, no table, format 1.
    await rm(join(dir, SUBSUMS_FILE));
    const layout = await layoutOf(dir);
    await writeFile(
      join(dir, 'store.json'),
      JSON.stringify({ ...layout, format: STORE_FORMAT_WHOLE_BLOCK_SUMS }),
    );
    // fsck's check opens it as found: nothing written.
    store = await LocalSlotStore.open(dir, { upgrade: false });
    assert.equal(store.lookup(3, 1, 7), slot);
    await store.close();
    assert.equal((await layoutOf(dir)).format, STORE_FORMAT_WHOLE_BLOCK_SUMS);
    await assert.rejects(stat(join(dir, SUBSUMS_FILE)), { code: 'ENOENT' });
    store = await LocalSlotStore.open(dir);
    assert.equal((await layoutOf(dir)).format, STORE_FORMAT);
    assert.equal((await stat(join(dir, SUBSUMS_FILE))).size, 32 * subsumsEntrySize(BS));
    assert.equal(store.lookup(3, 1, 7), slot);
    const back = Buffer.alloc(BS);
    assert.deepEqual(await store.readBlock(slot, back), written);
    assert.ok(back.equals(Buffer.alloc(BS, 0x5a)));
    await store.close();
  });

  test('a format 2 store is format 3 once opened, its blocks as they were', async () => {
    const dir = join(root, 'two');
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 32 * BS });
    let store = await LocalSlotStore.open(dir);
    const slot = store.allocate();
    await store.writeBlock(slot, { volumeId: 3, generation: 1, index: 2 }, Buffer.alloc(BS, 7), 0);
    await store.sync();
    await store.close();
    await writeFile(
      join(dir, 'store.json'),
      JSON.stringify({ ...(await layoutOf(dir)), format: STORE_FORMAT_WHOLE_BLOCKS }),
    );
    store = await LocalSlotStore.open(dir, { upgrade: false });
    await store.close();
    assert.equal((await layoutOf(dir)).format, STORE_FORMAT_WHOLE_BLOCKS, 'fsck writes nothing');
    store = await LocalSlotStore.open(dir);
    assert.equal((await layoutOf(dir)).format, STORE_FORMAT);
    assert.equal(store.lookup(3, 1, 2), slot);
    await store.close();
  });

  test('a store whose table is gone gets an empty one; a newer format is refused', async () => {
    const dir = join(root, 'lost');
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 32 * BS });
    await rm(join(dir, SUBSUMS_FILE));
    const store = await LocalSlotStore.open(dir);
    await store.close();
    assert.equal((await stat(join(dir, SUBSUMS_FILE))).size, 32 * subsumsEntrySize(BS));
    const layout = await layoutOf(dir);
    await writeFile(join(dir, 'store.json'), JSON.stringify({ ...layout, format: 4 }));
    await assert.rejects(LocalSlotStore.open(dir), /unsupported store format 4.*newer torus/);
  });
});
