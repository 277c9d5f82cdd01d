/**
 * StorageNode: one node's storage, assembled — metadata store, local block
 * store, shared cache, worker pool and the volumes on top — and the
 * ExportProvider the NBD server serves from.
 *
 * Assembly only: each concern is a module of its own (README.md lists them).
 * The parts open in node-parts.ts; the hosting mode then starts (a single
 * node loads every volume before anything is swept). In a cluster the peer
 * service stops first when the node closes.
 */
import { UsageError } from '../common/errors.js';
import { formatSize } from '../common/size.js';
import type { PeerTable } from '../controlplane/membership/peer-table.js';
import type { NodeRates } from '../controlplane/membership/registration.js';
import type { ClusterSettings, VolumeCatalog } from '../controlplane/volumes/catalog.js';
import { VolumeOwnership } from '../controlplane/volumes/ownership.js';
import type { LocalSlotStore } from '../dataplane/blocks/slot-store.js';
import type { BlockCache } from '../dataplane/cache/block-cache.js';
import type { ExportInfo, ExportProvider, NbdExport } from '../dataplane/nbd/export.js';
import type { ClusterBlocks } from '../dataplane/replication/cluster-blocks.js';
import { BackgroundServices } from './background-services.js';
import { registerReplicationGauges } from './cluster-blocks.js';
import { EveryVolumeHosting } from './every-volume-hosting.js';
import { LocalGc, registerGcGauges } from './local-gc.js';
import {
  registerHolderLogGauges,
  registerIntentLogGauges,
  registerStorageGauges,
} from './local-storage.js';
import type { NodeMetrics } from './metrics.js';
import {
  closeNodeParts,
  DEFAULT_LOCK_LINGER_MS,
  DEFAULT_ORPHAN_ADOPT_AFTER_MS,
  openNodeParts,
  type NodeParts,
  type StorageNodeOptions,
} from './node-parts.js';
import { OnDemandHosting } from './on-demand-hosting.js';
import { PeerServing, type PeerService, type PeerServiceOptions } from './peer-service.js';
import { VolumeAdmin, type VolumeStatus } from './volume-admin.js';
export type { SnapshotStatus } from './volume-admin.js';
import { VolumeHost, type ExportDescription } from './volume-host.js';
import { VolumeResizer, type ResizeOptions, type ResizeResult } from './volume-resize.js';
import { FOLD_QUIET_MS } from '../dataplane/volume/patch-folds.js';
import { volumeServices } from './volume-services.js';
import { reportIfSlow } from '../common/slow-step.js';
import { IntentReplication } from './intent-replication.js';

export { DEFAULT_SCRUB_INTERVAL_MS, DEFAULT_SCRUB_RATE } from './background-services.js';
export {
  DEFAULT_BLOCK_SIZE,
  DEFAULT_CACHE_BYTES,
  DEFAULT_LOCK_LINGER_MS,
  type StorageNodeOptions,
} from './node-parts.js';
export type { PeerService, PeerServiceOptions } from './peer-service.js';
export { checkReplication, type VolumeStatus } from './volume-admin.js';
export type { ResizeOptions, ResizeResult } from './volume-resize.js';

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
  /** Set by torusd once it listens, so status() tells clients (torusctl block dump/load) where NBD is. */
  nbdListen: { tcp?: string; unix?: string; tcpUnavailable?: string } | undefined;
  private readonly ownership: VolumeOwnership;
  private readonly host: VolumeHost;
  private readonly admin: VolumeAdmin;
  private readonly resizer: VolumeResizer;
  private readonly peers: PeerServing;
  /** A single node's GC; a cluster's runs in its rebalancer. */
  private gc: LocalGc | undefined;
  private background!: BackgroundServices;
  private closing = false;

  private constructor(
    private readonly parts: NodeParts,
    lockLingerMs: number,
    foldQuietMs: number,
  ) {
    const { meta, catalog, snapshots, store, cache, pool, keys, cluster, metrics, log } = parts;
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
      intentLog: parts.intentLog,
      metrics,
      foldQuietMs,
    });
    // The one decision between a single node and a cluster member's hosting.
    this.host = new VolumeHost(
      { ownership: this.ownership, snapshots, keys, services, log },
      (host) => {
        if (cluster)
          return new OnDemandHosting(
            host,
            catalog,
            cluster.placement,
            lockLingerMs,
            log,
            new IntentReplication({
              self: cluster.placement.localUuid,
              holder: parts.holderLog,
              logFlushes: parts.replicatedFlush,
              cluster,
              hash: parts.hasher,
              log,
            }),
          );
        // A single node collects its own garbage; a cluster's rebalancer does (BackgroundServices).
        this.gc = new LocalGc(host, snapshots, store, log.child({ component: 'gc' }));
        return new EveryVolumeHosting(host, catalog, this.gc, log, parts.intentLog);
      },
    );
    const clustered = cluster !== undefined;
    this.admin = new VolumeAdmin({
      catalog,
      snapshots,
      gc: this.gc,
      settings: parts.settings,
      store,
      keys,
      host: this.host,
      clustered,
      log,
    });
    this.resizer = new VolumeResizer({
      catalog,
      host: this.host,
      limit: clustered
        ? undefined
        : { bytes: store.slotCount * store.blockSize, what: "this node's store capacity" },
      clustered,
      log,
    });
    this.peers = new PeerServing(store, log, parts.holderLog, (volumeId) =>
      this.commitWritten(volumeId),
    );
  }

  static async open(options: StorageNodeOptions): Promise<StorageNode> {
    const lockLingerMs = options.lockLingerMs ?? DEFAULT_LOCK_LINGER_MS;
    if (!Number.isSafeInteger(lockLingerMs) || lockLingerMs < 0)
      throw new UsageError(
        `lock linger must be a whole number of milliseconds ≥ 0, got ${lockLingerMs}`,
      );
    const parts = await openNodeParts(options);
    const { store, meta, catalog, snapshots, cluster, cache, pool, log } = parts;
    try {
      const node = new StorageNode(parts, lockLingerMs, options.foldQuietMs ?? FOLD_QUIET_MS);
      await node.host.start();
      node.background = new BackgroundServices({
        store,
        meta,
        catalog,
        snapshots,
        cluster,
        peers: node.peers,
        holderLog: parts.holderLog,
        adoptOrphans: (names) =>
          node.host.adoptOrphans(
            names,
            options.orphanAdoptAfterMs ?? DEFAULT_ORPHAN_ADOPT_AFTER_MS,
          ),
        log,
        scrub: { rate: options.scrubRate, intervalMs: options.scrubIntervalMs },
        rebalance: { rate: options.rebalanceRate, intervalMs: options.rebalanceIntervalMs },
      });
      if (options.metrics) node.registerGauges(options.metrics);
      log.info(
        {
          dataDir: parts.dataDir,
          capacity: formatSize(store.slotCount * store.blockSize),
          used: formatSize(store.usedSlots * store.blockSize),
          volumes: node.host.volumes.size,
          cache: formatSize(cache.slotCount * cache.blockSize),
          workers: pool.threads,
        },
        'storage node ready',
      );
      return node;
    } catch (err) {
      await closeNodeParts(parts);
      throw err;
    }
  }

  /** Each group of gauges is registered by the module that owns what it measures. */
  private registerGauges(metrics: NodeMetrics): void {
    registerStorageGauges(metrics, this.store, this.cache, this.parts.pool);
    if (this.parts.intentLog) registerIntentLogGauges(metrics, this.parts.intentLog);
    if (this.parts.holderLog) registerHolderLogGauges(metrics, this.parts.holderLog);
    this.host.registerGauges(metrics);
    this.background.registerScrubGauges(metrics);
    if (this.gc) registerGcGauges(metrics, this.gc, this.store.blockSize);
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

  deleteVolume(name: string, options: { withSnapshots?: boolean } = {}): Promise<void> {
    return this.admin.deleteVolume(name, options);
  }

  /** Snapshots and clones: VolumeAdmin's (volume-admin.ts). */
  get volumes(): VolumeAdmin {
    return this.admin;
  }

  resizeVolume(name: string, size: number, options?: ResizeOptions): Promise<ResizeResult> {
    return this.resizer.resize(name, size, options);
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

  /** Single node: commit every volume and collect what those commits left for GC (before space figures). */
  commitAndCollect(): Promise<void> {
    return this.admin.commitAndCollect();
  }

  status() {
    const { store, cache, cluster, host, background } = this;
    return {
      dataDir: this.dataDir,
      blockSize: this.settings.blockSize,
      capacity: store.slotCount * store.blockSize,
      used: store.usedSlots * store.blockSize,
      // Slots kept only as patches' bases: not in `used`, still not free.
      heldAsBases: store.heldSlots * store.blockSize,
      patches: store.patchSlots,
      cache: {
        size: cache.slotCount * cache.blockSize,
        dirty: cache.dirtySlots * cache.blockSize,
        hits: cache.hits,
        misses: cache.misses,
      },
      volumes: host.volumes.size,
      unavailable: Object.fromEntries(host.unavailable),
      scrub: background.scrubStats,
      ...(this.nbdListen ? { nbd: this.nbdListen } : {}),
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
  /** Commit volume `volumeId` if this node writes it (a peer asks before serving it read-only). */
  private async commitWritten(volumeId: number): Promise<void> {
    for (const volume of this.host.volumes.values())
      if (volume.id === volumeId && this.ownership.writing(volume.name)) await volume.commit();
  }

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
    const step = <T>(name: string, run: () => Promise<T>) =>
      reportIfSlow(this.parts.log, `node close: ${name}`, run);
    this.host.beginClose();
    await step('settle volume opens and closes', () => this.host.settle());
    this.ownership.stopRecovering();
    // Background copying ends before the peer service it uses for this store does.
    await step('background services', () => this.background.close());
    await step('peer service', () => this.stopServingPeers());
    await step('flush volumes', () => this.flushAll());
    await step('close volumes', () => this.host.closeVolumes());
    // After the last commit: release, so another node may take over at once.
    await step('release write locks', () => this.ownership.releaseAll());
    await step('close stores and workers', () => closeNodeParts(this.parts));
  }
}
