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
 */
import { MAP_PAGE_BIT, type BlockRef } from '../../model/block-ref.js';
import { ownerOf, type Ancestor } from '../../model/lineage.js';
import type { MapRoot } from '../../model/map-root.js';

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
  readonly height: number;
  /** Committed pages by level, then page number. */
  private readonly levels: Map<number, Uint32Array>[];

  constructor(
    readonly volumeId: number,
    readonly blockSize: number,
    readonly blockCount: number,
    public root: MapRoot | undefined,
    /** A clone's ancestors (model/lineage.ts): whose blocks its older entries name. */
    readonly ancestors: readonly Ancestor[] = [],
  ) {
    this.fanout = blockSize / ENTRY_BYTES;
    let height = 1;
    while (this.fanout ** height < blockCount) height++;
    this.height = height;
    this.levels = Array.from({ length: height }, () => new Map());
  }

  /** The volume whose block an entry of `generation` names: this one, or an ancestor's for a clone. */
  ownerOf(generation: number): number {
    return this.ancestors.length === 0
      ? this.volumeId
      : ownerOf(this.volumeId, this.ancestors, generation);
  }

  /** Install a page read from the store (used while loading a version). */
  installPage(level: number, pageNo: number, words: Uint32Array): void {
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

  /** @internal used by MapDraft.commit */
  replacePages(level: number, pages: Map<number, Uint32Array | null>): void {
    for (const [pageNo, page] of pages) {
      if (page) this.levels[level].set(pageNo, page);
      else this.levels[level].delete(pageNo);
    }
  }

  /** Every ref the committed version references (pages and data), for GC sweeps. */
  *referencedRefs(): IterableIterator<BlockRef> {
    if (this.root)
      yield {
        volumeId: this.ownerOf(this.root.generation),
        generation: this.root.generation,
        index: pageIndex(this.height - 1, 0),
      };
    for (let level = 0; level < this.height; level++) {
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

  constructor(
    private readonly map: BlockMap,
    readonly generation: number,
  ) {
    this.pages = Array.from({ length: map.height }, () => new Map());
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
    if (level + 1 < this.map.height) this.clearEntry(level + 1, pageNo);
  }

  /** A page of this draft is stored: point its parent (or the root) at it. */
  pageWritten(level: number, pageNo: number, hashLo: number, hashHi: number): MapRoot | undefined {
    if (level + 1 < this.map.height) {
      this.setEntry(level + 1, pageNo, 0, hashLo, hashHi);
      return undefined;
    }
    return { generation: this.generation, hashLo, hashHi };
  }

  /** Is the top page gone (the whole volume is holes)? */
  rootCleared(): boolean {
    return this.pages[this.map.height - 1].get(0) === null;
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
    for (let level = 0; level < this.map.height; level++) {
      for (const [pageNo, page] of this.pages[level]) {
        const committed = this.map.committedPage(level, pageNo);
        if (!committed) continue;
        if (level === this.map.height - 1 && this.map.root) {
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
    for (let level = 0; level < this.map.height; level++)
      this.map.replacePages(level, this.pages[level]);
    this.map.root = root;
  }
}

function isEmptyPage(page: Uint32Array): boolean {
  for (let i = 1; i < page.length; i += ENTRY_WORDS) if (page[i] & ENTRY_PRESENT) return false;
  return true;
}
