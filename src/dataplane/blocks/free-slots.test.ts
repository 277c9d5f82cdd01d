import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InvariantError } from '../../common/assert.js';
import { FreeSlots } from './free-slots.js';

test('the stack goes first (last put, first taken), then the frontier in order, then none', () => {
  const free = new FreeSlots(6, 3);
  assert.equal(free.count, 3);
  free.put(1);
  free.put(0);
  assert.equal(free.count, 5);
  assert.deepEqual(
    [free.take(), free.take(), free.take(), free.take(), free.take()],
    [0, 1, 3, 4, 5],
  );
  assert.equal(free.count, 0);
  assert.equal(free.take(), -1);
});

test('the stack grows past its first size, up to every slot below the frontier', () => {
  const slots = 5000;
  const free = new FreeSlots(slots, slots);
  for (let slot = slots - 1; slot >= 0; slot--) free.put(slot);
  assert.equal(free.count, slots);
  for (let slot = 0; slot < slots; slot++) assert.equal(free.take(), slot);
  assert.equal(free.take(), -1);
});

test('a slot at or past the frontier, or one more than can be free, is refused', () => {
  const free = new FreeSlots(8, 2);
  assert.throws(() => free.put(2), InvariantError);
  free.put(0);
  free.put(1);
  assert.throws(() => free.put(0), InvariantError);
  assert.throws(() => new FreeSlots(8, 9), InvariantError);
});
