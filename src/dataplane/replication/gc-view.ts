/**
 * Cluster GC rules: which blocks in a node's local store no version can ever
 * need again. Pure: the caller lists the catalog, the Rebalancer applies the
 * verdict to its own store (every node frees its own garbage, so nothing is
 * deleted remotely).
 *
 * What a view is. At the start of a run the caller (StorageNode) lists every
 * volume of the catalog — id, committed generation — and which refs its
 * committed version (and, once they exist, its snapshots) reference: map
 * pages and data blocks, as BlockMap.referencedRefs() yields them. The
 * listing must be made after the request for it began (never a cached one),
 * and each volume's referenced refs must be those of the generation given
 * for it. If any volume could not be loaded the caller returns no view and
 * nothing is freed that run.
 *
 * A block (v, g, i) of the local store is garbage iff no listed volume
 * references it and either
 *   - deleted: v is not listed, yet v had blocks in this store before the
 *     listing was asked for (`presentBefore`); or
 *   - superseded: v is listed with committed generation G ≥ g.
 *
 * Why "presentBefore": a volume's blocks are only ever written after its
 * record exists, so if this store held blocks of v before the listing
 * began, v existed then; absent from the listing, it was deleted. An
 * unlisted v whose blocks appeared only during the run may be a volume
 * created after the listing, and is left alone. Volume ids come from a
 * counter and are never handed out twice (VolumeCatalog.create), so blocks
 * of a deleted volume are never taken for a new one's.
 *
 * Why superseded blocks never come back: a block is identified by the
 * generation it was written for, and version G+1's map is version G's plus
 * blocks (and pages) of generation G+1. So once G is committed, a block of
 * generation ≤ G that G does not reference is referenced by no later version
 * either. Blocks of generation > G are in flight (spilled or replicated for a
 * version not committed yet) and are never garbage; nor are blocks of volumes
 * neither listed nor seen before the listing (created meanwhile).
 *
 * Versions still read: a node serving a volume read-only keeps the version
 * committed when it opened it, and pins it (controlplane/volumes/
 * read-pins.ts); the caller's `isReferenced` answers for pinned versions
 * too (gc-catalog.ts), so their blocks are 'referenced' here. Snapshots,
 * once they exist, are the same case.
 */
import type { BlockRef } from '../../model/block-ref.js';
import { RefIndex } from '../blocks/ref-index.js';
import type { CopyHash } from './map-index.js';

/** One volume of the catalog, as listed for a GC run. */
export interface GcVolume {
  id: number;
  /** Its committed generation when listed (0: nothing committed yet). */
  generation: number;
}

/** The catalog as the caller listed it for one run (see the module comment for the contract). */
export interface GcView {
  /** Every volume of the catalog, by id. */
  volumes: ReadonlyMap<number, GcVolume>;
  /**
   * Does some listed volume's committed version (or one of its snapshots)
   * reference this ref? Across volumes: a clone referencing another
   * volume's blocks keeps them. With `hash` (a stored copy's), only if it
   * references the ref with that hash, when the view knows hashes: a copy
   * of an earlier write of the block for the same version is not.
   */
  isReferenced(ref: BlockRef, hash?: CopyHash): boolean;
}

export type BlockVerdict =
  /** Referenced by a committed version: keep, and keep replicated. */
  | 'referenced'
  /** Of a volume listed as deleted, unreferenced: free. */
  | 'deleted'
  /** Of a generation ≤ its volume's committed one, unreferenced: free. */
  | 'superseded'
  /** In flight (generation above the committed one) or of a volume created after the listing: keep, never treat as committed. */
  | 'unknown';

/**
 * What `ref` is under `view`. `presentBefore`: the volume ids this store
 * held blocks of before the view was asked for. `hash`: the stored copy's —
 * a copy of a committed generation whose hash the version does not
 * reference is superseded (written again for that version, stored elsewhere).
 */
export function classifyBlock(
  ref: BlockRef,
  view: GcView,
  presentBefore: ReadonlySet<number>,
  hash?: CopyHash,
): BlockVerdict {
  if (view.isReferenced(ref, hash)) return 'referenced';
  const volume = view.volumes.get(ref.volumeId);
  if (!volume) return presentBefore.has(ref.volumeId) ? 'deleted' : 'unknown';
  return ref.generation <= volume.generation ? 'superseded' : 'unknown';
}

export function isGarbage(verdict: BlockVerdict): boolean {
  return verdict === 'deleted' || verdict === 'superseded';
}

/**
 * A GcView from listed volumes and the refs each references (e.g.
 * `volume.referencedRefs()` of each loaded version). Keeps an entry per
 * referenced ref in a RefIndex (maps of numbers): about 30 bytes a block,
 * ~0.5 GiB per TiB of 64 KiB blocks; a caller with big volumes can answer
 * isReferenced from the loaded maps instead. It knows no hashes.
 */
export function gcViewOf(volumes: Iterable<GcVolume & { refs: Iterable<BlockRef> }>): GcView {
  const byId = new Map<number, GcVolume>();
  const referenced = new RefIndex();
  for (const volume of volumes) {
    byId.set(volume.id, { id: volume.id, generation: volume.generation });
    for (const ref of volume.refs) referenced.set(ref.volumeId, ref.generation, ref.index, 0);
  }
  return {
    volumes: byId,
    isReferenced: (ref) => referenced.get(ref.volumeId, ref.generation, ref.index) !== undefined,
  };
}
