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

/** Committed pages by ref, as a store would hold them, to load a map back from its root. */
function storeDraft(
  map: BlockMap,
  gen: number,
  pages: Map<string, Uint32Array>,
  edit: (d: ReturnType<BlockMap['draft']>) => void,
) {
  const draft = map.draft(gen);
  edit(draft);
  let root = map.root;
  const written: string[] = [];
  for (let level = 0; level < draft.height; level++) {
    for (const page of draft.pagesToWrite(level)) {
      written.push(`${level}/${page.pageNo}`);
      // The page's "hash" names it in `pages`: level and generation are enough here.
      pages.set(`${gen}:${page.ref.index}`, new Uint32Array(page.bytes.slice().buffer));
      const top = draft.pageWritten(level, page.pageNo, page.ref.index % 2 ** 32, gen);
      if (top) root = top;
    }
  }
  if (draft.rootCleared()) root = undefined;
  const superseded = draft.supersededRefs();
  draft.commit(root);
  return { written, superseded, height: draft.height };
}

/** Load a map from its root the way Volume.open does, top down. */
function loadMap(
  blockCount: number,
  root: ReturnType<BlockMap['draft']> extends never ? never : BlockMap['root'],
  rootHeight: number | undefined,
  pages: Map<string, Uint32Array>,
): BlockMap {
  const map = new BlockMap(7, BS, blockCount, root, rootHeight);
  if (!root) return map;
  const install = (level: number, pageNo: number, gen: number) => {
    const page = pages.get(`${gen}:${pageIndex(level, pageNo)}`);
    assert.ok(page, `page ${level}/${pageNo} of generation ${gen} was stored`);
    map.installPage(level, pageNo, page.slice());
  };
  install(map.rootLevel, 0, root.generation);
  for (let level = map.rootLevel; level > 0; level--)
    for (const child of map.childPages(level))
      install(level - 1, child, map.entryWords(level, child)![0]);
  return map;
}

test('growing past a level boundary keeps the root until a commit writes the new top page', () => {
  const pages = new Map<string, Uint32Array>();
  const map = new BlockMap(7, BS, 256, undefined); // height 1: one leaf is the root
  storeDraft(map, 1, pages, (d) => {
    d.setEntry(0, 3, 0, 31, 32);
    d.setEntry(0, 255, 0, 41, 42);
  });
  const oldRoot = map.root!;
  assert.equal(map.height, 1);

  map.resize(256 * 256 + 1); // needs height 3
  assert.equal(map.height, 3);
  assert.equal(map.rootHeight, 1, 'the committed root still tops a one-level tree');
  assert.equal(map.lookup(3)!.hashLo, 31, 'entries under the old root read as before');
  assert.equal(map.lookup(256 * 256), undefined);
  // The pages above the root are not stored: only the old root is referenced.
  assert.deepEqual(
    [...map.referencedRefs()].map((r) => r.index).sort((a, b) => a - b),
    [3, 255, pageIndex(0, 0)],
  );
  // A reader of the unchanged record (size grown, mapHeight 1) sees the same map.
  const reread = loadMap(256 * 256 + 1, oldRoot, 1, pages);
  assert.equal(reread.height, 3);
  assert.equal(reread.lookup(255)!.hashLo, 41);

  // A write past the old end: the commit writes the leaf, and the two new upper pages.
  const grown = storeDraft(map, 2, pages, (d) => d.setEntry(0, 256 * 256, 0, 51, 52));
  assert.equal(grown.height, 3);
  assert.deepEqual(grown.written.sort(), ['0/256', '1/0', '1/1', '2/0']);
  assert.deepEqual(grown.superseded, [], 'the old root stays: the new tree points at it');
  assert.equal(map.rootHeight, 3);
  assert.equal(map.root!.generation, 2);

  const reloaded = loadMap(256 * 256 + 1, map.root, 3, pages);
  assert.equal(reloaded.lookup(3)!.hashLo, 31);
  assert.equal(reloaded.lookup(255)!.generation, 1);
  assert.equal(reloaded.lookup(256 * 256)!.hashLo, 51);
  assert.deepEqual(
    [...reloaded.referencedRefs()].map((r) => `${r.generation}:${r.index}`).sort(),
    [...map.referencedRefs()].map((r) => `${r.generation}:${r.index}`).sort(),
  );
});

test('a commit under the old root after a grow supersedes the old root page', () => {
  const pages = new Map<string, Uint32Array>();
  const map = new BlockMap(7, BS, 200, undefined);
  storeDraft(map, 1, pages, (d) => d.setEntry(0, 5, 0, 1, 1));
  map.resize(1000); // height 2
  const { written, superseded } = storeDraft(map, 2, pages, (d) => d.setEntry(0, 5, 0, 2, 2));
  assert.deepEqual(written.sort(), ['0/0', '1/0']);
  assert.deepEqual(
    superseded.map((r) => `${r.generation}:${r.index}`).sort(),
    ['1:5', `1:${pageIndex(0, 0)}`].sort(),
  );
  const reloaded = loadMap(1000, map.root, 2, pages);
  assert.equal(reloaded.lookup(5)!.hashLo, 2);
});

test('a shrink keeps the height; blocks past the end are found for trimming', () => {
  const pages = new Map<string, Uint32Array>();
  const map = new BlockMap(7, BS, 1000, undefined); // height 2
  storeDraft(map, 1, pages, (d) => {
    d.setEntry(0, 10, 0, 1, 1);
    d.setEntry(0, 600, 0, 1, 1);
    d.setEntry(0, 999, 0, 1, 1);
  });
  assert.deepEqual(map.presentFrom(100), [600, 999]);
  map.resize(100);
  assert.equal(map.height, 2, 'the height never goes down');
  storeDraft(map, 2, pages, (d) => {
    d.clearEntry(0, 600);
    d.clearEntry(0, 999);
  });
  const reloaded = loadMap(100, map.root, 2, pages);
  assert.equal(reloaded.height, 2);
  assert.equal(reloaded.lookup(10)!.generation, 1);
  assert.deepEqual(reloaded.presentFrom(0), [10]);
});

test('a grow while a draft is under way applies after it commits', () => {
  const pages = new Map<string, Uint32Array>();
  const map = new BlockMap(7, BS, 100, undefined);
  const draft = map.draft(1);
  draft.setEntry(0, 1, 0, 1, 1);
  map.resize(300); // height 2, while the draft (height 1) is being written
  let root = map.root;
  for (const page of draft.pagesToWrite(0)) {
    pages.set(`1:${page.ref.index}`, new Uint32Array(page.bytes.slice().buffer));
    root = draft.pageWritten(0, page.pageNo, 7, 7) ?? root;
  }
  draft.commit(root);
  assert.equal(map.rootHeight, 1, 'the root the draft wrote tops a one-level tree');
  assert.equal(map.height, 2);
  assert.equal(map.lookup(1)!.hashLo, 1);
  const next = storeDraft(map, 2, pages, (d) => d.setEntry(0, 299, 0, 3, 3));
  assert.deepEqual(next.written.sort(), ['0/1', '1/0']);
  assert.equal(map.rootHeight, 2);
});
