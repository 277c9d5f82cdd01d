import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InvariantError } from '../../common/assert.js';
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

const broken = (pattern: RegExp) => (err: unknown) =>
  err instanceof InvariantError && pattern.test(err.message);

test('the transitions volumes make are allowed, from every state a slot can be freed', () => {
  const cache = new BlockCache(4096, 64 * 4096);
  const o = owner();
  const slot = cache.acquire(o, 0, SlotState.Loading);
  for (const next of [
    SlotState.Clean,
    SlotState.Dirty,
    SlotState.Flushing,
    SlotState.Dirty,
    SlotState.Flushing,
    SlotState.Clean,
  ]) {
    cache.setState(slot, next);
  }
  assert.equal(cache.dirtySlots, 0);
  for (const state of [SlotState.Clean, SlotState.Dirty, SlotState.Loading, SlotState.Flushing]) {
    const s = cache.acquire(
      o,
      1,
      state === SlotState.Loading ? SlotState.Loading : SlotState.Dirty,
    );
    if (state === SlotState.Clean || state === SlotState.Flushing) cache.setState(s, state);
    cache.free(s);
  }
  assert.equal(cache.dirtySlots, 0);
  assert.equal(cache.freeSlots, 63);
});

test('a slot never leaves Loading except to Clean, never goes to Free by setState, to Loading only from Clean, never moves once free', () => {
  const cache = new BlockCache(4096, 64 * 4096);
  const o = owner();
  const loading = cache.acquire(o, 0, SlotState.Loading);
  assert.throws(() => cache.setState(loading, SlotState.Dirty), broken(/Loading to Dirty/));
  assert.throws(() => cache.setState(loading, SlotState.Flushing), broken(/Loading to Flushing/));
  assert.throws(() => cache.setState(loading, SlotState.Free), broken(/Loading to Free/));
  const dirty = cache.acquire(o, 1, SlotState.Dirty);
  assert.throws(() => cache.setState(dirty, SlotState.Loading), broken(/Dirty to Loading/));
  assert.equal(cache.dirtySlots, 1, 'a refused transition changes nothing');
  cache.free(dirty);
  assert.throws(() => cache.setState(dirty, SlotState.Clean), broken(/Free to Clean/));
  assert.equal(cache.dirtySlots, 0);
});

test('a slot freed twice is refused and the free list keeps it once', () => {
  const cache = new BlockCache(4096, 64 * 4096);
  const slot = cache.acquire(owner(), 0, SlotState.Dirty);
  cache.free(slot);
  assert.throws(() => cache.free(slot), broken(/freed twice/));
  assert.equal(cache.freeSlots, 64);
  // Pinned: the free is deferred, and a second one is still refused.
  const pinned = cache.acquire(owner(), 0, SlotState.Dirty);
  cache.pin(pinned);
  cache.free(pinned);
  assert.throws(() => cache.free(pinned), broken(/freed twice/));
  cache.unpin(pinned);
  assert.equal(cache.freeSlots, 64);
});

test('pin counts never go below zero', () => {
  const cache = new BlockCache(4096, 64 * 4096);
  const slot = cache.acquire(owner(), 0, SlotState.Dirty);
  assert.throws(() => cache.unpin(slot), broken(/is not pinned/));
  cache.pin(slot);
  cache.unpin(slot);
  assert.throws(() => cache.unpin(slot), broken(/is not pinned/));
});

test('a slot on the free list that is in use, and an owner that changes a slot it is told was evicted, are caught', () => {
  const cache = new BlockCache(4096, 64 * 4096);
  // Corrupt the state behind the cache's back: the next slot on the free list looks dirty.
  const slot = cache.acquire(owner(), 0, SlotState.Dirty);
  cache.free(slot);
  cache.state[slot] = SlotState.Dirty;
  assert.throws(() => cache.acquire(owner(), 1, SlotState.Dirty), broken(/free list is in use/));

  const full = new BlockCache(4096, 64 * 4096);
  const meddler: CacheOwner = {
    evicted: (_index, s) => full.setState(s, SlotState.Dirty),
    writeBack: () => undefined,
  };
  for (let i = 0; i < 64; i++)
    full.setState(full.acquire(meddler, i, SlotState.Loading), SlotState.Clean);
  assert.throws(
    () => full.acquire(meddler, 99, SlotState.Dirty),
    broken(/evicted\(\) changed the slot/),
  );
});

test('valid masks: a range maps to the sub-blocks it touches; a partial slot keeps its mask through write-back', () => {
  const cache = new BlockCache(64 * 1024, 64 * 64 * 1024);
  assert.equal(cache.subBlocks, 16);
  assert.equal(cache.wholeMask, 0xffff);
  assert.equal(cache.maskOf(0, 4096), 0b1);
  assert.equal(cache.maskOf(4095, 2), 0b11);
  assert.equal(cache.maskOf(5 * 4096 + 10, 100), 1 << 5);
  assert.equal(cache.maskOf(0, 64 * 1024), 0xffff);
  assert.equal(cache.maskOf(15 * 4096, 4096), 0x8000);
  const o = owner();
  // A fresh slot is whole until its filler says otherwise.
  const slot = cache.acquire(o, 0, SlotState.Loading);
  assert.ok(cache.isWhole(slot));
  cache.setValid(slot, 1 << 5);
  cache.setState(slot, SlotState.Clean);
  assert.ok(cache.covers(slot, cache.maskOf(5 * 4096, 4096)));
  assert.equal(cache.covers(slot, cache.maskOf(5 * 4096, 4097)), false);
  // Filled further in place: Clean → Loading → Clean.
  cache.setState(slot, SlotState.Loading);
  cache.setValid(slot, (1 << 5) | (1 << 6));
  cache.setState(slot, SlotState.Clean);
  assert.ok(cache.covers(slot, cache.maskOf(5 * 4096, 8192)));
  assert.throws(() => cache.setValid(slot, 1 << 16), broken(/sub-blocks of the block/));
  // Written in part: Dirty, still partial; written back only once whole.
  cache.setState(slot, SlotState.Dirty);
  assert.equal(cache.dirtySlots, 1);
  assert.equal(cache.isWhole(slot), false);
  // Stored as a patch (blocks/patches.ts): written back as it is, and still partial after.
  cache.setState(slot, SlotState.Flushing);
  assert.equal(cache.dirtySlots, 0);
  cache.setState(slot, SlotState.Clean);
  assert.equal(cache.validMask(slot), (1 << 5) | (1 << 6));
});

test('whole sub-blocks of a range: only a range of exactly whole 4 KiB sub-blocks has them', () => {
  const cache = new BlockCache(64 * 1024, 64 * 64 * 1024);
  assert.equal(cache.wholeSubBlocksOf(0, 4096), 0b1);
  assert.equal(cache.wholeSubBlocksOf(8192, 8192), 0b1100);
  assert.equal(cache.wholeSubBlocksOf(0, 64 * 1024), 0xffff);
  assert.equal(cache.wholeSubBlocksOf(512, 4096), 0, 'unaligned start');
  assert.equal(cache.wholeSubBlocksOf(4096, 512), 0, 'part of a sub-block');
  assert.equal(cache.wholeSubBlocksOf(4096, 0), 0, 'nothing');
  assert.equal(new BlockCache(256 * 1024, 64 * 256 * 1024).wholeSubBlocksOf(0, 4096), 0);
});

test('blocks of more than 32 sub-blocks are always whole', () => {
  const cache = new BlockCache(256 * 1024, 64 * 256 * 1024);
  assert.equal(cache.subBlocks, 0);
  assert.equal(cache.maskOf(4096, 4096), 0);
  const slot = cache.acquire(owner(), 0, SlotState.Loading);
  assert.ok(cache.covers(slot, cache.maskOf(4096, 4096)));
  assert.ok(cache.isWhole(slot));
});

test('acquireZeroed hands out zeros, whether the slot is fresh, freed or evicted', () => {
  const cache = new BlockCache(4096, 64 * 4096);
  const o = owner();
  const isZero = (slot: number) => cache.view(slot).every((byte) => byte === 0);
  // Every slot once, through the zeroing path or not, each left holding data.
  const slots: number[] = [];
  for (let i = 0; i < 64; i++) {
    const slot = i % 2 === 0 ? cache.acquireZeroed(o, i) : cache.acquire(o, i, SlotState.Dirty);
    assert.ok(slot >= 0);
    if (i % 2 === 0) assert.ok(isZero(slot), 'a fresh slot is zero');
    assert.equal(cache.state[slot], SlotState.Dirty);
    cache.view(slot).fill(0xab);
    slots.push(slot);
  }
  // Freed: it comes back from the free list, filled again.
  cache.free(slots[3]);
  const reused = cache.acquireZeroed(o, 100);
  assert.equal(reused, slots[3]);
  assert.ok(isZero(reused), 'a freed slot that held data is zeroed');
  // Evicted: no free slot left, a clean one is taken, filled again.
  cache.view(reused).fill(0xcd);
  for (const slot of slots) cache.setState(slot, SlotState.Clean);
  const evicted = cache.acquireZeroed(o, 101);
  assert.ok(evicted >= 0);
  assert.equal(o.evictions.length, 1);
  assert.ok(isZero(evicted), 'an evicted slot that held data is zeroed');
});
