/**
 * StorageNode: one node's storage, assembled — metadata store, local block
 * store, shared cache, worker pool and the volumes on top — and the
 * ExportProvider the NBD server serves from.
 *
 * Assembly only: each concern is a module of its own (README.md lists them).
 * The metadata store is opened first (the embedded one holds the data
 * directory's lock, so nothing else can open the same store); the hosting
 * mode then starts (a single node loads every volume before anything is
 * swept). In a cluster the peer service stops first when the node closes.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ConflictError, UsageError } from '../common/errors.js';
import { logger, type Logger } from '../common/log.js';
import { formatSize } from '../common/size.js';
import { openEmbeddedMetadataStore } from '../controlplane/metadata/embedded/index.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import { readClusterBinding } from '../controlplane/membership/node-identity.js';
import type { PeerTable } from '../controlplane/membership/peer-table.js';
import type { NodeRates } from '../controlplane/membership/registration.js';
import { VolumeCatalog, type ClusterSettings } from '../controlplane/volumes/catalog.js';
import { VolumeOwnership } from '../controlplane/volumes/ownership.js';
import type { LocalSlotStore } from '../dataplane/blocks/slot-store.js';
import { BlockCache } from '../dataplane/cache/block-cache.js';
import { KeyRing } from '../dataplane/crypto/key-ring.js';
import type { ExportInfo, ExportProvider, NbdExport } from '../dataplane/nbd/export.js';
import { DataPool } from '../dataplane/pool/data-pool.js';
import type { ClusterBlocks } from '../dataplane/replication/cluster-blocks.js';
import { BackgroundServices } from './background-services.js';
import {
  openClusterBlocks,
  registerReplicationGauges,
  type ClusterIdentity,
} from './cluster-blocks.js';
import { EveryVolumeHosting } from './every-volume-hosting.js';
import { openLocalStore, registerStorageGauges } from './local-storage.js';
import type { NodeMetrics } from './metrics.js';
import { OnDemandHosting } from './on-demand-hosting.js';
import { PeerServing, type PeerService, type PeerServiceOptions } from './peer-service.js';
import { VolumeAdmin, type VolumeStatus } from './volume-admin.js';
import { VolumeHost, type ExportDescription } from './volume-host.js';
import { volumeServices } from './volume-services.js';

export { DEFAULT_SCRUB_INTERVAL_MS, DEFAULT_SCRUB_RATE } from './background-services.js';
export type { PeerService, PeerServiceOptions } from './peer-service.js';
export { checkReplication, type VolumeStatus } from './volume-admin.js';

/**
 * 64 KiB: see docs/architecture.md "Block size". Small enough that a 4 KiB
 * random write costs at most one 64 KiB block write at the next flush (the
 * original's 512 KiB made that 128×), large enough that a 1 MiB sequential
 * write is 16 blocks, each hashed and stored in one batch.
 */
export const DEFAULT_BLOCK_SIZE = 64 * 1024;
export const DEFAULT_CACHE_BYTES = 1024 * 1024 * 1024;

export interface StorageNodeOptions {
  dataDir: string;
  /** Local store capacity; required the first time, ignored (with a warning if different) after. */
  capacityBytes?: number;
  /** Cluster block size, used only when the cluster is first initialised. */
  blockSize?: number;
  cacheBytes?: number;
  workers?: number;
  /** Master key file for encrypted volumes. */
  keyFile?: string;
  metrics?: NodeMetrics;
  log?: Logger;
  /**
   * An open metadata store to use (a cluster's etcd) instead of the embedded
   * one in <data-dir>/meta. The caller keeps it: close() leaves it open.
   */
  meta?: MetadataStore;
  /**
   * Cluster mode: this node's identity. Blocks are then placed by the ring
   * and replicated to peers (src/dataplane/replication); without it every
   * block is local.
   */
  cluster?: ClusterIdentity;
  /**
   * Cluster mode: how long a volume stays open, with its write lock, after
   * its last NBD session closed (default 5 s). 0 lets go at once.
   */
  lockLingerMs?: number;
  /** Cluster mode: bytes/s the rebalance may copy to peers (default 100 MiB/s). */
  rebalanceRate?: number;
  /** Cluster mode: a rebalance and GC run every this many ms besides those on ring changes (default 60 s; 0 none). */
  rebalanceIntervalMs?: number;
  /** Bytes/s a scrub pass reads from the local store (default 16 MiB/s). */
  scrubRate?: number;
  /** A scrub pass every this many ms, the first this long after start (default 24 h; 0 none). */
  scrubIntervalMs?: number;
}

export const DEFAULT_LOCK_LINGER_MS = 5000;

/** The node's parts, as open() assembles them. */
interface Parts {
  dataDir: string;
  settings: ClusterSettings;
  meta: MetadataStore;
  /** Whether close() closes meta (the embedded store; a caller's etcd stays open). */
  ownsMeta: boolean;
  catalog: VolumeCatalog;
  store: LocalSlotStore;
  cache: BlockCache;
  pool: DataPool;
  keys: KeyRing;
  cluster: ClusterBlocks | undefined;
  metrics: NodeMetrics | undefined;
  log: Logger;
}

export class StorageNode implements ExportProvider {
  readonly dataDir: string;
  readonly settings: ClusterSettings;
  readonly catalog: VolumeCatalog;
  readonly store: LocalSlotStore;
  readonly cache: BlockCache;
  /** Cluster mode: placement and peer copies; undefined on a single node. */
  readonly cluster: ClusterBlocks | undefined;
  /** Set by the cluster wiring so status() (admin API, /healthz) includes membership. */
  clusterStatus: (() => Record<string, unknown>) | undefined;
  private readonly ownership: VolumeOwnership;
  private readonly host: VolumeHost;
  private readonly admin: VolumeAdmin;
  private readonly peers: PeerServing;
  private background!: BackgroundServices;
  private closing = false;

  private constructor(
    private readonly parts: Parts,
    lockLingerMs: number,
  ) {
    const { meta, catalog, store, cache, pool, keys, cluster, metrics, log } = parts;
    this.dataDir = parts.dataDir;
    this.settings = parts.settings;
    this.catalog = catalog;
    this.store = store;
    this.cache = cache;
    this.cluster = cluster;
    this.ownership = new VolumeOwnership(meta, catalog, {
      node: cluster?.placement.localUuid,
      serialize: (name, fn) => this.host.exclusive(name, fn),
      log,
    });
    const services = volumeServices({
      store,
      cache,
      pool,
      log,
      cluster,
      ownership: this.ownership,
      metrics,
    });
    // The one decision between a single node and a cluster member's hosting.
    this.host = new VolumeHost({ ownership: this.ownership, keys, services, log }, (host) =>
      cluster
        ? new OnDemandHosting(host, catalog, cluster.placement, lockLingerMs, log)
        : new EveryVolumeHosting(host, catalog, store, log),
    );
    const clustered = cluster !== undefined;
    this.admin = new VolumeAdmin({
      catalog,
      settings: parts.settings,
      store,
      keys,
      host: this.host,
      clustered,
      log,
    });
    this.peers = new PeerServing(store, log);
  }

  static async open(options: StorageNodeOptions): Promise<StorageNode> {
    const log = options.log ?? logger('node');
    const lockLingerMs = options.lockLingerMs ?? DEFAULT_LOCK_LINGER_MS;
    if (!Number.isSafeInteger(lockLingerMs) || lockLingerMs < 0)
      throw new UsageError(
        `lock linger must be a whole number of milliseconds ≥ 0, got ${lockLingerMs}`,
      );
    await mkdir(options.dataDir, { recursive: true });
    const meta = options.meta ?? (await openEmbeddedMetadataStore(join(options.dataDir, 'meta')));
    try {
      if (!options.meta) await refuseClusterDataDir(options.dataDir);
      const catalog = new VolumeCatalog(meta);
      const settings = await catalog.initSettings({
        blockSize: options.blockSize ?? DEFAULT_BLOCK_SIZE,
        createdAt: new Date().toISOString(),
      });
      if (options.blockSize && options.blockSize !== settings.blockSize) {
        log.warn(
          { requested: options.blockSize, inForce: settings.blockSize },
          'block size is fixed when the cluster is initialised; ignoring --block-size',
        );
      }
      const store = await openLocalStore(
        options.dataDir,
        settings.blockSize,
        options.capacityBytes,
        log,
      );
      const cache = new BlockCache(settings.blockSize, options.cacheBytes ?? DEFAULT_CACHE_BYTES);
      const pool = new DataPool(
        {
          cache: cache.buffer,
          blockSize: settings.blockSize,
          records: store.records,
          dataPath: store.dataPath,
          slotsPath: store.slotsPath,
        },
        options.workers,
        options.cluster ? 4 : 1,
      );
      const keys = new KeyRing(options.keyFile ?? join(options.dataDir, 'master.key'));
      const cluster = options.cluster
        ? await openClusterBlocks(meta, options.cluster, log)
        : undefined;
      const { dataDir, metrics } = options;
      const ownsMeta = !options.meta;
      const node = new StorageNode(
        {
          dataDir,
          settings,
          meta,
          ownsMeta,
          catalog,
          store,
          cache,
          pool,
          keys,
          cluster,
          metrics,
          log,
        },
        lockLingerMs,
      );
      await node.host.start();
      node.background = new BackgroundServices({
        store,
        meta,
        catalog,
        cluster,
        peers: node.peers,
        log,
        scrub: { rate: options.scrubRate, intervalMs: options.scrubIntervalMs },
        rebalance: { rate: options.rebalanceRate, intervalMs: options.rebalanceIntervalMs },
      });
      if (options.metrics) node.registerGauges(options.metrics);
      const [capacity, used] = [
        formatSize(store.slotCount * store.blockSize),
        formatSize(store.usedSlots * store.blockSize),
      ];
      const volumes = node.host.volumes.size;
      log.info(
        {
          dataDir,
          capacity,
          used,
          volumes,
          cache: formatSize(cache.slotCount * cache.blockSize),
          workers: pool.threads,
        },
        'storage node ready',
      );
      return node;
    } catch (err) {
      if (!options.meta) await meta.close();
      throw err;
    }
  }

  /** Each group of gauges is registered by the module that owns what it measures. */
  private registerGauges(metrics: NodeMetrics): void {
    registerStorageGauges(metrics, this.store, this.cache);
    this.host.registerGauges(metrics);
    this.background.registerScrubGauges(metrics);
    if (this.cluster) {
      registerReplicationGauges(metrics, this.cluster, this.parts.pool);
      this.peers.registerGauges(metrics);
      this.background.registerRebalanceGauges(metrics);
    }
  }

  // ExportProvider, administration: the host's and the admin's.
  list(): Promise<ExportInfo[]> {
    return this.host.list();
  }

  describe(name: string): Promise<ExportDescription | undefined> {
    return this.host.describe(name);
  }

  open(name: string): Promise<NbdExport | undefined> {
    return this.host.open(name);
  }

  createVolume(
    name: string,
    size: number,
    options: { encrypt?: boolean; replication?: number } = {},
  ): Promise<VolumeStatus> {
    return this.admin.createVolume(name, size, options);
  }

  deleteVolume(name: string): Promise<void> {
    return this.admin.deleteVolume(name);
  }

  listVolumes(): Promise<VolumeStatus[]> {
    return this.admin.listVolumes();
  }

  flushVolume(name: string): Promise<void> {
    return this.admin.flushVolume(name);
  }

  /** Flush every volume (best effort, each on its own). */
  flushAll(): Promise<void> {
    return this.admin.flushAll();
  }

  status() {
    const { store, cache, cluster, host, background } = this;
    return {
      dataDir: this.dataDir,
      blockSize: this.settings.blockSize,
      capacity: store.slotCount * store.blockSize,
      used: store.usedSlots * store.blockSize,
      cache: {
        size: cache.slotCount * cache.blockSize,
        dirty: cache.dirtySlots * cache.blockSize,
        hits: cache.hits,
        misses: cache.misses,
      },
      volumes: host.volumes.size,
      unavailable: Object.fromEntries(host.unavailable),
      scrub: background.scrubStats,
      ...(this.clusterStatus ? { cluster: this.clusterStatus() } : {}),
      ...(cluster
        ? {
            replication: {
              ...cluster.stats,
              workers: this.parts.pool.replicationStats,
              ...background.replicationStatus,
            },
          }
        : {}),
    };
  }

  // ------------------------------------------------------------- cluster

  /**
   * Serve this node's local store to the cluster's other nodes over TBP
   * (cluster mode): a PeerServer on host:port over a DiskPeerBackend. Rejects
   * with the listen error (EADDRINUSE, …), leaving nothing running.
   */
  async servePeers(options: PeerServiceOptions): Promise<PeerService> {
    if (this.closing) throw new Error('storage node is closing');
    return this.peers.serve(options);
  }

  /** The running peer service (servePeers), if any: the PeerServer, its DiskPeerBackend and address. */
  get peerService(): PeerService | undefined {
    return this.peers.current;
  }

  /**
   * Stop serving peers: the server drains (new requests get SHUTTING_DOWN)
   * for up to drainMs, then the backend waits for what still runs on the
   * store. Before the store closes; close() does it too.
   */
  stopServingPeers(drainMs = 3000): Promise<void> {
    return this.peers.stop(drainMs);
  }

  /** Cluster mode: keep placement current with the ring and live nodes; start rebalance and GC. */
  followMembership(table: PeerTable): void {
    this.background.followMembership(table);
  }

  get rebalanceStatus() {
    return this.background.rebalanceStatus;
  }

  /** What this node reports with its registration (list-peers REB/REP DATA). */
  clusterRates(): NodeRates {
    return this.background.clusterRates();
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.host.beginClose();
    this.ownership.stopRecovering();
    // Background copying ends before the peer service it uses for this store does.
    await this.background.close();
    await this.stopServingPeers();
    await this.flushAll();
    await this.host.closeVolumes();
    // After the last commit: release, so another node may take over at once.
    await this.ownership.releaseAll();
    await this.cluster?.close();
    await this.parts.pool.close();
    await this.store.close();
    if (this.parts.ownsMeta) await this.parts.meta.close();
  }
}

/**
 * A directory that joined a cluster keeps its volumes' records in that
 * cluster's etcd: opened on the single-node store, the start-up sweep would
 * find none of them and free every block.
 */
async function refuseClusterDataDir(dataDir: string): Promise<void> {
  const binding = await readClusterBinding(dataDir);
  if (binding) {
    throw new ConflictError(
      `data directory ${dataDir} belongs to a cluster (joined through etcd ${binding.etcd}): give --etcd ${binding.etcd}, or use another --data-dir for a single node`,
    );
  }
}
