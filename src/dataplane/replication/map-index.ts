/**
 * Which maps hold a block ref: the index GC and the snapshot-space count ask.
 */
import { MAP_PAGE_BIT, type BlockRef } from '../../model/block-ref.js';
import type { BlockMap } from '../volume/block-map.js';

/** Map pages' refs: level × LEVEL_SPAN + page number, above MAP_PAGE_BIT (model/block-ref.ts). */
const LEVEL_SPAN = 2 ** 40;

/**
 * Maps indexed by every volume their lineage names: which maps to ask about
 * a ref of volume v. A ref is referenced when some map gives its generation
 * to its volume and holds it.
 */
export class MapIndex {
  private readonly byOwner = new Map<number, BlockMap[]>();

  add(map: BlockMap): void {
    this.index(map.volumeId, map);
    for (const ancestor of map.ancestors) this.index(ancestor.volumeId, map);
  }

  private index(owner: number, map: BlockMap): void {
    const maps = this.byOwner.get(owner);
    if (maps) maps.push(map);
    else this.byOwner.set(owner, [map]);
  }

  /** Does some map (other than `except`) hold `ref` for its volume — with `hash`, when given? */
  isReferenced(ref: BlockRef, except?: BlockMap, hash?: CopyHash): boolean {
    const maps = this.byOwner.get(ref.volumeId);
    if (!maps) return false;
    for (const map of maps) {
      if (map === except) continue;
      if (map.ownerOf(ref.generation) === ref.volumeId && references(map, ref, hash)) return true;
    }
    return false;
  }
}

/**
 * A stored copy's hash. A block written twice for one version (spilled, then
 * written and spilled again before the commit) keeps its ref; a node the
 * second copy did not go to may still hold the first, under that ref with
 * another hash. Asked with the copy's hash, such a copy is not referenced.
 */
export interface CopyHash {
  lo: number;
  hi: number;
}

/**
 * Does the loaded map reference `ref`: a data block whose entry has its
 * generation, or a page whose parent's entry (or the root) does — and, when
 * `hash` is given, that entry's hash.
 */
export function references(map: BlockMap | undefined, ref: BlockRef, hash?: CopyHash): boolean {
  if (!map) return false;
  if (ref.index < MAP_PAGE_BIT) return holds(map.entryWords(0, ref.index), ref.generation, hash);
  const within = ref.index - MAP_PAGE_BIT;
  const level = Math.floor(within / LEVEL_SPAN);
  const pageNo = within - level * LEVEL_SPAN;
  // Levels above the root's are not stored yet (a grow not committed since).
  if (level === map.rootLevel) {
    const root = map.root;
    return (
      pageNo === 0 &&
      root?.generation === ref.generation &&
      (!hash || (root.hashLo >>> 0 === hash.lo >>> 0 && root.hashHi >>> 0 === hash.hi >>> 0))
    );
  }
  if (level > map.rootLevel) return false;
  return holds(map.entryWords(level + 1, pageNo), ref.generation, hash);
}

/** An entry (generation, flags, hash lo, hash hi) naming this generation, and this hash when given. */
function holds(entry: Uint32Array | undefined, generation: number, hash?: CopyHash): boolean {
  if (entry?.[0] !== generation) return false;
  return !hash || (entry[2] === hash.lo >>> 0 && entry[3] === hash.hi >>> 0);
}
