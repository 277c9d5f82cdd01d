/**
 * HeldWrites on a real file: held items land where their slots say, the
 * last of a slot held twice wins, a held item is read back before it is
 * written, nothing is written before write() (or ever, after discard()),
 * and items not held are written at once. Records mode writes ranges of
 * the source table. Around the page cache (O_DIRECT, where the system
 * allows it): page-aligned blocks go there, and a write the kernel refuses
 * (memory not aligned) lands through the fallback handle, as do the later ones.
 */
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pageAlignedSharedMemory } from '../../common/aligned-memory.js';
import { openDirect } from './file-io.js';
import { HeldWrites } from './held-writes.js';

const ITEM = 8;
const SLOTS = 2000;

function item(fill: number): Uint8Array {
  return new Uint8Array(ITEM).fill(fill);
}

describe('HeldWrites', () => {
  let dir: string;
  let path: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'torus-held-'));
    path = join(dir, 'items');
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  function fresh(): number {
    writeFileSync(path, new Uint8Array(ITEM * SLOTS));
    return openSync(path, 'r+');
  }
  function slotOf(file: Uint8Array, slot: number): number[] {
    return [...file.subarray(slot * ITEM, (slot + 1) * ITEM)];
  }

  test('held items go out at write(), each at its slot; the last of a slot wins', () => {
    const fd = fresh();
    const held = new HeldWrites(fd, ITEM);
    held.hold();
    // Runs 3-5 and 9, out of order, slot 4 twice; more than the buffer's first size.
    for (const [slot, fill] of [
      [5, 0x55],
      [3, 0x33],
      [4, 0x44],
      [9, 0x99],
      [4, 0x4f],
    ])
      held.put(slot, item(fill));
    for (let s = 100; s < 300; s++) held.put(s, item(s & 0xff));
    assert.deepEqual([...held.held(4)!], [...item(0x4f)], 'a held item reads back, the last one');
    assert.equal(held.held(6), undefined);
    assert.deepEqual(slotOf(readFileSync(path), 4), [...item(0)], 'nothing written yet');
    held.write();
    const file = readFileSync(path);
    assert.deepEqual(slotOf(file, 3), [...item(0x33)]);
    assert.deepEqual(slotOf(file, 4), [...item(0x4f)]);
    assert.deepEqual(slotOf(file, 5), [...item(0x55)]);
    assert.deepEqual(slotOf(file, 6), [...item(0)]);
    assert.deepEqual(slotOf(file, 9), [...item(0x99)]);
    for (let s = 100; s < 300; s++) assert.deepEqual(slotOf(file, s), [...item(s & 0xff)]);
    assert.equal(held.holding, false);
    held.put(7, item(0x77));
    assert.deepEqual(slotOf(readFileSync(path), 7), [...item(0x77)], 'not holding: at once');
    closeSync(fd);
  });

  test('a run longer than one writev takes is written whole', () => {
    const fd = fresh();
    const held = new HeldWrites(fd, ITEM);
    held.hold();
    for (let s = 0; s < 1500; s++) held.put(s, item((s * 7) & 0xff));
    held.write();
    const file = readFileSync(path);
    for (let s = 0; s < 1500; s++) assert.deepEqual(slotOf(file, s), [...item((s * 7) & 0xff)]);
    closeSync(fd);
  });

  test('discard() writes nothing of what was held', () => {
    const fd = fresh();
    const held = new HeldWrites(fd, ITEM);
    held.hold();
    held.put(2, item(0x22));
    held.discard();
    assert.equal(held.holding, false);
    assert.deepEqual(slotOf(readFileSync(path), 2), [...item(0)]);
    closeSync(fd);
  });

  test('blocks by reference: the items themselves are written, in runs, as they are at write()', () => {
    const fd = fresh();
    const held = new HeldWrites(fd, ITEM, undefined, true);
    const a = item(0xa0);
    const b = item(0xb0);
    held.hold();
    held.put(21, b);
    held.put(20, a);
    a.fill(0xa1); // a reference, not a copy
    held.write();
    const file = readFileSync(path);
    assert.deepEqual(slotOf(file, 20), [...item(0xa1)]);
    assert.deepEqual(slotOf(file, 21), [...item(0xb0)]);
    closeSync(fd);
  });

  test('records mode: the slots named are written from the source table, in runs', () => {
    const fd = fresh();
    const table = new Uint8Array(ITEM * SLOTS);
    const held = new HeldWrites(fd, ITEM, table);
    held.hold();
    for (const slot of [12, 10, 11, 40]) {
      table.fill(slot, slot * ITEM, (slot + 1) * ITEM);
      held.put(slot);
    }
    table.fill(0xee, 13 * ITEM, 14 * ITEM); // changed but not named: not written
    held.write();
    const file = readFileSync(path);
    for (const slot of [10, 11, 12, 40]) assert.deepEqual(slotOf(file, slot), [...item(slot)]);
    assert.deepEqual(slotOf(file, 13), [...item(0)]);
    closeSync(fd);
  });

  describe('around the page cache', () => {
    const BLOCK = 65536;
    function freshBlocks(count: number): { fd: number; direct: number | undefined } {
      writeFileSync(path, new Uint8Array(BLOCK * count));
      return { fd: openSync(path, 'r+'), direct: openDirect(path) };
    }

    test('page-aligned blocks go to the direct handle; the fallback is not used', (t) => {
      const { fd, direct } = freshBlocks(4);
      if (direct === undefined) {
        closeSync(fd);
        t.skip(`${tmpdir()} does not take O_DIRECT`);
        return;
      }
      const memory = new Uint8Array(pageAlignedSharedMemory(3 * BLOCK)!);
      const blocks = [0, 1, 2].map((i) => memory.subarray(i * BLOCK, (i + 1) * BLOCK).fill(i + 1));
      const held = new HeldWrites(direct, BLOCK, undefined, true, fd);
      held.hold();
      held.put(2, blocks[1]);
      held.put(1, blocks[0]);
      held.put(3, blocks[2]);
      held.write();
      assert.equal(held.fellBack, false);
      const file = readFileSync(path);
      for (const [slot, fill] of [
        [0, 0],
        [1, 1],
        [2, 2],
        [3, 3],
      ])
        assert.ok(
          file.subarray(slot * BLOCK, (slot + 1) * BLOCK).every((b) => b === fill),
          `slot ${slot}`,
        );
      closeSync(direct);
      closeSync(fd);
    });

    test('a write refused there (memory not aligned) lands through the fallback, and so do the next', () => {
      const { fd, direct } = freshBlocks(4);
      // A Buffer from Node's allocator, one byte in: never aligned for O_DIRECT.
      const unaligned = Buffer.alloc(2 * BLOCK + 1).subarray(1);
      const first = unaligned.subarray(0, BLOCK).fill(0x11);
      const second = unaligned.subarray(BLOCK, 2 * BLOCK).fill(0x22);
      // Without O_DIRECT here the "direct" handle is the ordinary one: nothing to refuse.
      const held = new HeldWrites(direct ?? fd, BLOCK, undefined, true, fd);
      held.hold();
      held.put(1, first);
      held.write();
      held.put(3, second); // not holding: written at once
      if (direct !== undefined) assert.equal(held.fellBack, true);
      const file = readFileSync(path);
      assert.ok(file.subarray(BLOCK, 2 * BLOCK).every((b) => b === 0x11));
      assert.ok(file.subarray(3 * BLOCK, 4 * BLOCK).every((b) => b === 0x22));
      assert.ok(file.subarray(0, BLOCK).every((b) => b === 0));
      if (direct !== undefined) closeSync(direct);
      closeSync(fd);
    });
  });
});
