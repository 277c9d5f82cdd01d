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

  /** Does some map (other than `except`) hold `ref` for its volume? */
  isReferenced(ref: BlockRef, except?: BlockMap): boolean {
    const maps = this.byOwner.get(ref.volumeId);
    if (!maps) return false;
    for (const map of maps) {
      if (map === except) continue;
      if (map.ownerOf(ref.generation) === ref.volumeId && references(map, ref)) return true;
    }
    return false;
  }
}

/** Does the loaded map reference `ref`: a data block whose entry has its generation, or a page whose parent's entry (or the root) does. */
export function references(map: BlockMap | undefined, ref: BlockRef): boolean {
  if (!map) return false;
  if (ref.index < MAP_PAGE_BIT) return map.entryWords(0, ref.index)?.[0] === ref.generation;
  const within = ref.index - MAP_PAGE_BIT;
  const level = Math.floor(within / LEVEL_SPAN);
  const pageNo = within - level * LEVEL_SPAN;
  // Levels above the root's are not stored yet (a grow not committed since).
  if (level === map.rootLevel) return pageNo === 0 && map.root?.generation === ref.generation;
  if (level > map.rootLevel) return false;
  return map.entryWords(level + 1, pageNo)?.[0] === ref.generation;
}
