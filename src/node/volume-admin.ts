/**
 * The node's volume administration (the admin API's verbs): create, delete,
 * list and describe volumes, and flush them.
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
import { MAX_TARGETS } from '../dataplane/replication/placement.js';
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
}

export interface VolumeAdminParts {
  catalog: VolumeCatalog;
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
   * node serves it read-only (naming them), or another node writes it.
   */
  async deleteVolume(name: string): Promise<void> {
    const { host, store } = this.parts;
    const volume = host.volumes.get(name);
    if (volume && volume.openSessions > 0) {
      throw new ConflictError(
        `volume "${name}" is in use by ${volume.openSessions} NBD connection(s); disconnect them first`,
      );
    }
    // Another node's read-only clients would lose the data under them.
    await host.ownership.assertNoReaders(name);
    host.stopLingering(name);
    const record = await host.ownership.remove(name);
    await host.forget(name);
    let freed = 0;
    for (const [ref] of [...store.blocks()]) {
      if (ref.volumeId === record.id) {
        store.release(ref);
        freed++;
      }
    }
    this.parts.log.info({ volume: name, blocks: freed }, 'volume deleted');
  }

  async listVolumes(): Promise<VolumeStatus[]> {
    return (await this.parts.catalog.list()).map((record) => this.volumeStatus(record));
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
    };
  }

  async flushVolume(name: string): Promise<void> {
    const volume = this.parts.host.volumes.get(name);
    if (!volume) throw new NotFoundError(`no volume named "${name}"`);
    await volume.flush();
  }

  /** Flush every volume (best effort, each on its own). */
  async flushAll(): Promise<void> {
    await Promise.all(
      [...this.parts.host.volumes.values()].map((v) =>
        v
          .flush()
          .catch((err) =>
            this.parts.log.error(
              { volume: v.name, err: (err as Error).message },
              'flush at shutdown failed',
            ),
          ),
      ),
    );
  }
}

/** A volume's own replication factor: a cluster's, 1 to MAX_TARGETS. */
export function checkReplication(replication: number | undefined, cluster: boolean): void {
  if (replication === undefined) return;
  if (!cluster)
    throw new UsageError('--replication needs a cluster (-C/--etcd): a single node keeps one copy');
  if (!Number.isSafeInteger(replication) || replication < 1 || replication > MAX_TARGETS) {
    throw new UsageError(
      `replication must be a whole number from 1 to ${MAX_TARGETS}, got ${replication}`,
    );
  }
}
