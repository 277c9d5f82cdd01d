/**
 * Clones: a new volume that starts as an existing version — a volume's
 * committed one, or a snapshot — sharing every block copy-on-write.
 *
 * Nothing is copied. The clone's record takes the version's map root and
 * generation G and a lineage (model/lineage.ts) saying its entries of
 * generation ≤ G name its ancestors' blocks; its own commits are G+1 and up,
 * written under its own id, so writes to either side never show in the
 * other. Each ancestor gets a hold, `clone-holds/<ancestor>/<clone>` =
 * the generation shared: an ancestor's commit reads its holds in its txn and
 * does not release its own superseded blocks at or below it (GC, seeing
 * every version that references them, frees them when nothing does). The
 * holds go when the clone is deleted; the source and its snapshots can be
 * deleted while clones live.
 *
 * The txn that creates the clone also checks that the version taken is still
 * the one read (the source record, or the snapshot's key, unchanged).
 */
import { UsageError } from '../../common/errors.js';
import { cloneLineage } from '../../model/lineage.js';
import { mapHeightFor } from '../../model/map-root.js';
import { unchangedSince } from '../metadata/store.js';
import { cloneHoldKey, volumeKey, type VolumeCatalog, type VolumeRecord } from './catalog.js';
import { isSnapshotName, parseSnapshotName, type SnapshotCatalog } from './snapshots.js';

export interface CloneOptions {
  /** Bytes; at least the source's size (a clone never starts smaller). Default: the source's size. */
  size?: number;
}

/** Create volume `name` as a clone of `source` ("SRC" or "SRC@SNAP"). */
export async function cloneVolume(
  catalog: VolumeCatalog,
  snapshots: SnapshotCatalog,
  source: string,
  name: string,
  options: CloneOptions = {},
): Promise<VolumeRecord> {
  let version: Pick<
    VolumeRecord,
    | 'id'
    | 'generation'
    | 'root'
    | 'size'
    | 'blockSize'
    | 'encrypted'
    | 'wrappedKey'
    | 'masterKeyFingerprint'
    | 'ancestors'
    | 'mapHeight'
  >;
  let stillThere;
  let replication: number | undefined;
  if (isSnapshotName(source)) {
    const { volume, snapshot } = parseSnapshotName(source);
    const taken = await snapshots.get(volume, snapshot);
    version = { ...taken.record, id: taken.record.volumeId };
    stillThere = unchangedSince(taken.key, taken.modRevision);
    replication = (await catalog.get(volume).catch(() => undefined))?.record.replication;
  } else {
    const { record, modRevision } = await catalog.getCommitted(source);
    version = record;
    stillThere = unchangedSince(volumeKey(source), modRevision);
    replication = record.replication;
  }
  const size = options.size ?? version.size;
  if (size < version.size)
    throw new UsageError(
      `a clone cannot be smaller than its source (${version.size} bytes); clone, then resize --shrink`,
    );
  const ancestors = cloneLineage(version.id, version.ancestors ?? [], version.generation);
  return catalog.create(
    {
      name,
      size,
      blockSize: version.blockSize,
      encrypted: version.encrypted,
      ...(version.wrappedKey !== undefined ? { wrappedKey: version.wrappedKey } : {}),
      ...(version.masterKeyFingerprint !== undefined
        ? { masterKeyFingerprint: version.masterKeyFingerprint }
        : {}),
      ...(replication !== undefined ? { replication } : {}),
    },
    {
      generation: version.generation,
      root: version.root,
      // The source's tree: a clone made larger starts with a root topping a lower tree, as after a grow.
      mapHeight:
        version.mapHeight ??
        mapHeightFor(version.blockSize, Math.ceil(version.size / version.blockSize)),
      ancestors,
      origin: source,
      compare: [stillThere],
      alsoPut: (id) =>
        ancestors.map((a) => ({
          type: 'put' as const,
          key: cloneHoldKey(a.volumeId, id),
          value: Buffer.from(JSON.stringify({ generation: a.throughGeneration, clone: name })),
        })),
    },
  );
}
