/**
 * The cluster GC rules (gc-view.ts), pure: which local blocks are garbage
 * given a listing of the catalog and the volumes this store held blocks of
 * before the listing.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { MAP_PAGE_BIT, type BlockRef } from '../../model/block-ref.js';
import { classifyBlock, gcViewOf, isGarbage } from './gc-view.js';

const ref = (volumeId: number, generation: number, index: number): BlockRef => ({
  volumeId,
  generation,
  index,
});

describe('cluster GC rules', () => {
  // Volume 500 committed generation 3: block 0 rewritten in 3, block 1 from 1,
  // its root map page from 3. Volume 9 committed nothing yet.
  const view = gcViewOf([
    { id: 500, generation: 3, refs: [ref(500, 3, 0), ref(500, 1, 1), ref(500, 3, MAP_PAGE_BIT)] },
    { id: 9, generation: 0, refs: [] },
  ]);
  const before = new Set([500, 9, 77]);

  test('blocks and map pages the committed version references are kept', () => {
    assert.equal(classifyBlock(ref(500, 3, 0), view, before), 'referenced');
    assert.equal(classifyBlock(ref(500, 1, 1), view, before), 'referenced');
    assert.equal(classifyBlock(ref(500, 3, MAP_PAGE_BIT), view, before), 'referenced');
  });

  test('unreferenced blocks of a committed generation or older are superseded, pages too', () => {
    assert.equal(
      classifyBlock(ref(500, 1, 0), view, before),
      'superseded',
      'block 0 of gen 1, rewritten in gen 3',
    );
    assert.equal(
      classifyBlock(ref(500, 3, 5), view, before),
      'superseded',
      'written for gen 3 but not in its map (trimmed or spilled twice)',
    );
    assert.equal(
      classifyBlock(ref(500, 2, MAP_PAGE_BIT), view, before),
      'superseded',
      'the root page of gen 2',
    );
    assert.ok(isGarbage('superseded'));
  });

  test('blocks of a generation not committed yet are never garbage', () => {
    assert.equal(classifyBlock(ref(500, 4, 0), view, before), 'unknown');
    assert.equal(classifyBlock(ref(500, 4, MAP_PAGE_BIT), view, before), 'unknown');
    assert.equal(
      classifyBlock(ref(9, 1, 0), view, before),
      'unknown',
      "a new volume's first version in flight",
    );
    assert.ok(!isGarbage('unknown'));
  });

  test('a volume gone from the listing that this store held before it is deleted', () => {
    assert.equal(classifyBlock(ref(77, 1, 0), view, before), 'deleted');
    assert.equal(
      classifyBlock(ref(77, 999, 0), view, before),
      'deleted',
      'whatever the generation',
    );
    assert.ok(isGarbage('deleted'));
  });

  test('a volume unknown to the listing and unseen before it (created meanwhile) is kept, whatever its id', () => {
    // Ids are random: one below every listed id is no evidence of deletion.
    assert.equal(classifyBlock(ref(3, 1, 0), view, before), 'unknown');
    assert.equal(classifyBlock(ref(0x7fff_fffe, 1, 0), view, before), 'unknown');
  });

  test('a ref another listed volume references (a clone) is kept even when its own volume is gone', () => {
    const clone = gcViewOf([{ id: 600, generation: 1, refs: [ref(600, 1, 0), ref(77, 2, 4)] }]);
    assert.equal(classifyBlock(ref(77, 2, 4), clone, before), 'referenced');
    assert.equal(classifyBlock(ref(77, 2, 5), clone, before), 'deleted');
  });

  test('an empty catalog frees every block of volumes seen before, nothing else', () => {
    const empty = gcViewOf([]);
    assert.equal(classifyBlock(ref(500, 1, 0), empty, before), 'deleted');
    assert.equal(classifyBlock(ref(501, 1, 0), empty, before), 'unknown');
  });
});
