import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockCache, SlotState, type CacheOwner } from './block-cache.js';

function owner(): CacheOwner & { evictions: number[] } {
  const evictions: number[] = [];
  return { evictions, evicted: (index) => evictions.push(index), writeBack: () => undefined };
}

test('slots are views into one shared buffer', () => {
  const cache = new BlockCache(4096, 64 * 4096);
  assert.ok(cache.buffer instanceof SharedArrayBuffer);
  const o = owner();
  const slot = cache.acquire(o, 0, SlotState.Dirty);
  cache.view(slot).fill(7);
  assert.equal(new Uint8Array(cache.buffer)[slot * 4096 + 100], 7);
  assert.equal(cache.dirtySlots, 1);
});

test('dirty and busy slots are never evicted; clean ones are, least recently used first', () => {
  const cache = new BlockCache(4096, 64 * 4096);
  const o = owner();
  const slots: number[] = [];
  for (let i = 0; i < 64; i++) slots.push(cache.acquire(o, i, SlotState.Dirty));
  assert.equal(cache.acquire(o, 99, SlotState.Dirty), -1, 'all dirty: nothing to evict');
  for (const slot of slots) cache.setState(slot, SlotState.Clean);
  cache.setState(slots[5], SlotState.Flushing);
  const got = cache.acquire(o, 100, SlotState.Loading);
  assert.ok(got >= 0);
  assert.equal(o.evictions.length, 1);
  assert.notEqual(o.evictions[0], 5);
});

test('waiters wake when a slot is freed or cleaned', async () => {
  const cache = new BlockCache(4096, 64 * 4096);
  const o = owner();
  const slot = cache.acquire(o, 0, SlotState.Dirty);
  let woke = false;
  const waiting = cache.whenSlotFreed().then(() => (woke = true));
  cache.setState(slot, SlotState.Clean);
  await waiting;
  assert.equal(woke, true);
  assert.equal(cache.dirtySlots, 0);
});
