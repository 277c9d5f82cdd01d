/**
 * LocalSlotStore on its own: the allocator, ref binding, and rebuilding the
 * index from the slot table after a reopen (a restart), including a
 * damaged record (set aside, never reused, until fsck); and its invariants: a slot bound only when allocated, given back
 * only when allocated and unbound.
 */
import assert from 'node:assert/strict';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { InvariantError } from '../../common/assert.js';
import { StoreFullError } from '../../common/errors.js';
import { hasher } from './hash.js';
import { OFF_FLAGS, OFF_NONCE, RECORD_SEALED, RECORD_SIZE } from './record.js';
import { receivedRuns, type ReceivedBlock } from './received-blocks.js';
import { LocalSlotStore } from './slot-store.js';

const BS = 4096;

describe('LocalSlotStore', { timeout: 30_000 }, () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'torus-slots-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test('capacity is whole slots; a full store throws StoreFullError and gives nothing twice', async () => {
    const dir = join(root, 'full');
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 20 * BS + 100 });
    const store = await LocalSlotStore.open(dir);
    assert.equal(store.slotCount, 20);
    const taken = new Set<number>();
    for (let i = 0; i < 20; i++) taken.add(store.allocate());
    assert.equal(taken.size, 20);
    assert.throws(() => store.allocate(), StoreFullError);
    store.unallocate(7);
    assert.equal(store.allocate(), 7);
    await store.close();
  });

  test('rejects block sizes that are not a power of two of at least 4 KiB', async () => {
    await assert.rejects(
      LocalSlotStore.create(join(root, 'bad'), { blockSize: 5000, capacityBytes: 1 << 20 }),
      /power of two/,
    );
  });

  test('written blocks are found again after a reopen; released ones are free, damaged ones set aside', async () => {
    const dir = join(root, 'reopen');
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 64 * BS });
    const store = await LocalSlotStore.open(dir);
    const refs = [0, 1, 2].map((index) => ({ volumeId: 9, generation: 3, index }));
    const slots: number[] = [];
    for (const ref of refs) {
      const slot = store.allocate();
      slots.push(slot);
      await store.writeBlock(slot, ref, Buffer.alloc(BS, ref.index + 1), 0);
    }
    store.release(refs[1]);
    await store.sync();
    await store.close();
    // Damage the third record (a flipped byte: a 64-byte record cannot be torn by a crash).
    const file = await open(join(dir, 'slots'), 'r+');
    await file.write(Buffer.from([0xab]), 0, 1, slots[2] * RECORD_SIZE + 10);
    await file.close();

    const again = await LocalSlotStore.open(dir);
    assert.equal(again.lookup(9, 3, 0), slots[0]);
    assert.equal(again.lookup(9, 3, 1), undefined, 'released');
    assert.equal(again.lookup(9, 3, 2), undefined, 'a damaged record binds no ref');
    assert.equal(again.usedSlots, 1);
    assert.equal(again.setAsideSlots, 1);
    assert.ok(again.isSetAside(slots[2]));
    assert.equal(
      again.freeSlots,
      62,
      'the damaged slot is not free: fsck may still recover its block',
    );
    const handedOut: number[] = [];
    for (let i = 0; i < 62; i++) handedOut.push(again.allocate());
    assert.ok(!handedOut.includes(slots[2]), 'a set-aside slot is never allocated');
    for (const slot of handedOut) again.unallocate(slot);
    const back = Buffer.alloc(BS);
    const digest = await again.readBlock(slots[0], back);
    assert.ok(back.equals(Buffer.alloc(BS, 1)));
    assert.equal(typeof digest.lo, 'number');
    await again.close();
  });

  test('binding a ref again replaces and frees its earlier slot', async () => {
    const dir = join(root, 'rebind');
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 16 * BS });
    const store = await LocalSlotStore.open(dir);
    const ref = { volumeId: 1, generation: 1, index: 5 };
    const first = store.allocate();
    await store.writeBlock(first, ref, Buffer.alloc(BS, 1), 0);
    const second = store.allocate();
    await store.writeBlock(second, ref, Buffer.alloc(BS, 2), 0);
    assert.equal(store.lookup(1, 1, 5), second);
    assert.equal(store.usedSlots, 1);
    await store.sync(); // drains the free-record write of `first`
    await store.close();
    const again = await LocalSlotStore.open(dir);
    assert.equal(again.lookup(1, 1, 5), second, 'after sync the old slot no longer claims the ref');
    await again.close();
  });

  const broken = (pattern: RegExp) => (err: unknown) =>
    err instanceof InvariantError && pattern.test(err.message);

  test('a slot is bound only once it is allocated, and only once', async () => {
    const dir = join(root, 'bind');
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 16 * BS });
    const store = await LocalSlotStore.open(dir);
    const free = store.allocate();
    store.unallocate(free);
    assert.throws(
      () => store.bind(free, { volumeId: 1, generation: 1, index: 0 }),
      broken(/bind\(\) of slot \d+, which is free/),
    );
    const slot = store.allocate();
    await store.writeBlock(slot, { volumeId: 1, generation: 1, index: 1 }, Buffer.alloc(BS, 1), 0);
    assert.throws(
      () => store.bind(slot, { volumeId: 1, generation: 1, index: 2 }),
      broken(/which is bound, not allocated/),
    );
    assert.equal(store.lookup(1, 1, 1), slot, 'the refused bind changed nothing');
    assert.equal(store.lookup(1, 1, 2), undefined);
    assert.equal(store.usedSlots, 1);
    assert.equal(store.freeSlots, 15);
    await store.close();
  });

  test('only an allocated, unbound slot is given back; a released one comes back once its record is written', async () => {
    const dir = join(root, 'unallocate');
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 16 * BS });
    const store = await LocalSlotStore.open(dir);
    const slot = store.allocate();
    store.unallocate(slot);
    assert.throws(
      () => store.unallocate(slot),
      broken(/unallocate\(\) of slot \d+, which is free/),
    );
    assert.equal(store.freeSlots, 16, 'given back once');
    const bound = store.allocate();
    const ref = { volumeId: 2, generation: 1, index: 0 };
    await store.writeBlock(bound, ref, Buffer.alloc(BS, 2), 0);
    assert.throws(() => store.unallocate(bound), broken(/which is bound/));
    store.release(ref);
    assert.throws(() => store.unallocate(bound), broken(/which is being released/));
    await store.sync();
    assert.equal(store.freeSlots, 16);
    assert.equal(store.usedSlots, 0);
    await store.close();
  });

  test('slots released together are taken again in ascending order, once the allocation comes back round to them', async () => {
    const dir = join(root, 'release-order');
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 16 * BS });
    const store = await LocalSlotStore.open(dir);
    const slots: number[] = [];
    for (let index = 0; index < 7; index++) {
      const slot = store.allocate();
      const ref = { volumeId: 3, generation: 1, index };
      await store.writeBlock(slot, ref, Buffer.alloc(BS, index), 0);
      slots.push(slot);
    }
    // The first release starts a write of its own; the next six, out of order,
    // are one batch behind it (what a commit does with what it replaced).
    for (const index of [6, 4, 1, 5, 0, 3, 2]) store.release({ volumeId: 3, generation: 1, index });
    await store.whenReleased();
    assert.deepEqual(slots, [0, 1, 2, 3, 4, 5, 6]);
    assert.deepEqual(
      Array.from({ length: 16 }, () => store.allocate()),
      [7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6],
      'the rest of the store first, in order, then the released slots from the start, in order',
    );
    await store.close();
  });

  test('after a reopen the untouched rest of the store goes first, as one run; scattered holes wait', async () => {
    const dir = join(root, 'holes');
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 4096 * BS });
    const store = await LocalSlotStore.open(dir);
    // A new store hands out slots in order: 0..99 used, then every other one
    // of 0..9 and slot 50 released: holes below the last used slot.
    for (let index = 0; index < 100; index++) {
      const slot = store.allocate();
      assert.equal(slot, index);
      await store.writeBlock(slot, { volumeId: 1, generation: 1, index }, Buffer.alloc(BS, 1), 0);
    }
    const released = [0, 2, 4, 6, 8, 50];
    for (const index of released) store.release({ volumeId: 1, generation: 1, index });
    await store.sync();
    await store.close();

    const again = await LocalSlotStore.open(dir);
    assert.equal(again.usedSlots, 94);
    assert.equal(again.freeSlots, 4096 - 94);
    const order = Array.from({ length: 8 }, () => again.allocate());
    assert.deepEqual(order, [100, 101, 102, 103, 104, 105, 106, 107]);
    await again.close();
  });
  test('a received batch shares writes over consecutive slots; each block lands whole, with its record', async () => {
    const dir = join(root, 'received');
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 64 * BS });
    const store = await LocalSlotStore.open(dir);
    const hash = await hasher();
    const slots = Array.from({ length: 7 }, () => store.allocate());
    const gap = slots.splice(3, 1)[0]; // not in the batch: two runs around it
    const blocks: ReceivedBlock[] = slots.map((slot, k) => {
      const bytes = Buffer.alloc(BS, 0x10 + k);
      const sealed = k === 5; // the last one sealed: a run of its own
      return {
        slot,
        ref: { volumeId: 4, generation: 2, index: k },
        bytes,
        flags: sealed ? RECORD_SEALED : 0,
        hash: hash.hash64(bytes),
        nonce: Buffer.alloc(12, sealed ? 0xee : 0),
        tag: Buffer.alloc(16, sealed ? 0xdd : 0),
      };
    });
    // Given out of order: runs follow the slots, not the batch.
    const shuffled = [blocks[4], blocks[0], blocks[5], blocks[2], blocks[1], blocks[3]];
    assert.deepEqual(
      receivedRuns(shuffled).map((run) => run.map((i) => shuffled[i].ref.index)),
      [[0, 1, 2], [3, 4], [5]],
    );
    assert.deepEqual(await store.writeReceivedBlocks(shuffled), new Array(6).fill(undefined));
    store.unallocate(gap);
    await store.sync();
    await store.close();

    const again = await LocalSlotStore.open(dir);
    for (const [k, block] of blocks.entries()) {
      assert.equal(again.lookup(4, 2, k), block.slot, `block ${k} bound after a reopen`);
      const back = Buffer.alloc(BS);
      const digest = await again.readBlock(block.slot, back);
      assert.ok(back.equals(block.bytes), `block ${k} whole`);
      assert.deepEqual(digest, block.hash);
      const record = again.record(block.slot);
      assert.equal(record.getUint32(OFF_FLAGS, true), block.flags);
      assert.equal(record.getUint8(OFF_NONCE), k === 5 ? 0xee : 0);
      const entry = new Uint8Array(again.subsumsEntrySize);
      if (k !== 5) {
        assert.ok(await again.readSubsums(block.slot, entry));
        assert.ok(
          entry.some((b) => b !== 0),
          `block ${k}: its sub-sums entry is written`,
        );
      }
    }
    await again.close();
  });

  test('a received batch with a block of the wrong size is refused before anything is written', async () => {
    const dir = join(root, 'received-bad');
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 16 * BS });
    const store = await LocalSlotStore.open(dir);
    const block = (slot: number, size: number): ReceivedBlock => ({
      slot,
      ref: { volumeId: 1, generation: 1, index: slot },
      bytes: Buffer.alloc(size, 1),
      flags: 0,
      hash: { lo: 0, hi: 0 },
      nonce: Buffer.alloc(12),
      tag: Buffer.alloc(16),
    });
    const a = store.allocate();
    const b = store.allocate();
    await assert.rejects(store.writeReceivedBlocks([block(a, BS), block(b, BS - 1)]), RangeError);
    assert.equal(store.lookup(1, 1, a), undefined);
    store.unallocate(a);
    store.unallocate(b);
    await store.close();
  });
  test('released slots, consecutive or not, read as free after a reopen; the others stay bound', async () => {
    const dir = join(root, 'released-runs');
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 16 * BS });
    const store = await LocalSlotStore.open(dir);
    const refs = Array.from({ length: 8 }, (_, index) => ({ volumeId: 2, generation: 1, index }));
    for (const ref of refs) await store.writeBlock(store.allocate(), ref, Buffer.alloc(BS, 7), 0);
    const released = [1, 2, 3, 5, 7];
    for (const index of [5, 2, 7, 1, 3]) store.release(refs[index]); // out of order
    await store.whenReleased();
    await store.sync();
    await store.close();
    const again = await LocalSlotStore.open(dir);
    for (const ref of refs) {
      const bound = again.lookup(2, 1, ref.index) !== undefined;
      assert.equal(bound, !released.includes(ref.index), `block ${ref.index}`);
    }
    assert.equal(again.usedSlots, 3);
    await again.close();
  });
});
