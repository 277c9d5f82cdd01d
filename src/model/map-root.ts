/**
 * The root of a volume version's block map, as the metadata record stores it:
 * the generation that wrote the top map page and that page's hash. Two
 * records with the same root name the same map, page for page, because pages
 * are never overwritten (a page is a block, keyed by its generation).
 */
export interface MapRoot {
  generation: number;
  hashLo: number;
  hashHi: number;
}

/** The same root (so the same map, page for page), with no root (an empty map) equal only to no root. */
export function sameMapRoot(a: MapRoot | null | undefined, b: MapRoot | null | undefined): boolean {
  if (!a || !b) return !a && !b;
  return a.generation === b.generation && a.hashLo === b.hashLo && a.hashHi === b.hashHi;
}

/**
 * The height of the block map a volume of `blockCount` blocks needs: the
 * fewest levels of pages (blockSize / 16 entries each) whose top page covers
 * every block. A record whose root tops a taller tree (the volume shrank, or
 * grew past a level while its root was committed) says so in `mapHeight`.
 */
export function mapHeightFor(blockSize: number, blockCount: number): number {
  const fanout = blockSize / 16;
  let height = 1;
  while (fanout ** height < blockCount) height++;
  return height;
}
