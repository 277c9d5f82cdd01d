/**
 * BlockMap: a volume version's map from block index to stored block, kept as
 * a radix tree of fixed-size pages that are themselves stored as blocks.
 *
 * Each entry is 16 bytes (four u32): generation, flags, hash lo, hash hi. A
 * zero entry is a hole (reads as zeros, stores nothing). A leaf page (level 0)
 * holds the entries of `fanout` consecutive blocks; a page at level L holds the
 * entries of `fanout` pages of level L-1; the single top page is the root,
 * whose entry the volume's metadata record holds.
 *
 * Why a tree of pages: a FLUSH rewrites only the leaves it touched and their
 * parents, so its cost grows with the blocks changed, not the volume size; and
 * an old version stays readable as long as its pages are kept, which is what
 * snapshots and clones need. A 1 TiB volume of 64 KiB blocks needs a two-level
 * tree (4096 entries a page); a new volume is an empty tree (no root).
 *
 * Changes are made on a draft (copy-on-write pages) so a failed flush leaves
 * the committed map untouched.
 *
 * Growing a volume is metadata only, even past a level boundary: the height
 * is the larger of what the block count needs and the height of the tree the
 * committed root tops (`rootHeight`, the record's `mapHeight`). Levels above
 * the root's exist in memory only — one page each whose entry 0 points at the
 * page below, the first at the committed root — until the next commit writes
 * them (every draft starts with them changed). Page numbers within a level do
 * not depend on the height, so the pages under the old root stay valid as
 * they are. The height never goes down: shrinking keeps the taller tree.
 */
import { MAP_PAGE_BIT, type BlockRef } from '../../model/block-ref.js';
import { assert } from '../../common/assert.js';
import { ownerOf, type Ancestor } from '../../model/lineage.js';
import { mapHeightFor, type MapRoot } from '../../model/map-root.js';

export const ENTRY_WORDS = 4;
export const ENTRY_BYTES = ENTRY_WORDS * 4;
export const ENTRY_PRESENT = 1;
export const ENTRY_SEALED = 2;

const W_GEN = 0;
const W_FLAGS = 1;
const W_HASH_LO = 2;
const W_HASH_HI = 3;

export interface MapEntry {
  generation: number;
  flags: number;
  hashLo: number;
  hashHi: number;
}

/** A page that must be written for a draft to commit, bottom level first. */
export interface PageWrite {
  level: number;
  pageNo: number;
  ref: BlockRef;
  bytes: Uint8Array;
}

export function pageIndex(level: number, pageNo: number): number {
  return MAP_PAGE_BIT + level * 2 ** 40 + pageNo;
}

export class BlockMap {
  readonly fanout: number;
  private blocks: number;
  private levelCount: number;
  /** Height of the tree the committed root tops; levels at or above it are in memory only. */
  private rootLevels: number;
  /** Committed pages by level, then page number (and the in-memory pages above the root). */
  private readonly levels: Map<number, Uint32Array>[];

  /**
   * `rootHeight`: the height of the tree `root` tops (the record's
   * `mapHeight`); absent, the height `blockCount` needs (records from before
   * resize, which never changed height).
   */
  constructor(
    readonly volumeId: number,
    readonly blockSize: number,
    blockCount: number,
    public root: MapRoot | undefined,
    rootHeight?: number,
    /** A clone's ancestors (model/lineage.ts): whose blocks its older entries name. */
    readonly ancestors: readonly Ancestor[] = [],
  ) {
    this.fanout = blockSize / ENTRY_BYTES;
    this.blocks = blockCount;
    const needed = mapHeightFor(blockSize, blockCount);
    assert(
      rootHeight === undefined || (Number.isSafeInteger(rootHeight) && rootHeight >= 1),
      () => `volume ${volumeId}: map height ${rootHeight} is not a whole number ≥ 1`,
    );
    this.levelCount = Math.max(needed, rootHeight ?? needed);
    this.rootLevels = root ? (rootHeight ?? needed) : this.levelCount;
    this.levels = Array.from({ length: this.levelCount }, () => new Map());
    this.raiseAboveRoot();
  }

  /** Levels of pages: enough for the block count, never fewer than the committed root's tree. */
  get height(): number {
    return this.levelCount;
  }

  /** Height of the tree the committed root tops (≤ height; below it until a commit writes the upper pages). */
  get rootHeight(): number {
    return this.rootLevels;
  }

  /** The level of the page the committed root names. */
  get rootLevel(): number {
    return this.rootLevels - 1;
  }

  get blockCount(): number {
    return this.blocks;
  }

  /**
   * The volume now has `blockCount` blocks. Growing past what the height
   * covers adds levels in memory (written by the next commit); shrinking
   * keeps the height (the caller has made the blocks past the end holes).
   */
  resize(blockCount: number): void {
    assert(
      Number.isSafeInteger(blockCount) && blockCount >= 1,
      () => `volume ${this.volumeId}: resize to ${blockCount} blocks`,
    );
    this.blocks = blockCount;
    const needed = mapHeightFor(this.blockSize, blockCount);
    if (needed <= this.levelCount) return;
    while (this.levels.length < needed) this.levels.push(new Map());
    this.levelCount = needed;
    if (!this.root) this.rootLevels = needed;
    this.raiseAboveRoot();
  }

  /**
   * (Re)build the in-memory pages above the committed root: at the root's
   * level + 1 a page whose entry 0 is the root, and above it pages whose
   * entry 0 stands for the page below (its hash is filled in when a commit
   * writes that page, bottom up, before the parent).
   */
  private raiseAboveRoot(): void {
    for (let level = this.rootLevels; level < this.levelCount; level++) {
      const page = new Uint32Array(this.fanout * ENTRY_WORDS);
      page[W_FLAGS] = ENTRY_PRESENT;
      if (level === this.rootLevels) {
        page[W_GEN] = this.root!.generation;
        page[W_HASH_LO] = this.root!.hashLo;
        page[W_HASH_HI] = this.root!.hashHi;
      }
      this.levels[level].clear();
      this.levels[level].set(0, page);
    }
  }

  /** The volume whose block an entry of `generation` names: this one, or an ancestor's for a clone. */
  ownerOf(generation: number): number {
    return this.ancestors.length === 0
      ? this.volumeId
      : ownerOf(this.volumeId, this.ancestors, generation);
  }

  /** Install a page read from the store (used while loading a version). */
  installPage(level: number, pageNo: number, words: Uint32Array): void {
    assert(level < this.rootLevels, () => `map page ${level}/${pageNo} is above the root`);
    this.levels[level].set(pageNo, words);
  }

  /** The entry of one block or page in the committed map; undefined for a hole. */
  entryWords(level: number, index: number): Uint32Array | undefined {
    const page = this.levels[level].get(Math.floor(index / this.fanout));
    if (!page) return undefined;
    const at = (index % this.fanout) * ENTRY_WORDS;
    if ((page[at + W_FLAGS] & ENTRY_PRESENT) === 0) return undefined;
    return page.subarray(at, at + ENTRY_WORDS);
  }

  lookup(index: number): MapEntry | undefined {
    const e = this.entryWords(0, index);
    return (
      e && { generation: e[W_GEN], flags: e[W_FLAGS], hashLo: e[W_HASH_LO], hashHi: e[W_HASH_HI] }
    );
  }

  /** True if the block holds data in the committed map (not a hole). */
  isPresent(index: number): boolean {
    return this.entryWords(0, index) !== undefined;
  }

  /** Blocks at or past `first` holding data in the committed map (for a shrink to make them holes). */
  presentFrom(first: number): number[] {
    const out: number[] = [];
    const firstPage = Math.floor(first / this.fanout);
    for (const [pageNo, page] of this.levels[0]) {
      if (pageNo < firstPage) continue;
      for (let i = 0; i < this.fanout; i++) {
        const index = pageNo * this.fanout + i;
        if (index >= first && page[i * ENTRY_WORDS + W_FLAGS] & ENTRY_PRESENT) out.push(index);
      }
    }
    return out;
  }

  /** Page numbers of `level` whose parent entries say they exist, for loading. */
  childPages(level: number): number[] {
    const out: number[] = [];
    for (const [pageNo, page] of this.levels[level]) {
      for (let i = 0; i < this.fanout; i++) {
        if (page[i * ENTRY_WORDS + W_FLAGS] & ENTRY_PRESENT) out.push(pageNo * this.fanout + i);
      }
    }
    return out;
  }

  draft(generation: number): MapDraft {
    return new MapDraft(this, generation);
  }

  /** @internal used by MapDraft */
  committedPage(level: number, pageNo: number): Uint32Array | undefined {
    return this.levels[level].get(pageNo);
  }

  /** @internal used by MapDraft.commit: a draft of `height` levels committed with `root`. */
  committed(
    height: number,
    pages: Map<number, Uint32Array | null>[],
    root: MapRoot | undefined,
  ): void {
    for (let level = 0; level < height; level++) {
      for (const [pageNo, page] of pages[level]) {
        if (page) this.levels[level].set(pageNo, page);
        else this.levels[level].delete(pageNo);
      }
    }
    this.root = root;
    // The draft's top is the new root; a grow since the draft began raises it again.
    this.rootLevels = root ? height : this.levelCount;
    this.raiseAboveRoot();
  }

  /** Every ref the committed version references (pages and data), for GC sweeps. */
  *referencedRefs(): IterableIterator<BlockRef> {
    if (this.root)
      yield {
        volumeId: this.ownerOf(this.root.generation),
        generation: this.root.generation,
        index: pageIndex(this.rootLevel, 0),
      };
    // Levels above the root are in memory only: they reference nothing stored but the root.
    for (let level = 0; level < this.rootLevels; level++) {
      for (const [pageNo, page] of this.levels[level]) {
        for (let i = 0; i < this.fanout; i++) {
          const at = i * ENTRY_WORDS;
          if ((page[at + W_FLAGS] & ENTRY_PRESENT) === 0) continue;
          const child = pageNo * this.fanout + i;
          yield {
            volumeId: this.ownerOf(page[at + W_GEN]),
            generation: page[at + W_GEN],
            index: level === 0 ? child : pageIndex(level - 1, child),
          };
        }
      }
    }
  }
}

/**
 * Pending changes for the next version. set/clear entries, then pagesToWrite()
 * level by level (each level's page hashes feed its parent), then commit().
 */
export class MapDraft {
  private readonly pages: Map<number, Uint32Array | null>[];
  /** The map's height when the draft began: its top page is the new root (a grow meanwhile is applied after). */
  readonly height: number;
  private readonly rootHeight: number;

  constructor(
    private readonly map: BlockMap,
    readonly generation: number,
  ) {
    this.height = map.height;
    this.rootHeight = map.rootHeight;
    this.pages = Array.from({ length: this.height }, () => new Map());
    // The pages above the committed root exist in memory only: this version writes them.
    for (let level = this.rootHeight; level < this.height; level++) this.writablePage(level, 0);
  }

  private writablePage(level: number, pageNo: number): Uint32Array {
    let page = this.pages[level].get(pageNo);
    if (!page) {
      const committed = this.map.committedPage(level, pageNo);
      page = committed ? committed.slice() : new Uint32Array(this.map.fanout * ENTRY_WORDS);
      this.pages[level].set(pageNo, page);
    }
    return page;
  }

  setEntry(
    level: number,
    index: number,
    flags: number,
    hashLo: number,
    hashHi: number,
    generation = this.generation,
  ): void {
    const page = this.writablePage(level, Math.floor(index / this.map.fanout));
    const at = (index % this.map.fanout) * ENTRY_WORDS;
    page[at + W_GEN] = generation;
    page[at + W_FLAGS] = flags | ENTRY_PRESENT;
    page[at + W_HASH_LO] = hashLo;
    page[at + W_HASH_HI] = hashHi;
  }

  clearEntry(level: number, index: number): void {
    const pageNo = Math.floor(index / this.map.fanout);
    if (!this.pages[level].has(pageNo) && !this.map.committedPage(level, pageNo)) return; // already a hole
    const page = this.writablePage(level, pageNo);
    page.fill(
      0,
      (index % this.map.fanout) * ENTRY_WORDS,
      ((index % this.map.fanout) + 1) * ENTRY_WORDS,
    );
  }

  /**
   * The pages of one level that must be stored, as bytes. Pages that became
   * empty are not stored: their parent entry is cleared instead. Call for
   * level 0 first, then record each written page's hash with pageWritten()
   * before asking for the next level.
   */
  pagesToWrite(level: number): PageWrite[] {
    const out: PageWrite[] = [];
    for (const [pageNo, page] of this.pages[level]) {
      if (!page) continue;
      if (isEmptyPage(page)) {
        this.pages[level].set(pageNo, null);
        this.clearParent(level, pageNo);
        continue;
      }
      out.push({
        level,
        pageNo,
        ref: {
          volumeId: this.map.volumeId,
          generation: this.generation,
          index: pageIndex(level, pageNo),
        },
        bytes: new Uint8Array(page.buffer, page.byteOffset, page.byteLength),
      });
    }
    return out;
  }

  private clearParent(level: number, pageNo: number): void {
    if (level + 1 < this.height) this.clearEntry(level + 1, pageNo);
  }

  /** A page of this draft is stored: point its parent (or the root) at it. */
  pageWritten(level: number, pageNo: number, hashLo: number, hashHi: number): MapRoot | undefined {
    if (level + 1 < this.height) {
      this.setEntry(level + 1, pageNo, 0, hashLo, hashHi);
      return undefined;
    }
    return { generation: this.generation, hashLo, hashHi };
  }

  /** Is the top page gone (the whole volume is holes)? */
  rootCleared(): boolean {
    return this.pages[this.height - 1].get(0) === null;
  }

  /**
   * Refs the committed version holds that this draft replaces or drops: they
   * can be released once the draft is committed, if they are this volume's
   * own (a clone's entries may name an ancestor's blocks) and no snapshot or
   * clone holds them.
   */
  supersededRefs(): BlockRef[] {
    const out: BlockRef[] = [];
    const { fanout } = this.map;
    // Only levels up to the committed root's hold stored pages; the root itself
    // is superseded when the draft rewrites the page it names.
    for (let level = 0; level < this.rootHeight; level++) {
      for (const [pageNo, page] of this.pages[level]) {
        const committed = this.map.committedPage(level, pageNo);
        if (!committed) continue;
        if (level === this.rootHeight - 1 && this.map.root) {
          out.push({
            volumeId: this.map.ownerOf(this.map.root.generation),
            generation: this.map.root.generation,
            index: pageIndex(level, pageNo),
          });
        }
        for (let i = 0; i < fanout; i++) {
          const at = i * ENTRY_WORDS;
          if ((committed[at + W_FLAGS] & ENTRY_PRESENT) === 0) continue;
          const oldGen = committed[at + W_GEN];
          if (page && (page[at + W_FLAGS] & ENTRY_PRESENT) !== 0 && page[at + W_GEN] === oldGen)
            continue;
          const child = pageNo * fanout + i;
          out.push({
            volumeId: this.map.ownerOf(oldGen),
            generation: oldGen,
            index: level === 0 ? child : pageIndex(level - 1, child),
          });
        }
      }
    }
    return out;
  }

  get isEmpty(): boolean {
    return this.pages.every((level) => level.size === 0);
  }

  commit(root: MapRoot | undefined): void {
    this.map.committed(this.height, this.pages, root);
  }
}

function isEmptyPage(page: Uint32Array): boolean {
  for (let i = 1; i < page.length; i += ENTRY_WORDS) if (page[i] & ENTRY_PRESENT) return false;
  return true;
}
