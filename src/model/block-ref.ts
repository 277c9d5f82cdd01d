/**
 * A block's identity, the same on every node: which volume, which version of
 * it the block was written for, and where in the volume it belongs.
 *
 * Blocks are never overwritten in place: a write to block 7 of volume 3 in
 * generation 12 creates block (3, 12, 7), and the volume's map is switched to
 * it when generation 12 commits. That is what makes a FLUSH atomic, and what
 * snapshots, clones and GC will build on.
 *
 * Map pages of the volume's block map are blocks too, told apart by a flag in
 * the index (page ids never collide with data indexes).
 */
export interface BlockRef {
  volumeId: number;
  generation: number;
  /** Data block index, or MAP_PAGE_BIT + page id for a block-map page. */
  index: number;
}

/** Above any data index a volume can have (2^48 blocks), below 2^53. */
export const MAP_PAGE_BIT = 2 ** 48;

export function refKey(volumeId: number, generation: number, index: number): string {
  return `${volumeId}/${generation}/${index}`;
}

export function formatRef(ref: BlockRef): string {
  return ref.index >= MAP_PAGE_BIT
    ? `vol ${ref.volumeId} gen ${ref.generation} map page ${ref.index - MAP_PAGE_BIT}`
    : `vol ${ref.volumeId} gen ${ref.generation} block ${ref.index}`;
}
