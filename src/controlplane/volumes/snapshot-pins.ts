/**
 * Snapshot pins: a cluster node serving `VOLUME@SNAPSHOT` over NBD says so in
 * the metadata store, so that (1) `snapshot delete` run anywhere refuses
 * while clients read it, naming the nodes, and (2) if the snapshot is
 * deleted anyway (the check and a new client can cross; `volume delete
 * --with-snapshots`), cluster GC keeps the blocks of the version being read
 * until the node lets go — its clients keep reading what they opened, never
 * EIO.
 *
 * A pin is one key, `pins/snapshots/<volume>/<snapshot>/<node>.<random>`,
 * under a lease of its own (a ReadPin: kept alive, put again if lost,
 * revoked on release), holding the snapshot's record: all GC needs to load
 * its map, lineage included. A writer's commit reads the volume's snapshot
 * pins in its txn, as it reads its snapshots, and releases no block a
 * pinned generation may reference (catalog.ts commitVersionHolding).
 *
 * The same hazard-pointer argument as read-pins.ts: the node puts its pin,
 * then reads the snapshot again and serves it only if it still exists as
 * pinned. GC lists the catalog and snapshots (one read) before pins; a block
 * only this snapshot references is freed only by a run whose listing no
 * longer had the snapshot, i.e. after its delete, and a node whose check
 * found the snapshot had put its pin before that delete, so before the run
 * listed pins.
 */
import { randomBytes } from 'node:crypto';
import { ConflictError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { MetadataStore } from '../metadata/store.js';
import { sameMapRoot } from '../../model/map-root.js';
import { ALL_SNAPSHOT_PINS, snapshotPinPrefix } from './catalog.js';
import { ReadPin } from './read-pins.js';
import type { SnapshotCatalog, SnapshotRecord } from './snapshots.js';

/** A snapshot a node serves, as GC and delete read it back. */
export interface PinnedSnapshot {
  node: string;
  /** When the node pinned it (ISO 8601). */
  since: string;
  /** The snapshot's generation, where a commit's txn reads what is held (catalog.ts highestHeld). */
  generation: number;
  snapshot: SnapshotRecord;
}

/** Every snapshot pin of the cluster. List them after the catalog and snapshots. */
export async function listSnapshotPins(
  meta: MetadataStore,
  prefix = ALL_SNAPSHOT_PINS,
): Promise<PinnedSnapshot[]> {
  const pins: PinnedSnapshot[] = [];
  for (const kv of await meta.getPrefix(prefix)) {
    try {
      const pin = JSON.parse(kv.value.toString()) as PinnedSnapshot;
      const s = pin.snapshot;
      if (
        Number.isSafeInteger(s?.volumeId) &&
        Number.isSafeInteger(s.generation) &&
        Number.isSafeInteger(s.size) &&
        Number.isSafeInteger(s.blockSize)
      )
        pins.push(pin);
    } catch {
      // A damaged pin protects nothing; GC goes on with the others.
    }
  }
  return pins;
}

/**
 * Refuse (ConflictError naming the nodes) while a node other than `exceptNode`
 * serves `volume@snapshot` (or, with no snapshot, any snapshot of `volume`).
 * A check, not a guarantee: the pins keep the blocks of whatever is read.
 */
export async function assertNoSnapshotReaders(
  meta: MetadataStore,
  volume: string,
  snapshot?: string,
  exceptNode?: string,
): Promise<void> {
  const pins = (await listSnapshotPins(meta, snapshotPinPrefix(volume, snapshot))).filter(
    (pin) => pin.node !== exceptNode,
  );
  if (pins.length === 0) return;
  const readers = [
    ...new Set(pins.map((pin) => `${volume}@${pin.snapshot.name} on node ${pin.node}`)),
  ];
  throw new ConflictError(
    `snapshot ${readers.join(', ')} is being read over NBD; disconnect those clients first (a node lets go of a snapshot when its last client disconnects)`,
  );
}

/**
 * Pin snapshot `volume@snapshot` for `node`: put the pin, then check the
 * snapshot still exists as pinned (see the module comment). Resolves with
 * the pin and the snapshot to serve; NotFoundError when it is gone.
 */
export async function pinSnapshot(
  meta: MetadataStore,
  snapshots: SnapshotCatalog,
  volume: string,
  snapshot: string,
  node: string,
  options: { ttlSeconds: number; log: Logger },
): Promise<{ pin: ReadPin; snapshot: SnapshotRecord }> {
  const found = (await snapshots.get(volume, snapshot)).record;
  const key = `${snapshotPinPrefix(volume, snapshot)}${node}.${randomBytes(6).toString('hex')}`;
  const value = (since: string) =>
    Buffer.from(
      JSON.stringify({
        node,
        since,
        generation: found.generation,
        snapshot: found,
      } satisfies PinnedSnapshot),
    );
  const lease = await meta.grantLease(options.ttlSeconds);
  try {
    await meta.put(key, value(new Date().toISOString()), { lease });
    const now = (await snapshots.get(volume, snapshot)).record;
    if (now.volumeId !== found.volumeId || !sameMapRoot(now.root, found.root))
      throw new ConflictError(
        `snapshot "${volume}@${snapshot}" was deleted and taken again while being opened; try again`,
      );
  } catch (err) {
    await lease.revoke().catch(() => undefined);
    throw err;
  }
  const about = { snapshot: `${volume}@${snapshot}`, generation: found.generation };
  return { pin: new ReadPin(meta, key, value, about, lease, options), snapshot: found };
}
