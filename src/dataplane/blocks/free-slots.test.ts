import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InvariantError } from '../../common/assert.js';
import { FreeSlots } from './free-slots.js';

function takeAll(free: FreeSlots): number[] {
  const taken: number[] = [];
  for (let slot = free.take(); slot >= 0; slot = free.take()) taken.push(slot);
  return taken;
}

test('an empty store hands out its slots in order, then none', () => {
  const free = new FreeSlots(100, 0);
  assert.equal(free.count, 100);
  assert.deepEqual(
    takeAll(free),
    Array.from({ length: 100 }, (_, i) => i),
  );
  assert.equal(free.count, 0);
  assert.equal(free.take(), -1);
});

test('scattered free slots wait while a run of 32 or more is left; then they go in order', () => {
  // 0..199 in use; every third slot below 96 released; 100..163 released as one run.
  const free = new FreeSlots(200, 200);
  const scattered = [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48, 51, 54, 57];
  for (const slot of scattered) free.put(slot);
  for (let slot = 100; slot < 164; slot++) free.put(slot);
  const taken = takeAll(free);
  assert.deepEqual(
    taken,
    [...Array.from({ length: 64 }, (_, i) => 100 + i), ...scattered],
    'the run first, consecutively, then the single slots from the start',
  );
});

test('a run is entered at its first free slot, not at the whole word the search found', () => {
  const free = new FreeSlots(256, 256);
  for (let slot = 40; slot < 140; slot++) free.put(slot);
  assert.equal(free.take(), 40);
  assert.equal(free.take(), 41);
});

test('a run continues past the frontier, and the store grows from there before scattered slots are reused', () => {
  const free = new FreeSlots(1000, 10);
  free.put(2);
  free.put(5);
  assert.deepEqual(
    Array.from({ length: 5 }, () => free.take()),
    [10, 11, 12, 13, 14],
  );
  assert.equal(free.count, 1000 - 15 + 2);
});

test('released slots are reused after the cursor wraps, and in order', () => {
  const slots = 5000;
  const free = new FreeSlots(slots, 0);
  assert.equal(takeAll(free).length, slots);
  for (let slot = slots - 1; slot >= 0; slot--) free.put(slot);
  assert.equal(free.count, slots);
  assert.deepEqual(
    takeAll(free),
    Array.from({ length: slots }, (_, i) => i),
  );
});

test('count, take and put agree under a random mix (checked against a plain set)', () => {
  let seed = 7;
  const random = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const slots = 777;
  const free = new FreeSlots(slots, 300);
  const inUse = new Set<number>(Array.from({ length: 300 }, (_, i) => i));
  for (let i = 0; i < 20000; i++) {
    if (random() < 0.5 && inUse.size > 0) {
      const list = [...inUse];
      const slot = list[Math.floor(random() * list.length)];
      inUse.delete(slot);
      free.put(slot);
    } else {
      const slot = free.take();
      if (inUse.size === slots) {
        assert.equal(slot, -1);
      } else {
        assert.ok(slot >= 0 && slot < slots && !inUse.has(slot), `slot ${slot} taken twice`);
        inUse.add(slot);
      }
    }
    assert.equal(free.count, slots - inUse.size);
  }
});

test('a slot at or past the frontier, or one already free, is refused', () => {
  const free = new FreeSlots(8, 2);
  assert.throws(() => free.put(2), InvariantError);
  free.put(0);
  free.put(1);
  assert.throws(() => free.put(0), InvariantError);
  assert.throws(() => new FreeSlots(8, 9), InvariantError);
});
