/**
 * What deleting snapshots would free: of the blocks a store holds, those
 * only snapshots reference. Pure, over maps a GC view loaded (gc-catalog.ts
 * on a cluster node): the volumes' committed versions and the versions
 * nodes serve (`versions`), and every snapshot's map.
 *
 * Per snapshot: blocks it references that no version and no other snapshot
 * does — deleting that one snapshot frees them. Per volume: blocks its
 * snapshots reference that no version and no other volume's snapshot does —
 * deleting all its snapshots frees them (more than the sum of its
 * snapshots' own when they share blocks among themselves).
 */
import type { BlockRef } from '../../model/block-ref.js';
import type { BlockMap } from '../volume/block-map.js';
import { MapIndex } from './map-index.js';

export interface SnapshotMap {
  volume: string;
  /** The snapshot's own name (after the @). */
  name: string;
  map: BlockMap;
}

/** Counts of blocks: by `volume@snapshot`, and by volume for all its snapshots together. */
export interface SnapshotSpace {
  snapshots: Record<string, number>;
  volumes: Record<string, number>;
}

export function snapshotSpace(
  versions: readonly BlockMap[],
  snapshots: readonly SnapshotMap[],
  isStored: (ref: BlockRef) => boolean,
): SnapshotSpace {
  const live = new MapIndex();
  for (const map of versions) live.add(map);
  const allSnapshots = new MapIndex();
  const byVolume = new Map<string, MapIndex>();
  for (const snapshot of snapshots) {
    allSnapshots.add(snapshot.map);
    let own = byVolume.get(snapshot.volume);
    if (!own) byVolume.set(snapshot.volume, (own = new MapIndex()));
    own.add(snapshot.map);
  }
  const space: SnapshotSpace = { snapshots: {}, volumes: {} };
  const volumeBlocks = new Map<string, Set<string>>();
  for (const snapshot of snapshots) {
    let only = 0;
    let ofVolume = volumeBlocks.get(snapshot.volume);
    if (!ofVolume) volumeBlocks.set(snapshot.volume, (ofVolume = new Set()));
    for (const ref of snapshot.map.referencedRefs()) {
      if (!isStored(ref) || live.isReferenced(ref)) continue;
      if (!allSnapshots.isReferenced(ref, snapshot.map)) only++;
      // Held by another volume's snapshot too? Then deleting this volume's snapshots keeps it.
      if (!ofVolume.has(key(ref)) && !heldElsewhere(ref, snapshot.volume)) ofVolume.add(key(ref));
    }
    space.snapshots[`${snapshot.volume}@${snapshot.name}`] = only;
  }
  for (const [volume, blocks] of volumeBlocks) space.volumes[volume] = blocks.size;
  return space;

  function heldElsewhere(ref: BlockRef, volume: string): boolean {
    for (const [other, index] of byVolume)
      if (other !== volume && index.isReferenced(ref)) return true;
    return false;
  }
}

function key(ref: BlockRef): string {
  return `${ref.volumeId}/${ref.generation}/${ref.index}`;
}
