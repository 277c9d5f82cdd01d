/**
 * Volume administration for torusctl and torusblk. Talks to the running
 * torusd through its admin socket when there is one; otherwise opens the
 * node's metadata store directly (which takes the data directory's lock, so
 * it can never race a torusd). Offline, deleting a volume only removes its
 * record: torusd frees the blocks at its next start.
 *
 * With an etcd configuration (-C) every operation goes to the cluster's
 * catalog in etcd, never to a local socket or directory. A running torusd
 * serves the volumes that existed when it started.
 */
import { ensureDirectory } from '../common/dirs.js';
import { join, resolve } from 'node:path';
import { ConflictError, NotFoundError, UsageError } from '../common/errors.js';
import { readClusterBinding } from '../controlplane/membership/node-identity.js';
import {
  DEFAULT_REPLICATION,
  initRing,
  readRing,
  type StoredRing,
} from '../controlplane/membership/ring-store.js';
import { openEmbeddedMetadataStore } from '../controlplane/metadata/embedded/index.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import { VolumeCatalog } from '../controlplane/volumes/catalog.js';
import { cloneVolume } from '../controlplane/volumes/clones.js';
import { assertNoReaders, listReadPins } from '../controlplane/volumes/read-pins.js';
import { SnapshotCatalog } from '../controlplane/volumes/snapshots.js';
import type { VolumeRecord } from '../controlplane/volumes/catalog.js';
import { snapshotStatus, type SnapshotStatus } from '../node/volume-admin.js';
import { describeHolder, listVolumeLocks } from '../controlplane/locks/index.js';
import { adminCall } from '../node/admin-api.js';
import { KeyRing } from '../dataplane/crypto/key-ring.js';
import { checkReplication, DEFAULT_BLOCK_SIZE, type VolumeStatus } from '../node/storage-node.js';
import type { ResizeOptions, ResizeResult } from '../node/volume-resize.js';
import { openClusterStore } from './cluster-store.js';
import { shrinkClusterVolume } from './cluster-shrink.js';
import {
  resizeOffline,
  resizeOnCluster,
  type ClusterResizeResult,
} from './volume-resize-offline.js';
import type { EtcdConfig } from './common-flags.js';

export interface VolumeRow extends Omit<VolumeStatus, 'used' | 'sessions'> {
  used?: number;
  sessions?: number;
  /** Cluster: who holds the volume's write lock (node, host, pid), if anyone. */
  lockedBy?: string;
  /** Cluster: the nodes serving it read-only, each at the version it pinned. */
  readers?: { node: string; generation: number; since: string }[];
}

export class AdminClient {
  readonly dataDir: string;
  private readonly socket: string;

  constructor(
    dataDir: string,
    private readonly keyFile?: string,
    readonly etcd?: EtcdConfig,
  ) {
    this.dataDir = resolve(dataDir);
    this.socket = join(this.dataDir, 'torusd.sock');
  }

  /** Where the metadata is, for messages: the etcd endpoints or the data directory. */
  get where(): string {
    return this.etcd ? `etcd ${this.etcd.endpoints}` : this.dataDir;
  }

  /** Through the running node's socket, unless we talk to a cluster's etcd. */
  private online<T>(method: string, path: string, body?: unknown): Promise<T | undefined> {
    return this.etcd ? Promise.resolve(undefined) : adminCall<T>(this.socket, method, path, body);
  }

  private async offline<T>(
    work: (catalog: VolumeCatalog, meta: MetadataStore) => Promise<T>,
  ): Promise<T> {
    const meta = this.etcd
      ? await openClusterStore(this.etcd, { thread: false })
      : await this.openLocal();
    try {
      return await work(new VolumeCatalog(meta), meta);
    } finally {
      await meta.close();
    }
  }

  private async openLocal(): Promise<MetadataStore> {
    await ensureDirectory(this.dataDir, 'data directory');
    const binding = await readClusterBinding(this.dataDir);
    if (binding) {
      throw new ConflictError(
        `data directory ${this.dataDir} belongs to a cluster: its volumes are in etcd; use -C ${binding.etcd}`,
      );
    }
    return openEmbeddedMetadataStore(join(this.dataDir, 'meta'));
  }

  /**
   * Write the settings (block size) once; on a cluster also the ring
   * (version 1, ketama, no members, `replication` copies). Re-running
   * completes a half-done init and changes nothing else.
   */
  async init(
    blockSize: number | undefined,
    replication?: number,
  ): Promise<{ blockSize: number; created: boolean; ring?: StoredRing }> {
    return this.offline(async (catalog, meta) => {
      const wanted = blockSize ?? DEFAULT_BLOCK_SIZE;
      const existing = await catalog.settings();
      if (existing && blockSize && existing.blockSize !== blockSize) {
        throw new UsageError(
          `${this.where} is already initialised with block size ${existing.blockSize}; it cannot change`,
        );
      }
      const settings =
        existing ??
        (await catalog.initSettings({ blockSize: wanted, createdAt: new Date().toISOString() }));
      if (!this.etcd) return { blockSize: settings.blockSize, created: !existing };
      const { ring, created: ringCreated } = await initRing(meta, {
        replication: replication ?? DEFAULT_REPLICATION,
      });
      if (
        !ringCreated &&
        replication !== undefined &&
        ring.description.replication !== replication
      ) {
        throw new UsageError(
          `${this.where} is already initialised with replication ${ring.description.replication}; change it with: torusctl ring set-replication ${replication}`,
        );
      }
      return { blockSize: settings.blockSize, created: !existing || ringCreated, ring };
    });
  }

  async listVolumes(): Promise<VolumeRow[]> {
    const online = await this.online<VolumeStatus[]>('GET', '/v1/volumes');
    if (online) return online;
    return this.offline(async (catalog, meta) => {
      const locks = this.etcd ? await listVolumeLocks(meta) : new Map();
      const pins = this.etcd ? await listReadPins(meta) : [];
      // Cluster: a volume without its own replication has the ring's.
      const ringReplication = this.etcd
        ? (await readRing(meta))?.description.replication
        : undefined;
      return (await catalog.list()).map(
        ({
          wrappedKey: _k,
          masterKeyFingerprint: _f,
          root: _r,
          blockSize: _b,
          mapHeight: _h,
          ancestors: _a,
          ...row
        }) => {
          const lock = locks.get(row.name);
          const readers = pins
            .filter((pin) => pin.volume === row.name)
            .map(({ node, generation, since }) => ({ node, generation, since }));
          const shown = this.etcd
            ? { ...row, replication: row.replication ?? ringReplication, readers }
            : row;
          return lock ? { ...shown, lockedBy: describeHolder(lock.holder) } : shown;
        },
      );
    });
  }

  async createVolume(
    name: string,
    size: number,
    encrypt: boolean,
    replication?: number,
  ): Promise<VolumeRow> {
    if (!Number.isSafeInteger(size) || size <= 0 || size % 4096 !== 0) {
      throw new UsageError(`volume size must be a positive multiple of 4 KiB, got ${size} bytes`);
    }
    checkReplication(replication, this.etcd !== undefined);
    const online = await this.online<VolumeStatus>('POST', '/v1/volumes', {
      name,
      size,
      encrypt,
      replication,
    });
    if (online) return online;
    return this.offline(async (catalog) => {
      const settings =
        (await catalog.settings()) ??
        (await catalog.initSettings({
          blockSize: DEFAULT_BLOCK_SIZE,
          createdAt: new Date().toISOString(),
        }));
      const wrapped = encrypt
        ? await new KeyRing(this.keyFile ?? join(this.dataDir, 'master.key')).newWrappedKey()
        : undefined;
      const {
        wrappedKey: _k,
        masterKeyFingerprint: _f,
        root: _r,
        blockSize: _b,
        ...row
      } = await catalog.create({
        name,
        size,
        blockSize: settings.blockSize,
        encrypted: encrypt,
        ...(replication !== undefined ? { replication } : {}),
        ...wrapped,
      });
      return row;
    });
  }

  async deleteVolume(
    name: string,
    options: { withSnapshots?: boolean } = {},
  ): Promise<{ online: boolean }> {
    const query = options.withSnapshots ? '?with-snapshots=1' : '';
    const online = await this.online('DELETE', `/v1/volumes/${encodeURIComponent(name)}${query}`);
    if (online) return { online: true };
    await this.offline(async (catalog, meta) => {
      if (this.etcd) await assertNoReaders(meta, name);
      await catalog.remove(name, options);
    });
    return { online: false };
  }

  // Snapshots and clones: metadata only, so with no torusd running (or on a
  // cluster) they are made on the catalog directly; GC (the next start of a
  // single node, every node's rebalancer in a cluster) frees what they release.

  async createSnapshot(volume: string, snapshot: string): Promise<SnapshotStatus> {
    const online = await this.online<SnapshotStatus>('POST', `${snapshotsPath(volume)}`, {
      name: snapshot,
    });
    if (online) return online;
    return this.offline(async (catalog, meta) =>
      snapshotStatus(await new SnapshotCatalog(meta, catalog).create(volume, snapshot)),
    );
  }

  async listSnapshots(volume: string): Promise<SnapshotStatus[]> {
    const online = await this.online<SnapshotStatus[]>('GET', snapshotsPath(volume));
    if (online) return online;
    return this.offline(async (catalog, meta) =>
      (await new SnapshotCatalog(meta, catalog).list(volume)).map(snapshotStatus),
    );
  }

  async deleteSnapshot(volume: string, snapshot: string): Promise<{ freed?: number }> {
    const online = await this.online<{ freed: number }>(
      'DELETE',
      `${snapshotsPath(volume)}/${encodeURIComponent(snapshot)}`,
    );
    if (online) return online;
    await this.offline(async (catalog, meta) => {
      await new SnapshotCatalog(meta, catalog).remove(volume, snapshot);
    });
    return {};
  }

  async restoreSnapshot(volume: string, snapshot: string): Promise<VolumeRow> {
    const online = await this.online<VolumeStatus>(
      'POST',
      `${snapshotsPath(volume)}/${encodeURIComponent(snapshot)}/restore`,
    );
    if (online) return online;
    return this.offline(async (catalog, meta) => {
      const taken = await new SnapshotCatalog(meta, catalog).get(volume, snapshot);
      if (this.etcd) await assertNoReaders(meta, volume);
      return publicRow((await catalog.restore(await catalog.get(volume), taken)).record);
    });
  }

  async cloneVolume(source: string, name: string, size?: number): Promise<VolumeRow> {
    const online = await this.online<VolumeStatus>('POST', '/v1/clones', { source, name, size });
    if (online) return online;
    return this.offline(async (catalog, meta) =>
      publicRow(
        await cloneVolume(catalog, new SnapshotCatalog(meta, catalog), source, name, { size }),
      ),
    );
  }

  /**
   * Resize a volume (node/volume-resize.ts): through the running torusd, else
   * offline (a single node grows only; a cluster shrinks with a node of its
   * own, cluster-shrink.ts). `online` says whether torusd did it.
   */
  async resizeVolume(
    name: string,
    size: number,
    options: ResizeOptions,
  ): Promise<ResizeResult & Partial<ClusterResizeResult> & { online: boolean }> {
    const online = await this.online<ResizeResult>(
      'POST',
      `/v1/volumes/${encodeURIComponent(name)}/resize`,
      { size, shrink: options.shrink === true },
    );
    if (online) return { ...online, online: true };
    const result = await this.offline(async (catalog, meta) => {
      if (!this.etcd) return resizeOffline(catalog, this.dataDir, name, size, options);
      return resizeOnCluster(catalog, meta, name, size, options, async () => {
        const settings = await catalog.settings();
        if (!settings) throw new NotFoundError(`${this.where} is not initialised`);
        await shrinkClusterVolume(meta, settings, name, size, this.keyFile);
      });
    });
    return { ...result, online: false };
  }

  async status(): Promise<unknown> {
    return adminCall(this.socket, 'GET', '/v1/status');
  }
}

function snapshotsPath(volume: string): string {
  return `/v1/volumes/${encodeURIComponent(volume)}/snapshots`;
}

/** A record as torusctl shows it: no key material, no map root. */
function publicRow(record: VolumeRecord): VolumeRow {
  const {
    wrappedKey: _k,
    masterKeyFingerprint: _f,
    root: _r,
    blockSize: _b,
    ancestors: _a,
    mapHeight: _h,
    ...row
  } = record;
  return row;
}
