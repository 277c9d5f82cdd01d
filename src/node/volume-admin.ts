/**
 * The node's volume administration (the admin API's verbs): create, delete,
 * list and describe volumes, flush them; snapshots (create, list, delete,
 * restore) and clones.
 *
 * On a single node every volume is open here, so what changes a volume's
 * committed version behind its back (restore) closes and reopens it, and
 * what creates a version others must keep (snapshot, clone) runs inside
 * LocalGc.exclusive (local-gc.ts says why). Deleting anything runs GC after.
 * In a cluster these are metadata operations checked against the write lock
 * and read pins; GC runs in every node's rebalancer.
 */
import { ConflictError, NotFoundError, UsageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { formatSize } from '../common/size.js';
import type {
  ClusterSettings,
  VolumeCatalog,
  VolumeRecord,
} from '../controlplane/volumes/catalog.js';
import type { LocalSlotStore } from '../dataplane/blocks/slot-store.js';
import type { KeyRing } from '../dataplane/crypto/key-ring.js';
import { checkReplication } from '../model/replication.js';
export { checkReplication } from '../model/replication.js';
import { cloneVolume } from '../controlplane/volumes/clones.js';
import {
  snapshotStatus,
  type SnapshotCatalog,
  type SnapshotStatus,
} from '../controlplane/volumes/snapshots.js';
export { snapshotStatus, type SnapshotStatus } from '../controlplane/volumes/snapshots.js';
import type { LocalGc } from './local-gc.js';
import type { VolumeHost } from './volume-host.js';

export interface VolumeStatus {
  name: string;
  id: number;
  size: number;
  used: number;
  encrypted: boolean;
  /** Cluster: the volume's own replication, when it has one. */
  replication?: number;
  generation: number;
  sessions: number;
  createdAt: string;
  /** A clone: what it was cloned from. */
  origin?: string;
  /** Single node: how many snapshots it has. */
  snapshots?: number;
  /** Single node: bytes only its snapshots reference (what deleting them would free). */
  snapshotOnly?: number;
  /** Present when this node could not open the volume (damaged map, missing key): it is not served. */
  state?: 'unavailable';
  /** Why it could not be opened. */
  reason?: string;
}

export interface VolumeAdminParts {
  catalog: VolumeCatalog;
  snapshots: SnapshotCatalog;
  /** A single node's GC; undefined in a cluster. */
  gc: LocalGc | undefined;
  settings: ClusterSettings;
  store: LocalSlotStore;
  keys: KeyRing;
  host: VolumeHost;
  /** Whether the node is a cluster member (a volume's own replication needs one). */
  clustered: boolean;
  log: Logger;
}

export class VolumeAdmin {
  constructor(private readonly parts: VolumeAdminParts) {}

  async createVolume(
    name: string,
    size: number,
    options: { encrypt?: boolean; replication?: number } = {},
  ): Promise<VolumeStatus> {
    if (!Number.isSafeInteger(size) || size <= 0 || size % 4096 !== 0) {
      throw new UsageError(`volume size must be a positive multiple of 4 KiB, got ${size} bytes`);
    }
    checkReplication(options.replication, this.parts.clustered);
    const wrapped = options.encrypt ? await this.parts.keys.newWrappedKey() : undefined;
    const record = await this.parts.catalog.create({
      name,
      size,
      blockSize: this.parts.settings.blockSize,
      encrypted: Boolean(options.encrypt),
      ...(options.replication !== undefined ? { replication: options.replication } : {}),
      ...wrapped,
    });
    await this.parts.host.created(name);
    this.parts.log.info(
      { volume: name, size: formatSize(size), encrypted: record.encrypted },
      'volume created',
    );
    return this.volumeStatus(record);
  }

  /**
   * Refused while NBD connections to the volume are open here, or another
   * node serves it read-only (naming them), or another node writes it, or it
   * has snapshots (unless `withSnapshots`).
   */
  async deleteVolume(name: string, options: { withSnapshots?: boolean } = {}): Promise<void> {
    const { host } = this.parts;
    this.refuseWhileOpen(name, 'delete it');
    // Another node's read-only clients would lose the data under them.
    await host.ownership.assertNoReaders(name);
    if (options.withSnapshots) await host.ownership.assertNoSnapshotReaders(name);
    host.stopLingering(name);
    const record = await host.ownership.remove(name, options);
    await host.forget(name);
    // Its blocks go by GC: a clone may still share some of them.
    const freed = await this.collect();
    this.parts.log.info({ volume: name, id: record.id, blocks: freed }, 'volume deleted');
  }

  /** A ConflictError when NBD clients of `name` are connected to this node. */
  private refuseWhileOpen(name: string, what: string): void {
    const volume = this.parts.host.volumes.get(name);
    if (volume && volume.openSessions > 0) {
      throw new ConflictError(
        `volume "${name}" is in use by ${volume.openSessions} NBD connection(s) on this node; disconnect them first to ${what}`,
      );
    }
  }

  /** Single node: a GC run now (blocks freed); a cluster's nodes collect on their own. */
  private async collect(): Promise<number> {
    return (await this.parts.gc?.run())?.freed ?? 0;
  }

  /** What must not interleave with a GC run's loading (LocalGc.exclusive); as is in a cluster. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    return this.parts.gc ? this.parts.gc.exclusive(fn) : fn();
  }

  // ------------------------------------------------------------ snapshots

  async createSnapshot(volume: string, snapshot: string): Promise<SnapshotStatus> {
    const started = process.hrtime.bigint();
    // Single node: a FLUSHed write may be only in the intent log, the snapshot takes the committed version.
    if (this.parts.gc) await this.commitOpen(volume);
    const record = await this.exclusive(() => this.parts.snapshots.create(volume, snapshot));
    this.parts.log.info(
      {
        snapshot: `${volume}@${snapshot}`,
        generation: record.generation,
        ms: Number(process.hrtime.bigint() - started) / 1e6,
      },
      'snapshot taken',
    );
    return snapshotStatus(record);
  }

  async listSnapshots(volume: string): Promise<SnapshotStatus[]> {
    // What only the snapshots hold is judged against every volume's committed version (a clone's too).
    if (this.parts.gc) await this.commitAndCollect();
    const records = await this.parts.snapshots.list(volume);
    const exclusive = this.parts.gc
      ? await this.parts.gc.exclusiveBlocks(records.map((r) => [r]))
      : undefined;
    const { blockSize } = this.parts.store;
    return records.map((record, i) => ({
      ...snapshotStatus(record),
      ...(exclusive ? { exclusive: exclusive[i] * blockSize } : {}),
    }));
  }

  /** Refused while NBD clients read it on this node. */
  async deleteSnapshot(volume: string, snapshot: string): Promise<{ freed: number }> {
    const exportName = `${volume}@${snapshot}`;
    const sessions = this.parts.host.snapshotExports.sessionsOf(exportName);
    if (sessions > 0)
      throw new ConflictError(
        `snapshot "${exportName}" is being read by ${sessions} NBD connection(s) on this node; disconnect them first`,
      );
    await this.parts.host.ownership.assertNoSnapshotReaders(volume, snapshot);
    await this.parts.snapshots.remove(volume, snapshot);
    const freed = await this.collect();
    this.parts.log.info({ snapshot: exportName, blocks: freed }, 'snapshot deleted');
    return { freed: freed * this.parts.store.blockSize };
  }

  /**
   * Make the volume's content the snapshot's, atomically (one compare-and-
   * swap of its record). Refused while a client has it open on any node.
   */
  async restoreSnapshot(volume: string, snapshot: string): Promise<VolumeStatus> {
    const { host, catalog, snapshots } = this.parts;
    this.refuseWhileOpen(volume, 'restore it');
    const taken = await snapshots.get(volume, snapshot);
    await host.ownership.assertNoReaders(volume);
    const restored = await this.exclusive(async () => {
      // A single node has every volume open: close it (nothing is dirty
      // without sessions, but commit whatever is), restore, open again.
      const open = this.parts.gc ? host.volumes.get(volume) : undefined;
      if (open) {
        this.refuseWhileOpen(volume, 'restore it');
        await open.close();
        host.volumes.delete(volume);
      } else if (host.volumes.has(volume)) {
        // A cluster node lingering on it (no sessions): let go of its lock first.
        host.stopLingering(volume);
        await host.exclusive(volume, () => host.unload(volume));
      }
      try {
        return await catalog.restore(await catalog.get(volume), taken);
      } finally {
        if (open) await host.created(volume);
      }
    });
    const freed = await this.collect();
    this.parts.log.info(
      { volume, snapshot, generation: restored.record.generation, blocks: freed },
      'volume restored from a snapshot',
    );
    return this.volumeStatus(restored.record);
  }

  // --------------------------------------------------------------- clones

  /** Volume `name` as a copy-on-write clone of `source` ("SRC" or "SRC@SNAP"). */
  async cloneVolume(
    source: string,
    name: string,
    options: { size?: number } = {},
  ): Promise<VolumeStatus> {
    const { catalog, snapshots, host } = this.parts;
    if (this.parts.gc && !source.includes('@')) await this.commitOpen(source);
    const record = await this.exclusive(async () => {
      const created = await cloneVolume(catalog, snapshots, source, name, options);
      await host.created(name);
      return created;
    });
    this.parts.log.info({ volume: name, source, generation: record.generation }, 'volume cloned');
    return this.volumeStatus(record);
  }

  /** Every volume; on a single node with its snapshots' count and the space only they hold. */
  async listVolumes(): Promise<VolumeStatus[]> {
    const { gc } = this.parts;
    // Single node: the space figures are the committed versions', FLUSHed data included.
    if (gc) await this.commitAndCollect();
    const rows = (await this.parts.catalog.list()).map((record) => this.volumeStatus(record));
    if (!gc) return rows;
    const snapshots = await this.parts.snapshots.listAll();
    const groups = rows.map((row) => snapshots.filter((s) => s.volume === row.name));
    const held = await gc.exclusiveBlocks(groups);
    return rows.map((row, i) => ({
      ...row,
      snapshots: groups[i].length,
      snapshotOnly: held[i] * this.parts.store.blockSize,
    }));
  }

  volumeStatus(record: VolumeRecord): VolumeStatus {
    const { store } = this.parts;
    const volume = this.parts.host.volumes.get(record.name);
    let used = 0;
    for (const [ref] of store.blocks()) if (ref.volumeId === record.id) used++;
    return {
      name: record.name,
      id: record.id,
      size: record.size,
      used: used * store.blockSize,
      encrypted: record.encrypted,
      ...(record.replication !== undefined ? { replication: record.replication } : {}),
      generation: volume?.committedGeneration ?? record.generation,
      sessions: volume?.openSessions ?? 0,
      createdAt: record.createdAt,
      ...(record.origin ? { origin: record.origin } : {}),
      ...unavailable(this.parts.host.unavailable.get(record.name)),
    };
  }

  async flushVolume(name: string): Promise<void> {
    const volume = this.parts.host.volumes.get(name);
    if (!volume) throw new NotFoundError(`no volume named "${name}"`);
    await volume.commit();
  }

  /** Commit volume `name` if it is open here (what the intent log holds becomes its committed version). */
  private async commitOpen(name: string): Promise<void> {
    await this.parts.host.volumes.get(name)?.commit();
  }

  /**
   * Single node, before space figures: commit every volume, then, if a
   * commit landed, a GC run. A commit leaves to GC what it superseded but a
   * snapshot or clone may hold (a clone's commit, an ancestor's map page it
   * no longer reads); with the intent log commits land here rather than at
   * FLUSH, and the figures would count that garbage until the next run.
   */
  async commitAndCollect(): Promise<void> {
    const generations = () =>
      [...this.parts.host.volumes.values()].map((v) => `${v.id}:${v.committedGeneration}`).join();
    const before = generations();
    await this.flushAll();
    if (generations() !== before) await this.collect();
  }

  /** Commit every volume (best effort, each on its own). */
  async flushAll(): Promise<void> {
    await Promise.all(
      [...this.parts.host.volumes.values()].map((v) =>
        v
          .commit()
          .catch((err) =>
            this.parts.log.error(
              { volume: v.name, err: (err as Error).message },
              'commit failed; its data stays in the cache (and in the intent log when FLUSHed)',
            ),
          ),
      ),
    );
  }
}

/** The fields of a volume this node could not open; none for one it could. */
function unavailable(reason: string | undefined): Pick<VolumeStatus, 'state' | 'reason'> {
  return reason === undefined ? {} : { state: 'unavailable', reason };
}
