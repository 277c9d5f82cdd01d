/**
 * The ring: which nodes hold a block.
 *
 * A RingDescription is the cluster's shared, versioned record of membership
 * (stored in the metadata store under `ring`, changed only by compare-and-swap
 * with version = previous + 1). Every node builds the same Ring from the same
 * description, so placement needs no coordination: any node can compute where
 * any block lives.
 *
 * This file is the contract between the control plane (which stores and
 * watches descriptions) and the data plane (which places blocks).
 */
import type { BlockRef } from '../block-ref.js';

export type RingType = 'ketama' | 'single';

export interface RingMember {
  /** The node's UUID (stable across restarts of the same data dir). */
  uuid: string;
  /** Relative capacity weight; by convention the node's store size in bytes. */
  weight: number;
}

export interface RingDescription {
  /** Strictly sequential: every change is version + 1, by compare-and-swap. */
  version: number;
  type: RingType;
  /** Default replication factor for new volumes (a volume may override). */
  replication: number;
  /** Members in any order; placement does not depend on this order. */
  members: RingMember[];
}

export interface Ring {
  readonly description: RingDescription;
  /**
   * The `count` distinct nodes that hold `ref`, most preferred first. Fewer
   * than `count` only when the ring has fewer members. Deterministic: the same
   * description and ref give the same answer on every node. The ref's
   * generation is not an input: every version of a block lands on the same
   * nodes (ketama.ts says why).
   */
  placement(ref: BlockRef, count: number): string[];
}

/**
 * A Ring that can also place without allocating, for the I/O path: it writes
 * member indexes into a caller-owned array. Both implementations are
 * IndexedRings; `buildRing` (index.ts) returns one.
 */
export interface IndexedRing extends Ring {
  /**
   * Member uuids in the ring's canonical order (sorted by uuid, whatever the
   * description's order); `placeInto` writes indexes into this list. Indexes
   * belong to this ring only: a new description may renumber.
   */
  readonly members: readonly string[];
  /**
   * `placement` for block (volumeId, index) of any generation, as indexes
   * into `members`, most preferred first, written to `out[0..n)`; returns n =
   * min(count, members.length). Throws RangeError if count, volumeId or
   * index is not a non-negative integer, or `out` is shorter than n. Not
   * reentrant per ring, which synchronous JavaScript cannot be anyway.
   */
  placeInto(volumeId: number, index: number, count: number, out: Uint32Array): number;
}

/** A ring description that cannot be built: the message says which field. */
export class RingDescriptionError extends Error {
  override name = 'RingDescriptionError';
}
