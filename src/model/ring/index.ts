/**
 * Building rings from descriptions, and comparing two rings' answers.
 *
 * Every node calls `buildRing` on each new description it sees (from the
 * metadata store's `ring` key) and swaps the result in; building is
 * synchronous and takes well under a second for 500 members (README.md).
 */
import type { BlockRef } from '../block-ref.js';
import { KetamaRing } from './ketama.js';
import { RingDescriptionError, type IndexedRing, type Ring, type RingDescription } from './ring.js';
import { SingleRing } from './single.js';

export { KetamaRing } from './ketama.js';
export { SingleRing } from './single.js';
export { RingDescriptionError } from './ring.js';
export type { IndexedRing, Ring, RingDescription, RingMember, RingType } from './ring.js';

/**
 * The ring a description describes: 'ketama' for a cluster, 'single' for one
 * node. Throws RingDescriptionError for an unknown type or a description that
 * cannot be placed on (duplicate uuids, non-positive weights, a 'single' ring
 * with more than one member, ...). A ring without members places nowhere. The ring keeps a frozen copy of the
 * description; later changes to the argument do not affect it.
 */
export function buildRing(description: RingDescription): IndexedRing {
  switch (description.type) {
    case 'ketama':
      return new KetamaRing(description);
    case 'single':
      return new SingleRing(description);
    default:
      throw new RingDescriptionError(
        `unknown ring type ${JSON.stringify((description as { type: unknown }).type)}`,
      );
  }
}

export interface PlacementDiff {
  /** Nodes that must receive a copy: in the new placement, not the old. */
  added: string[];
  /** Nodes whose copy is no longer wanted: in the old placement, not the new. */
  removed: string[];
  /** Nodes in both. */
  kept: string[];
}

/**
 * How `ref`'s `count` replicas move from `oldRing` to `newRing`, as sets
 * (preference order within a set is not a move). For a rebalancer: copy to
 * `added` from any of `kept` (or `removed`, still holding it), and only then
 * drop from `removed`.
 */
export function diffPlacement(
  oldRing: Ring,
  newRing: Ring,
  ref: BlockRef,
  count: number,
): PlacementDiff {
  const before = oldRing.placement(ref, count);
  const after = newRing.placement(ref, count);
  const beforeSet = new Set(before);
  const afterSet = new Set(after);
  return {
    added: after.filter((uuid) => !beforeSet.has(uuid)),
    removed: before.filter((uuid) => !afterSet.has(uuid)),
    kept: after.filter((uuid) => beforeSet.has(uuid)),
  };
}
