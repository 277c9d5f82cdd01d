/**
 * The volume operations of the library (Torus extends this), and so of
 * torusctl and torusblk: list, create, delete, resize, snapshots, clones.
 *
 * Where each runs, in order:
 *  - a cluster (etcd configured): on the catalog in etcd, never on a local
 *    socket or directory (a shrink with a store-less node of its own,
 *    cluster-shrink.ts);
 *  - a single node this process has open (the library's in-process node,
 *    while handles are open on a data directory without torusd): on it;
 *  - a single node whose torusd runs: through its admin socket;
 *  - otherwise on the node's metadata store directly (which takes the data
 *    directory's lock, so it can never race a torusd). Offline, deleting a
 *    volume only removes its record: torusd frees the blocks at its next
 *    start.
 */
import { ensureDirectory } from '../common/dirs.js';
import { join, resolve } from 'node:path';
import { ConflictError, UsageError } from '../common/errors.js';
import type { StoredRing } from '../controlplane/membership/ring-store.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import type { VolumeCatalog, VolumeRecord } from '../controlplane/volumes/catalog.js';
import type { SnapshotStatus } from '../controlplane/volumes/snapshots.js';
import { adminCall } from '../node/admin-api.js';
// Types only from the node and the catalogs, and the constants and checks
// from light modules: torusctl loads this for every command. The whole node
// (worker pool, gRPC, the data plane) costs a quarter of a second to import,
// and what works on a catalog directly (catalog-modules.ts) two thirds of
// torusctl's start-up: both are imported when first needed.
import { DEFAULT_BLOCK_SIZE } from '../common/block-size.js';
import { checkReplication } from '../model/replication.js';
import type { StorageNode, VolumeStatus } from '../node/storage-node.js';
import type { ResizeOptions, ResizeResult } from '../node/volume-resize.js';
import type { CatalogModules } from './catalog-modules.js';
import type { EtcdConfig } from './cluster-store.js';
import type { PoolSpace } from './pool-space.js';
import type { ClusterResizeResult } from './volume-resize-offline.js';

/** A volume as listed: no key material, no map root. */
export interface VolumeInfo extends Omit<VolumeStatus, 'used' | 'sessions'> {
  /** Bytes stored for it (single node). */
  used?: number;
  /** NBD sessions open on it (single node, from the running node). */
  sessions?: number;
  /** Cluster: who holds the volume's write lock (node, host, pid), if anyone. */
  lockedBy?: string;
  /** Cluster: the nodes serving it read-only, each at the version it pinned. */
  readers?: { node: string; generation: number; since: string }[];
}

/** A snapshot as listed: name VOL@SNAP, when taken, size, version, and what deleting it would free. */
export type SnapshotInfo = SnapshotStatus;

/** What resizeVolume did: the old and new size, and who keeps the old size until they reopen. */
export type ResizeInfo = ResizeResult & Partial<ClusterResizeResult> & { online: boolean };

/** Where a client's volumes are: a single node's data directory, or a cluster's etcd. */
export interface OperationsTarget {
  /** The single node's data directory (on a cluster: only the default key file's place). */
  dataDir: string;
  /** Set: the cluster's etcd holds the catalog. */
  etcd?: EtcdConfig;
  /** Master key file for encrypted volumes (a single node's default: DATA_DIR/master.key). */
  keyFile?: string;
}

export class VolumeOperations {
  readonly dataDir: string;
  readonly etcd: EtcdConfig | undefined;
  protected readonly keyFile: string | undefined;
  private readonly socket: string;

  protected constructor(target: OperationsTarget) {
    this.dataDir = resolve(target.dataDir);
    this.etcd = target.etcd;
    this.keyFile = target.keyFile;
    this.socket = join(this.dataDir, 'torusd.sock');
  }

  /** The single node this process has open, if any (Torus: while handles are open without torusd). */
  protected inProcessNode(): StorageNode | undefined {
    return undefined;
  }

  /** The master key file: as given; a single node's default is DATA_DIR/master.key, a cluster has none. */
  private masterKeyFile(): string {
    if (this.keyFile) return this.keyFile;
    if (this.etcd)
      throw new UsageError(
        'an encrypted volume needs the master key file its key is wrapped with: give keyFile (torusctl: --key-file)',
      );
    return join(this.dataDir, 'master.key');
  }

  /** Where the metadata is, for messages: the etcd endpoints or the data directory. */
  get where(): string {
    return this.etcd ? `etcd ${this.etcd.endpoints}` : this.dataDir;
  }

  /**
   * On a running single node: the one open in this process (`local`), else
   * torusd through its socket (method, path, body: node/admin-api.ts).
   * Undefined on a cluster, or when no node runs.
   */
  private async online<T>(
    local: (node: StorageNode) => Promise<T>,
    method: string,
    path: string,
    body?: unknown,
  ): Promise<T | undefined> {
    if (this.etcd) return undefined;
    const node = this.inProcessNode();
    if (node) return local(node);
    return adminCall<T>(this.socket, method, path, body);
  }

  /** On the catalog directly: `work` gets it, its store, and the modules that work with them. */
  private async offline<T>(
    work: (catalog: VolumeCatalog, meta: MetadataStore, lib: CatalogModules) => Promise<T>,
  ): Promise<T> {
    const lib = await catalogModules();
    const meta = this.etcd
      ? await lib.openClusterStore(this.etcd, { thread: false })
      : await this.openLocal(lib);
    try {
      return await work(new lib.VolumeCatalog(meta), meta, lib);
    } finally {
      await meta.close();
    }
  }

  private async openLocal(lib: CatalogModules): Promise<MetadataStore> {
    await ensureDirectory(this.dataDir, 'data directory');
    const binding = await lib.readClusterBinding(this.dataDir);
    if (binding) {
      throw new ConflictError(
        `data directory ${this.dataDir} belongs to a cluster: its volumes are in etcd; use -C ${binding.etcd}`,
      );
    }
    return lib.openEmbeddedMetadataStore(join(this.dataDir, 'meta'));
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
    return this.offline(async (catalog, meta, lib) => {
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
      const { ring, created: ringCreated } = await lib.initRing(meta, {
        replication: replication ?? lib.DEFAULT_REPLICATION,
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

  /** Every volume, with its size, space used, version and (cluster) who has it open. */
  async listVolumes(): Promise<VolumeInfo[]> {
    const online = await this.online((node) => node.listVolumes(), 'GET', '/v1/volumes');
    if (online) return online;
    return this.offline(async (catalog, meta, lib) => {
      const locks = this.etcd ? await lib.listVolumeLocks(meta) : new Map();
      const pins = this.etcd ? await lib.listReadPins(meta) : [];
      const space = this.etcd ? await lib.clusterSnapshotSpace(meta) : undefined;
      const snapshotCounts = new Map<string, number>();
      if (this.etcd)
        for (const s of await new lib.SnapshotCatalog(meta, catalog).listAll())
          snapshotCounts.set(s.volume, (snapshotCounts.get(s.volume) ?? 0) + 1);
      // Cluster: a volume without its own replication has the ring's.
      const ringReplication = this.etcd
        ? (await lib.readRing(meta))?.description.replication
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
          const snapshots = snapshotCounts.get(row.name) ?? 0;
          const shown = this.etcd
            ? {
                ...row,
                replication: row.replication ?? ringReplication,
                readers,
                snapshots,
                ...(space && snapshots > 0
                  ? { snapshotOnly: space.volumes.get(row.name) ?? 0 }
                  : {}),
              }
            : row;
          return lock ? { ...shown, lockedBy: lib.describeHolder(lock.holder) } : shown;
        },
      );
    });
  }

  /**
   * Create a thin volume of `size` bytes (a positive multiple of 4 KiB);
   * `encrypt`: AES-256-GCM at rest, its key wrapped by the master key;
   * `replication` (cluster): copies of each block, else the ring's.
   */
  async createVolume(
    name: string,
    size: number,
    options: { encrypt?: boolean; replication?: number } = {},
  ): Promise<VolumeInfo> {
    const encrypt = options.encrypt === true;
    const replication = options.replication;
    if (!Number.isSafeInteger(size) || size <= 0 || size % 4096 !== 0) {
      throw new UsageError(`volume size must be a positive multiple of 4 KiB, got ${size} bytes`);
    }
    checkReplication(replication, this.etcd !== undefined);
    const online = await this.online(
      (node) => node.createVolume(name, size, { encrypt, replication }),
      'POST',
      '/v1/volumes',
      { name, size, encrypt, replication },
    );
    if (online) return online;
    return this.offline(async (catalog, _meta, lib) => {
      const settings =
        (await catalog.settings()) ??
        (await catalog.initSettings({
          blockSize: DEFAULT_BLOCK_SIZE,
          createdAt: new Date().toISOString(),
        }));
      const wrapped = encrypt
        ? await new lib.KeyRing(this.masterKeyFile()).newWrappedKey()
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

  /**
   * Delete a volume (refused while a client has it open, or while it has
   * snapshots unless `withSnapshots`). `online`: a running node freed its
   * blocks at once; otherwise GC does (a single node's next start, a
   * cluster's rebalancer).
   */
  async deleteVolume(
    name: string,
    options: { withSnapshots?: boolean } = {},
  ): Promise<{ online: boolean }> {
    const query = options.withSnapshots ? '?with-snapshots=1' : '';
    const online = await this.online(
      async (node) => {
        await node.deleteVolume(name, options);
        return true;
      },
      'DELETE',
      `/v1/volumes/${encodeURIComponent(name)}${query}`,
    );
    if (online) return { online: true };
    await this.offline(async (catalog, meta, lib) => {
      if (this.etcd) {
        await lib.assertNoReaders(meta, name);
        if (options.withSnapshots) await lib.assertNoSnapshotReaders(meta, name);
      }
      await catalog.remove(name, options);
    });
    return { online: false };
  }

  // Snapshots and clones: metadata only, so with no torusd running (or on a
  // cluster) they are made on the catalog directly; GC (the next start of a
  // single node, every node's rebalancer in a cluster) frees what they release.

  /** Keep the volume as last committed (everything flushed) as VOLUME@SNAPSHOT; instant. */
  async createSnapshot(volume: string, snapshot: string): Promise<SnapshotInfo> {
    const online = await this.online(
      (node) => node.volumes.createSnapshot(volume, snapshot),
      'POST',
      snapshotsPath(volume),
      { name: snapshot },
    );
    if (online) return online;
    return this.offline(async (catalog, meta, lib) =>
      lib.snapshotStatus(await new lib.SnapshotCatalog(meta, catalog).create(volume, snapshot)),
    );
  }

  /** A volume's snapshots, oldest first. */
  async listSnapshots(volume: string): Promise<SnapshotInfo[]> {
    const online = await this.online(
      (node) => node.volumes.listSnapshots(volume),
      'GET',
      snapshotsPath(volume),
    );
    if (online) return online;
    return this.offline(async (catalog, meta, lib) => {
      const records = await new lib.SnapshotCatalog(meta, catalog).list(volume);
      const space = this.etcd ? await lib.clusterSnapshotSpace(meta) : undefined;
      return records.map((record) => {
        const exclusive = space?.snapshots.get(`${record.volume}@${record.name}`);
        return { ...lib.snapshotStatus(record), ...(space ? { exclusive: exclusive ?? 0 } : {}) };
      });
    });
  }

  /** Delete a snapshot; `freed`: the bytes a running node freed at once (GC frees them otherwise). */
  async deleteSnapshot(volume: string, snapshot: string): Promise<{ freed?: number }> {
    const online = await this.online(
      (node) => node.volumes.deleteSnapshot(volume, snapshot),
      'DELETE',
      `${snapshotsPath(volume)}/${encodeURIComponent(snapshot)}`,
    );
    if (online) return online;
    await this.offline(async (catalog, meta, lib) => {
      if (this.etcd) await lib.assertNoSnapshotReaders(meta, volume, snapshot);
      await new lib.SnapshotCatalog(meta, catalog).remove(volume, snapshot);
    });
    return {};
  }

  /** Every snapshot of every volume: one catalog read on a cluster, volume by volume on a single node. */
  async listAllSnapshots(): Promise<SnapshotInfo[]> {
    if (this.etcd)
      return this.offline(async (catalog, meta, lib) =>
        (await new lib.SnapshotCatalog(meta, catalog).listAll()).map(lib.snapshotStatus),
      );
    const lists = await Promise.all(
      (await this.listVolumes()).map((v) => this.listSnapshots(v.name).catch(() => [])),
    );
    return lists.flat();
  }

  /** The pool's block size, raw capacity and use, and copies per block (pool-space.ts). */
  async poolSpace(): Promise<PoolSpace> {
    const status = await this.online(async (node) => node.status(), 'GET', '/v1/status');
    if (status) return (await catalogModules()).singleNodeSpace(status);
    return this.offline((catalog, meta, lib) =>
      lib.readPoolSpace(
        catalog,
        meta,
        this.etcd ? { cluster: true } : { cluster: false, dataDir: this.dataDir },
      ),
    );
  }

  /** Make the volume's content the snapshot's, atomically (refused while a client has it open). */
  async restoreSnapshot(volume: string, snapshot: string): Promise<VolumeInfo> {
    const online = await this.online(
      (node) => node.volumes.restoreSnapshot(volume, snapshot),
      'POST',
      `${snapshotsPath(volume)}/${encodeURIComponent(snapshot)}/restore`,
    );
    if (online) return online;
    return this.offline(async (catalog, meta, lib) => {
      const taken = await new lib.SnapshotCatalog(meta, catalog).get(volume, snapshot);
      if (this.etcd) await lib.assertNoReaders(meta, volume);
      return publicRow((await catalog.restore(await catalog.get(volume), taken)).record);
    });
  }

  /**
   * Cluster: forget volume `name`'s replicated intent log when every node
   * holding it is gone for good (controlplane/volumes/intent-forget.ts): the
   * FLUSHes its dead writer acknowledged after the last commit are lost.
   * Refused while anyone holds the write lock.
   */
  async forgetIntentLog(name: string): Promise<{ holders: string[]; epoch: number }> {
    if (!this.etcd)
      throw new UsageError('a single node keeps no replicated intent log: nothing to forget');
    return this.offline((catalog, meta, lib) => lib.forgetIntentLog(meta, catalog, name));
  }

  /** Create volume `name` sharing every block of `source` (VOL or VOL@SNAP) copy-on-write; instant. */
  async cloneVolume(
    source: string,
    name: string,
    options: { size?: number } = {},
  ): Promise<VolumeInfo> {
    const { size } = options;
    const online = await this.online(
      (node) => node.volumes.cloneVolume(source, name, { size }),
      'POST',
      '/v1/clones',
      { source, name, size },
    );
    if (online) return online;
    return this.offline(async (catalog, meta, lib) =>
      publicRow(
        await lib.cloneVolume(catalog, new lib.SnapshotCatalog(meta, catalog), source, name, {
          size,
        }),
      ),
    );
  }

  /**
   * Resize a volume (node/volume-resize.ts): through the running torusd, else
   * offline (a single node grows only; a cluster shrinks with a node of its
   * own, cluster-shrink.ts). `online` says whether torusd did it.
   */
  async resizeVolume(name: string, size: number, options: ResizeOptions = {}): Promise<ResizeInfo> {
    const online = await this.online(
      (node) => node.resizeVolume(name, size, options),
      'POST',
      `/v1/volumes/${encodeURIComponent(name)}/resize`,
      { size, shrink: options.shrink === true },
    );
    if (online) return { ...online, online: true };
    const result = await this.offline(async (catalog, meta, lib) => {
      if (!this.etcd) return lib.resizeOffline(catalog, this.dataDir, name, size, options);
      return lib.resizeOnCluster(catalog, meta, name, size, options, async () =>
        (await import('./cluster-shrink.js')).shrinkClusterVolume(
          meta,
          this.etcd!.endpoints,
          name,
          size,
          this.keyFile,
          this.etcd!.peerTls,
        ),
      );
    });
    return { ...result, online: false };
  }

  /** The running torusd's status (its store, cache, volumes, NBD listeners), or undefined when none runs. */
  async status(): Promise<unknown> {
    const node = this.inProcessNode();
    if (node) return node.status();
    return this.etcd ? undefined : adminCall(this.socket, 'GET', '/v1/status');
  }
}

/** The catalog modules, loaded once, on first use. */
function catalogModules(): Promise<CatalogModules> {
  return import('./catalog-modules.js');
}

function snapshotsPath(volume: string): string {
  return `/v1/volumes/${encodeURIComponent(volume)}/snapshots`;
}

/** A record as torusctl shows it: no key material, no map root. */
function publicRow(record: VolumeRecord): VolumeInfo {
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
