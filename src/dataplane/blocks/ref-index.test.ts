import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAP_PAGE_BIT } from '../../model/block-ref.js';
import { RefIndex } from './ref-index.js';

test('set says what a ref named before, delete what it named; size counts refs', () => {
  const index = new RefIndex();
  assert.equal(index.set(1, 2, 3, 10), undefined);
  assert.equal(index.set(1, 2, 4, 11), undefined);
  assert.equal(index.set(2, 2, 3, 12), undefined);
  assert.equal(index.size, 3);
  assert.equal(index.set(1, 2, 3, 13), 10, 'rebinding names the slot it replaces');
  assert.equal(index.size, 3);
  assert.equal(index.get(1, 2, 3), 13);
  assert.equal(index.get(1, 3, 3), undefined);
  assert.equal(index.delete(1, 2, 3), 13);
  assert.equal(index.delete(1, 2, 3), undefined);
  assert.equal(index.size, 2);
  assert.deepEqual([...index.slots()].sort(), [11, 12]);
});

test('indexes up to 2^53 (map pages) are kept exactly', () => {
  const index = new RefIndex();
  const page = MAP_PAGE_BIT + 12345;
  index.set(1, 1, page, 7);
  index.set(1, 1, page + 1, 8);
  assert.equal(index.get(1, 1, page), 7);
  assert.equal(index.get(1, 1, page + 1), 8);
});

test('iterating while refs come and go sees each ref present throughout exactly once', () => {
  const index = new RefIndex();
  for (let i = 0; i < 100; i++) index.set(i % 3, i % 2, i, i);
  const seen: number[] = [];
  let step = 0;
  for (const slot of index.slots()) {
    seen.push(slot);
    // Drop and add refs as the iteration goes, emptying and re-making inner maps.
    if (step++ === 10) {
      for (let i = 0; i < 100; i += 7) if (i !== slot) index.delete(i % 3, i % 2, i);
      for (let i = 100; i < 120; i++) index.set(5, 5, i, i);
    }
  }
  const steady = Array.from({ length: 100 }, (_, i) => i).filter((i) => i % 7 !== 0);
  for (const slot of steady)
    assert.equal(seen.filter((s) => s === slot).length, 1, `slot ${slot} seen once`);
});
