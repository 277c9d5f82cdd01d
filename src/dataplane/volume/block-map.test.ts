import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockMap, ENTRY_SEALED, pageIndex } from './block-map.js';

const BS = 4096; // 256 entries a page: small trees get several levels

function commitDraft(map: BlockMap, gen: number, edit: (d: ReturnType<BlockMap['draft']>) => void) {
  const draft = map.draft(gen);
  edit(draft);
  let root = map.root;
  const written: string[] = [];
  for (let level = 0; level < map.height; level++) {
    for (const page of draft.pagesToWrite(level)) {
      written.push(`${level}/${page.pageNo}`);
      const top = draft.pageWritten(level, page.pageNo, page.pageNo + 1, level);
      if (top) root = top;
    }
  }
  if (draft.rootCleared()) root = undefined;
  const superseded = draft.supersededRefs();
  draft.commit(root);
  return { written, superseded };
}

test('height grows with the volume: one page per fanout^level blocks', () => {
  assert.equal(new BlockMap(1, BS, 256, undefined).height, 1);
  assert.equal(new BlockMap(1, BS, 257, undefined).height, 2);
  assert.equal(new BlockMap(1, 65536, 2 ** 24, undefined).height, 2); // 1 TiB of 64 KiB blocks
});

test('a new map is all holes and has no root', () => {
  const map = new BlockMap(7, BS, 1000, undefined);
  assert.equal(map.lookup(0), undefined);
  assert.equal(map.isPresent(999), false);
  assert.deepEqual([...map.referencedRefs()], []);
});

test('a flush rewrites only the pages on the path of changed blocks', () => {
  const map = new BlockMap(7, BS, 256 * 256, undefined); // height 2
  const first = commitDraft(map, 1, (d) => {
    d.setEntry(0, 5, 0, 11, 12);
    d.setEntry(0, 256 * 100 + 3, ENTRY_SEALED, 13, 14);
  });
  assert.deepEqual(first.written.sort(), ['0/0', '0/100', '1/0']);
  assert.deepEqual(map.lookup(5), { generation: 1, flags: 1, hashLo: 11, hashHi: 12 });
  assert.equal(map.lookup(256 * 100 + 3)!.flags & ENTRY_SEALED, ENTRY_SEALED);
  assert.equal(map.root?.generation, 1);

  const second = commitDraft(map, 2, (d) => d.setEntry(0, 6, 0, 21, 22));
  assert.deepEqual(second.written.sort(), ['0/0', '1/0']);
  // The old leaf 0 and old root are superseded; block 5 and leaf 100 are not.
  const superseded = second.superseded.map((r) => `${r.generation}:${r.index}`).sort();
  assert.deepEqual(superseded, [`1:${pageIndex(0, 0)}`, `1:${pageIndex(1, 0)}`].sort());
  assert.equal(map.lookup(5)!.generation, 1);
  assert.equal(map.lookup(6)!.generation, 2);
});

test('overwritten and cleared blocks are superseded; an emptied tree has no root', () => {
  const map = new BlockMap(3, BS, 100, undefined);
  commitDraft(map, 1, (d) => d.setEntry(0, 1, 0, 1, 1));
  const overwrite = commitDraft(map, 2, (d) => d.setEntry(0, 1, 0, 2, 2));
  assert.ok(overwrite.superseded.some((r) => r.generation === 1 && r.index === 1));
  const clear = commitDraft(map, 3, (d) => d.clearEntry(0, 1));
  assert.ok(clear.superseded.some((r) => r.generation === 2 && r.index === 1));
  assert.equal(map.root, undefined);
  assert.equal(map.isPresent(1), false);
});

test('a draft that is never committed leaves the map untouched', () => {
  const map = new BlockMap(3, BS, 100, undefined);
  commitDraft(map, 1, (d) => d.setEntry(0, 9, 0, 1, 1));
  const draft = map.draft(2);
  draft.setEntry(0, 9, 0, 5, 5);
  draft.clearEntry(0, 9);
  assert.equal(map.lookup(9)!.hashLo, 1);
});

test('referencedRefs lists the root, every page and every data block', () => {
  const map = new BlockMap(9, BS, 256 * 256, undefined);
  commitDraft(map, 4, (d) => {
    d.setEntry(0, 0, 0, 1, 1);
    d.setEntry(0, 300, 0, 1, 1);
  });
  const refs = [...map.referencedRefs()].map((r) => r.index).sort((a, b) => a - b);
  assert.deepEqual(
    refs,
    [0, 300, pageIndex(0, 0), pageIndex(0, 1), pageIndex(1, 0)].sort((a, b) => a - b),
  );
});
