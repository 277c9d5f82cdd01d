/**
 * StorageNode: one node's storage, assembled — metadata store, local block
 * store, shared cache, worker pool and the volumes on top — and the
 * ExportProvider the NBD server serves from.
 *
 * Start-up order matters for safety: the metadata store is opened first (it
 * holds the data directory's lock, so nothing else can open the same store),
 * every volume's committed map is loaded and verified, and only when all of
 * them loaded are blocks no version references swept away. A volume that
 * can't be loaded (missing key, damaged map) disables the sweep rather than
 * letting it free that volume's blocks.
 *
 * In a cluster the node also serves its store to its peers (servePeers: a
 * TBP PeerServer over a DiskPeerBackend); that stops first when it closes.
 * Volumes are then opened on demand, when an NBD client asks for one (so a
 * volume created anywhere after start is served too), and the volume's write
 * lock is taken at that moment: the node whose client came first writes, every
 * other node serves the volume read-only until the writer lets go. The lock
 * is held while any session is open and for lockLingerMs after the last one
 * closes (a reconnecting client keeps its warm cache), then the volume is
 * committed, closed and the lock released.
 */
import { mkdir } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { ConflictError, NotFoundError, UsageError } from '../common/errors.js';
import { logger, type Logger } from '../common/log.js';
import { formatSize } from '../common/size.js';
import { openEmbeddedMetadataStore } from '../controlplane/metadata/embedded/index.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import { readClusterBinding } from '../controlplane/membership/node-identity.js';
import { VolumeCatalog, type ClusterSettings, type VersionedRecord, type VolumeRecord } from '../controlplane/volumes/catalog.js';
import { hasher } from '../dataplane/blocks/hash.js';
import { ClusterBlocks } from '../dataplane/replication/cluster-blocks.js';
import { acquireVolumeLock, describeHolder, localHolder, readVolumeLock, volumeLockKey, VolumeLockedError, type LockHolder, type VolumeLock } from '../controlplane/locks/index.js';
import { ClusterPlacement, MAX_TARGETS } from '../dataplane/replication/placement.js';
import { ReplicaRepair } from '../dataplane/replication/repair.js';
import { Rebalancer } from '../dataplane/replication/rebalance.js';
import { CatalogGcViews } from '../dataplane/replication/gc-catalog.js';
import { Scrubber } from '../dataplane/blocks/scrub.js';
import { assertNoReaders, listReadPins, pinCurrentVersion, type ReadPin } from '../controlplane/volumes/read-pins.js';
import { readMembership, type PeerTable } from '../controlplane/membership/peer-table.js';
import type { NodeRates } from '../controlplane/membership/registration.js';
import { refKey, type BlockRef } from '../dataplane/blocks/ref.js';
import { LocalSlotStore } from '../dataplane/blocks/slot-store.js';
import { BlockCache } from '../dataplane/cache/block-cache.js';
import { KeyRing } from '../dataplane/crypto/key-ring.js';
import type { ExportInfo, ExportProvider, NbdExport } from '../dataplane/nbd/export.js';
import { PeerServer } from '../dataplane/peer/server.js';
import { DataPool } from '../dataplane/pool/data-pool.js';
import { DiskPeerBackend } from '../dataplane/replication/disk-backend.js';
import { Volume, type VolumeServices } from '../dataplane/volume/volume.js';
import { MAX_PAYLOAD, VolumeExport } from '../dataplane/volume/volume-export.js';
import { sameMapRoot, type MapRoot } from '../dataplane/volume/block-map.js';
import type { NodeMetrics } from './metrics.js';

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
  cluster?: {
    uuid: string;
    clusterId: string;
    /**
     * False for a store-less client (torusblk nbdserve): the local store is
     * scratch for map pages, never a place for copies (default true).
     */
    holdsCopies?: boolean;
  };
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

export const DEFAULT_SCRUB_RATE = 16 * 2 ** 20;
export const DEFAULT_SCRUB_INTERVAL_MS = 24 * 3600 * 1000;

export const DEFAULT_LOCK_LINGER_MS = 5000;
/** A volume write lock's lease: how long a writer cut off from etcd keeps it. */
const LOCK_TTL_SECONDS = 10;
/** How often a writer that lost its lock tries to win it back. */
const LOCK_RETRY_MS = 1000;

export interface PeerServiceOptions {
  /** Where to listen for TBP (the host and port of --peer-address). */
  host: string;
  port: number;
  /** The cluster's id (membership: its settings' creation time); peers of another are refused. */
  clusterId: string;
  /** This node's uuid, as registered and in the ring. */
  nodeId: string;
  log?: Logger;
}

/** The node's store as served to its peers. */
export interface PeerService {
  server: PeerServer;
  /** What the server serves from; replication uses it for this node's own copy. */
  backend: DiskPeerBackend;
  /** Where it listens. */
  address: AddressInfo;
}

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

export class StorageNode implements ExportProvider {
  private readonly volumes = new Map<string, Volume>();
  private readonly records = new Map<string, VersionedRecord>();
  /**
   * Cluster mode: the write locks this node holds, by volume. A volume whose
   * lock another node holds is served read-only (readOnlyBecause says why).
   */
  private readonly locks = new Map<string, VolumeLock>();
  private readonly readOnlyBecause = new Map<string, string>();
  /** Cluster mode: the versions this node serves read-only, pinned so GC keeps them (read-pins.ts). */
  private readonly readPins = new Map<string, ReadPin>();
  /** Volumes present in metadata that could not be loaded, and why. */
  private readonly unavailable = new Map<string, string>();
  private closing = false;
  /** Cluster mode: the tail of each volume's queue of opens and unloads (exclusive()). */
  private readonly serial = new Map<string, Promise<void>>();
  /** Cluster mode: volumes whose last session closed, waiting lockLingerMs before letting go. */
  private readonly lingering = new Map<string, NodeJS.Timeout>();
  private peers: PeerService | undefined;
  private stopFollowing: (() => void) | undefined;
  /** Cluster mode: re-copies blocks of the volumes this node writes when placement changes. */
  private repair: ReplicaRepair | undefined;
  /** Cluster mode, storage nodes: moves this store's blocks where the ring wants them, drops surplus and garbage. */
  private rebalancer: Rebalancer | undefined;
  /** Re-reads the local store against its checksums in the background (set by open()). */
  private scrubber: Scrubber | undefined;
  /** Set by the cluster wiring so status() (admin API, /healthz) includes membership. */
  clusterStatus: (() => Record<string, unknown>) | undefined;

  private constructor(
    readonly dataDir: string,
    readonly settings: ClusterSettings,
    private readonly meta: MetadataStore,
    readonly catalog: VolumeCatalog,
    readonly store: LocalSlotStore,
    readonly cache: BlockCache,
    private readonly pool: DataPool,
    private readonly keys: KeyRing,
    private readonly metrics: NodeMetrics | undefined,
    private readonly log: Logger,
    private readonly ownsMeta: boolean,
    /** Cluster mode: placement and peer copies; undefined on a single node. */
    readonly cluster: ClusterBlocks | undefined,
    private readonly lockLingerMs: number,
    private readonly rebalance: { rate?: number; intervalMs?: number },
  ) {}

  static async open(options: StorageNodeOptions): Promise<StorageNode> {
    const log = options.log ?? logger('node');
    const lockLingerMs = options.lockLingerMs ?? DEFAULT_LOCK_LINGER_MS;
    if (!Number.isSafeInteger(lockLingerMs) || lockLingerMs < 0) throw new UsageError(`lock linger must be a whole number of milliseconds ≥ 0, got ${lockLingerMs}`);
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
        log.warn({ requested: options.blockSize, inForce: settings.blockSize }, 'block size is fixed when the cluster is initialised; ignoring --block-size');
      }
      const storeDir = join(options.dataDir, 'blocks');
      if (!(await LocalSlotStore.exists(storeDir))) {
        if (!options.capacityBytes) throw new UsageError(`no local store in ${storeDir} yet: give its capacity with --size (e.g. --size 20GiB)`);
        log.info({ dir: storeDir, capacity: formatSize(options.capacityBytes), blockSize: settings.blockSize }, 'creating local block store');
        await LocalSlotStore.create(storeDir, { blockSize: settings.blockSize, capacityBytes: options.capacityBytes });
      }
      const store = await LocalSlotStore.open(storeDir);
      const capacity = store.slotCount * store.blockSize;
      if (options.capacityBytes && Math.floor(options.capacityBytes / store.blockSize) !== store.slotCount) {
        log.warn({ requested: formatSize(options.capacityBytes), actual: formatSize(capacity) }, 'the local store keeps the capacity it was created with; --size ignored');
      }
      const cache = new BlockCache(settings.blockSize, options.cacheBytes ?? DEFAULT_CACHE_BYTES);
      const pool = new DataPool(
        { cache: cache.buffer, blockSize: settings.blockSize, records: store.records, dataPath: store.dataPath, slotsPath: store.slotsPath },
        options.workers,
        options.cluster ? 4 : 1,
      );
      const keys = new KeyRing(options.keyFile ?? join(options.dataDir, 'master.key'));
      const cluster = options.cluster ? await clusterBlocks(meta, options.cluster, log) : undefined;
      const node = new StorageNode(options.dataDir, settings, meta, catalog, store, cache, pool, keys, options.metrics, log, !options.meta, cluster, lockLingerMs, {
        rate: options.rebalanceRate,
        intervalMs: options.rebalanceIntervalMs,
      });
      await node.loadVolumes();
      // Every stored copy re-read against its checksum in the background; in
      // a cluster a bad one is rewritten from a replica.
      node.scrubber = new Scrubber({
        store,
        rateBytesPerSecond: options.scrubRate ?? DEFAULT_SCRUB_RATE,
        intervalMs: options.scrubIntervalMs ?? DEFAULT_SCRUB_INTERVAL_MS,
        fetchGood: cluster ? (ref, hashLo, hashHi, dest) => cluster.getBlock(ref, hashLo, hashHi, dest) : undefined,
        log: log.child({ component: 'scrub' }),
      });
      node.scrubber.start();
      node.registerGauges();
      log.info(
        { dataDir: options.dataDir, capacity: formatSize(capacity), used: formatSize(store.usedSlots * store.blockSize), volumes: node.volumes.size, cache: formatSize(cache.slotCount * cache.blockSize), workers: pool.threads },
        'storage node ready',
      );
      return node;
    } catch (err) {
      if (!options.meta) await meta.close();
      throw err;
    }
  }

  private services(): VolumeServices {
    return {
      store: this.store,
      cache: this.cache,
      pool: this.pool,
      log: this.log,
      placement: this.cluster,
      commit: async (identity, generation, root) => {
        const current = this.records.get(identity.name);
        if (!current) throw new NotFoundError(`volume "${identity.name}" was deleted`);
        // In a cluster the commit is fenced by this node's write lock: a node
        // that lost it (partitioned, lease lapsed) has its commit refused whole.
        const lock = this.locks.get(identity.name);
        try {
          this.records.set(identity.name, await this.catalog.commitVersion(current, generation, root ?? null, lock));
        } catch (err) {
          const landed = lock ? await this.commitLanded(identity.name, current, generation, root ?? null, lock) : undefined;
          if (!landed) throw err;
          this.log.warn({ volume: identity.name, generation, err: (err as Error).message }, 'the commit\'s reply was lost but the commit landed: carrying on from it');
          this.records.set(identity.name, landed);
        }
      },
      onChecksumError: (volume) => this.metrics?.checksumErrors.inc({ volume }),
      onFlush: (_volume, blocks, seconds) => {
        this.metrics?.flushSeconds.observe(seconds);
        this.metrics?.flushedBlocks.inc(blocks);
      },
    };
  }

  private async openVolume(versioned: VersionedRecord): Promise<Volume> {
    const { record } = versioned;
    this.cluster?.placement.setVolumeReplication(record.id, record.replication);
    const key = record.encrypted ? await this.keys.unwrap(record) : null;
    return Volume.open(
      { id: record.id, name: record.name, size: record.size, blockSize: record.blockSize, encrypted: record.encrypted },
      record.generation,
      record.root ?? undefined,
      key,
      this.services(),
    );
  }

  private async loadVolumes(): Promise<void> {
    if (this.cluster) {
      // Opened on demand (clusterVolume). This store also holds copies for
      // volumes other nodes write, including versions not committed yet:
      // freeing by one node's view of committed maps could destroy them, so
      // there is no start-up sweep; cluster GC (replication/) does it safely.
      this.log.info('cluster mode: volumes open when an NBD client asks for one; no start-up sweep');
      return;
    }
    for (const record of await this.catalog.list()) {
      try {
        const versioned = await this.catalog.get(record.name);
        this.records.set(record.name, versioned);
        this.volumes.set(record.name, await this.openVolume(versioned));
      } catch (err) {
        this.unavailable.set(record.name, (err as Error).message);
        this.log.error({ volume: record.name, err: (err as Error).message }, 'volume could not be loaded; it will not be served');
      }
    }
    if (this.unavailable.size > 0) {
      this.log.warn({ volumes: [...this.unavailable.keys()] }, 'skipping the sweep of unreferenced blocks while some volumes are unavailable');
      return;
    }
    this.sweep();
  }

  /**
   * Cluster mode: take the volume's write lock (its own 10 s lease, kept
   * alive), or, when another node holds it, remember to serve the volume
   * read-only and say who writes it.
   */
  private async lockForWriting(name: string): Promise<void> {
    const uuid = this.cluster!.placement.localUuid;
    try {
      const lock = await this.acquireLock(name, uuid);
      this.holdLock(name, lock);
      this.readOnlyBecause.delete(name);
    } catch (err) {
      if (!(err instanceof VolumeLockedError)) throw err;
      const why = writtenBy(err.lock);
      this.readOnlyBecause.set(name, why);
      this.log.info({ volume: name, holder: err.lock.holder.node }, `volume is ${why}: served read-only here`);
    }
  }

  /**
   * Cluster mode, a volume another node writes: pin its committed version so
   * cluster GC keeps that version's blocks while this node serves it (its
   * clients see one consistent version, not the writer's commits under
   * them), and return the record of the version pinned.
   */
  private async pinForReading(name: string): Promise<VersionedRecord> {
    await this.releaseReadPin(name);
    const { pin, versioned } = await pinCurrentVersion(this.meta, this.catalog, name, this.cluster!.placement.localUuid, {
      ttlSeconds: LOCK_TTL_SECONDS,
      log: this.log.child({ component: 'read-pin' }),
    });
    this.readPins.set(name, pin);
    this.log.info({ volume: name, generation: versioned.record.generation }, 'serving a pinned version read-only');
    return versioned;
  }

  private async releaseReadPin(name: string): Promise<void> {
    const pin = this.readPins.get(name);
    if (!pin) return;
    this.readPins.delete(name);
    await pin.release();
  }

  /**
   * Take the volume's write lock. A key this very process still holds in
   * etcd but has given up on (its keepalives failed while etcd was away, and
   * etcd, restarted, revived the lease) would refuse us until that lease
   * lapses again; being ours, it is removed and the lock taken afresh.
   */
  private async acquireLock(name: string, uuid: string): Promise<VolumeLock> {
    const options = { holder: localHolder(uuid), ttlSeconds: LOCK_TTL_SECONDS };
    try {
      return await acquireVolumeLock(this.meta, name, options);
    } catch (err) {
      const stale = err instanceof VolumeLockedError ? err.lock : undefined;
      if (!stale || stale.holder.node !== uuid || stale.holder.pid !== process.pid || stale.holder.hostname !== options.holder.hostname) throw err;
      const key = volumeLockKey(name);
      await this.meta.txn({ compare: [{ key, target: 'createRevision', op: '==', value: stale.revision }], success: [{ type: 'delete', key }] });
      this.log.warn({ volume: name, epoch: stale.epoch }, 'removed a write lock this process had given up on (etcd kept its lease)');
      return acquireVolumeLock(this.meta, name, options);
    }
  }

  /** Keep `lock` as the volume's write lock, and try to win it back if it is lost while the volume is open. */
  private holdLock(name: string, lock: VolumeLock): void {
    lock.once('lost', (err: Error) => {
      if (this.locks.get(name) !== lock) return; // released or deleted on purpose
      this.log.error({ volume: name, err: err.message }, 'lost the write lock: commits of this volume are refused (fenced) until it is won back');
      void this.recoverLock(name, lock);
    });
    this.locks.set(name, lock);
  }

  /**
   * The lock lapsed while the volume was open (etcd away longer than the
   * lock's lease, or this node cut off from it). Take it again once etcd
   * answers — but resume writing only if no one committed the volume
   * meanwhile: every new writer commits once on taking the lock
   * (reserveGeneration), so an unchanged record proves nobody else wrote,
   * and the blocks this node wrote for its open version are still its own.
   * Otherwise the volume stays fenced here until its clients reconnect.
   */
  private async recoverLock(name: string, lost: VolumeLock): Promise<void> {
    const uuid = this.cluster!.placement.localUuid;
    while (!this.closing) {
      await new Promise((resolve) => setTimeout(resolve, LOCK_RETRY_MS).unref());
      const done = await this.exclusive(name, async () => {
        if (this.locks.get(name) !== lost || !this.volumes.has(name)) return true; // closed or replaced meanwhile
        let lock: VolumeLock;
        try {
          lock = await this.acquireLock(name, uuid);
        } catch (err) {
          if (!(err instanceof VolumeLockedError)) return false; // etcd still away: try again
          this.log.error({ volume: name, holder: err.lock.holder.node }, 'another node took the write lock: this node stays fenced; its clients must reconnect');
          return true;
        }
        try {
          const current = await this.catalog.get(name);
          if (current.modRevision !== this.records.get(name)?.modRevision) {
            this.log.error({ volume: name }, 'the volume was committed by another writer while the lock was lost: this node stays fenced; its clients must reconnect');
            await lock.release();
            return true;
          }
        } catch (err) {
          await lock.release().catch(() => undefined);
          return false;
        }
        this.holdLock(name, lock);
        this.log.warn({ volume: name, epoch: lock.epoch }, 'write lock won back and nobody else wrote meanwhile: commits resume');
        return true;
      }).catch(() => false);
      if (done) return;
    }
  }

  /**
   * A new writer's first act: commit the volume's current version again, one
   * generation up. Block refs are (volume, generation, index), so a writer
   * that lost its lock but does not know it yet may still be storing blocks
   * under the generation after the last commit; writing from the one after
   * this reserved generation, the new writer's blocks can never be
   * overwritten by those (coreos/torus#230). The old writer's orphans are
   * garbage once this commit lands.
   */
  private async reserveGeneration(name: string, versioned: VersionedRecord, lock: VolumeLock): Promise<VersionedRecord> {
    const { record } = versioned;
    return this.catalog.commitVersion(versioned, record.generation + 1, record.root ?? null, lock);
  }

  /**
   * After a commit failed: did it land anyway? A txn whose reply was lost
   * (etcd died mid-call) may have been applied; not recognising our own
   * commit would leave every later one conflicting on a stale revision. It
   * landed if the record now holds exactly that generation and root and the
   * lock is still ours at the same epoch (a new writer's reserving commit can
   * look the same, but it takes the lock first).
   */
  private async commitLanded(name: string, before: VersionedRecord, generation: number, root: MapRoot | null, lock: VolumeLock): Promise<VersionedRecord | undefined> {
    try {
      const now = await this.catalog.get(name);
      const held = await readVolumeLock(this.meta, name);
      const same = now.record.generation === generation && sameMapRoot(now.record.root, root);
      if (same && now.modRevision > before.modRevision && held?.epoch === lock.epoch && held.holder.node === this.cluster?.placement.localUuid) return now;
    } catch {
      // Still unreachable: the caller reports the original failure.
    }
    return undefined;
  }

  /**
   * Run fn after every earlier call for the same volume settled, so opens and
   * unloads of one volume never interleave (two clients connecting at once
   * take the lock once and share one Volume).
   */
  private exclusive<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const before = this.serial.get(name) ?? Promise.resolve();
    const run = before.then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.serial.set(name, tail);
    void tail.then(() => {
      if (this.serial.get(name) === tail) this.serial.delete(name);
    });
    return run;
  }

  /**
   * Cluster mode: the volume for a new NBD session. Joins the one already
   * open here if it has sessions or is a lingering writer; otherwise reads
   * the newest committed version from the catalog, tries the write lock, and
   * opens it — writable with the lock, read-only (naming the writer) without.
   * Undefined when there is no such volume.
   */
  private clusterVolume(name: string): Promise<Volume | undefined> {
    return this.exclusive(name, async () => {
      if (this.closing) return undefined;
      const timer = this.lingering.get(name);
      if (timer) clearTimeout(timer);
      this.lingering.delete(name);
      const loaded = this.volumes.get(name);
      if (loaded) {
        if (loaded.openSessions > 0 || this.locks.get(name)?.state === 'held') return loaded;
        // An idle reader may be stale (the writer committed since) and the lock
        // may be free by now; a writer whose lock was lost is fenced: reopen.
        await this.unloadVolume(name);
      }
      let versioned: VersionedRecord;
      try {
        versioned = await this.catalog.get(name);
      } catch (err) {
        if (err instanceof NotFoundError) return undefined;
        throw err;
      }
      await this.lockForWriting(name);
      try {
        // The last writer may have committed between our read and our lock.
        const lock = this.locks.get(name);
        if (lock) versioned = await this.reserveGeneration(name, await this.catalog.get(name), lock);
        else versioned = await this.pinForReading(name);
        this.records.set(name, versioned);
        const volume = await this.openVolume(versioned);
        this.volumes.set(name, volume);
        this.unavailable.delete(name);
        return volume;
      } catch (err) {
        this.records.delete(name);
        this.readOnlyBecause.delete(name);
        const lock = this.locks.get(name);
        this.locks.delete(name);
        await lock?.release().catch(() => undefined);
        await this.releaseReadPin(name);
        this.unavailable.set(name, (err as Error).message);
        throw err;
      }
    });
  }

  /**
   * Cluster mode: a session of `volume` ended. When it was the last, commit
   * what the sessions wrote now, and let go of the volume (and its lock)
   * after lockLingerMs unless a new session arrives first.
   */
  private sessionEnded(name: string, volume: Volume): void {
    if (!this.cluster || this.closing || volume.openSessions > 0 || this.volumes.get(name) !== volume) return;
    if (this.locks.has(name)) {
      volume.flush().catch((err) => this.log.warn({ volume: name, err: (err as Error).message }, 'commit after the last session closed failed'));
    }
    const timer = setTimeout(() => {
      if (this.lingering.get(name) !== timer) return;
      this.lingering.delete(name);
      this.exclusive(name, async () => {
        if (this.volumes.get(name) === volume && volume.openSessions === 0) await this.unloadVolume(name);
      }).catch((err) => this.log.error({ volume: name, err: (err as Error).message }, 'could not close an idle volume'));
    }, this.lockLingerMs);
    timer.unref();
    this.lingering.set(name, timer);
  }

  /**
   * Cluster mode: close an idle volume — commit what is dirty (fenced by the
   * lock), drop its cache, release the lock so another node may write it.
   */
  private async unloadVolume(name: string): Promise<void> {
    const volume = this.volumes.get(name);
    const lock = this.locks.get(name);
    try {
      await volume?.close();
    } catch (err) {
      this.log.error({ volume: name, err: (err as Error).message }, 'could not commit the volume before closing it: writes since its last FLUSH are lost');
    }
    this.volumes.delete(name);
    this.records.delete(name);
    this.readOnlyBecause.delete(name);
    await this.releaseReadPin(name);
    this.locks.delete(name); // before release: its 'lost' notice is not an error then
    if (lock) {
      await lock.release().catch((err) => this.log.warn({ volume: name, err: String(err) }, 'could not release a write lock; it lapses with its lease'));
      this.log.info({ volume: name }, 'volume idle: closed and its write lock released');
    }
  }

  /** Free every stored block no committed version references (crash leftovers, deleted volumes). */
  private sweep(): void {
    const referenced = new Set<string>();
    for (const volume of this.volumes.values()) {
      for (const ref of volume.referencedRefs()) referenced.add(refKey(ref.volumeId, ref.generation, ref.index));
    }
    let freed = 0;
    for (const [ref] of [...this.store.blocks()]) {
      if (!referenced.has(refKey(ref.volumeId, ref.generation, ref.index))) {
        this.store.release(ref);
        freed++;
      }
    }
    if (freed > 0) this.log.info({ blocks: freed }, 'freed blocks no committed version references');
  }

  private registerGauges(): void {
    const m = this.metrics;
    if (!m) return;
    m.gauge('torus_store_capacity_bytes', 'Local block store capacity', () => this.store.slotCount * this.store.blockSize);
    m.gauge('torus_store_used_bytes', 'Local block store bytes in use', () => this.store.usedSlots * this.store.blockSize);
    m.gauge('torus_cache_bytes', 'Block cache size', () => this.cache.slotCount * this.cache.blockSize);
    m.gauge('torus_cache_dirty_bytes', 'Block cache bytes written but not yet flushed', () => this.cache.dirtySlots * this.cache.blockSize);
    m.gauge('torus_cache_hits_total', 'Block cache hits', () => this.cache.hits);
    m.gauge('torus_cache_misses_total', 'Block cache misses', () => this.cache.misses);
    m.gauge('torus_volumes', 'Volumes served by this node', () => this.volumes.size);
    m.gauge('torus_scrub_checked_bytes_total', 'Bytes of the local store the scrub re-read against their checksums', () => this.scrubber?.stats.checkedBytes ?? 0);
    m.gauge('torus_scrub_bad_blocks_total', 'Stored copies the scrub found failing their checksum', () => this.scrubber?.stats.bad ?? 0);
    m.gauge('torus_scrub_repaired_blocks_total', 'Bad copies the scrub rewrote from a good replica', () => this.scrubber?.stats.repaired ?? 0);
    m.gauge('torus_scrub_passes_total', 'Scrub passes completed over the whole local store', () => this.scrubber?.stats.passes ?? 0);
    const stats = this.cluster?.stats;
    if (stats) {
      m.gauge('torus_replication_under_replicated_blocks_total', 'Blocks stored with fewer copies than the ring asks for', () => stats.underReplicatedBlocks);
      m.gauge('torus_replication_failed_peer_writes_total', 'Batches of copies a peer failed to store', () => stats.failedPeerWrites);
      m.gauge('torus_replication_remote_reads_total', 'Blocks read from a peer by the main thread (map pages)', () => stats.remoteReads);
      const pool = this.pool.replicationStats;
      m.gauge('torus_replication_hedged_reads_total', 'Replica reads that asked a second replica because the first was slow', () => pool.hedgedReads);
      m.gauge('torus_replication_replica_repairs_total', 'Bad replica copies rewritten from a good one', () => pool.replicaRepairs);
      m.gauge('torus_replication_placed_elsewhere_total', 'Copies placed on a spare node because a target was full', () => pool.placedElsewhere);
      m.gauge('torus_replication_full_refusals_total', 'Copies a full peer refused', () => pool.fullRefusals);
      m.gauge('torus_replication_received_bytes_per_second', 'Bytes/s of copies peers stored on this node', () => this.peers?.backend.received.rate() ?? 0);
      m.gauge('torus_rebalance_bytes_per_second', 'Bytes/s this node\'s rebalance copies to peers', () => this.rebalancer?.rate() ?? 0);
      m.gauge('torus_rebalance_copied_blocks_total', 'Blocks rebalance copied to the nodes the ring puts them on', () => this.rebalancer?.stats.copied ?? 0);
      m.gauge('torus_rebalance_dropped_blocks_total', 'Surplus local copies released once their targets held them', () => this.rebalancer?.stats.dropped ?? 0);
      m.gauge('torus_rebalance_failed_total', 'Copies rebalance could not check or make', () => this.rebalancer?.stats.failed ?? 0);
      m.gauge('torus_rebalance_pending_blocks', 'Blocks left to move after the last rebalance run', () => this.rebalancer?.stats.pendingBlocks ?? 0);
      m.gauge('torus_gc_freed_blocks_total', 'Local blocks freed as garbage (superseded or of deleted volumes)', () => this.rebalancer?.stats.garbageFreed ?? 0);
    }
  }

  // ------------------------------------------------------- ExportProvider

  async list(): Promise<ExportInfo[]> {
    if (!this.cluster) return [...this.volumes.values()].map((v) => ({ name: v.name, description: this.describeVolume(v) }));
    // Every volume of the cluster, open here or not.
    return (await this.catalog.list()).map((record) => {
      const volume = this.volumes.get(record.name);
      return { name: record.name, description: volume ? this.describeVolume(volume) : exportDescription(record.name, record.size, record.encrypted) };
    });
  }

  private describeVolume(volume: Volume): string {
    return exportDescription(volume.name, volume.size, volume.identity.encrypted, this.readOnlyBecause.get(volume.name));
  }

  async describe(name: string) {
    const volume = this.volumes.get(name);
    if (!volume) return this.cluster ? this.describeUnopened(name) : undefined;
    const probe = new VolumeExport(volume, this.describeVolume(volume), () => undefined, this.readOnlyBecause.has(name));
    await probe.close();
    return probe;
  }

  /** NBD_OPT_INFO on a volume not open here: its record, and whether another node holds its write lock. */
  private async describeUnopened(name: string) {
    let record: VolumeRecord;
    try {
      record = (await this.catalog.get(name)).record;
    } catch (err) {
      if (err instanceof NotFoundError) return undefined;
      throw err;
    }
    const lock = await readVolumeLock(this.meta, name);
    const readOnly = lock && lock.holder.node !== this.cluster!.placement.localUuid ? writtenBy(lock) : undefined;
    return {
      name,
      description: exportDescription(name, record.size, record.encrypted, readOnly),
      size: record.size,
      readOnly: readOnly !== undefined,
      minimumBlockSize: 1,
      preferredBlockSize: record.blockSize,
      maximumPayload: MAX_PAYLOAD,
      canMultiConn: true,
    };
  }

  async open(name: string): Promise<NbdExport | undefined> {
    if (this.closing) return undefined;
    const volume = this.cluster ? await this.clusterVolume(name) : this.volumes.get(name);
    if (!volume) return undefined;
    return new VolumeExport(volume, this.describeVolume(volume), () => this.sessionEnded(name, volume), this.readOnlyBecause.has(name));
  }

  // ----------------------------------------------------------- administration

  async createVolume(name: string, size: number, options: { encrypt?: boolean; replication?: number } = {}): Promise<VolumeStatus> {
    if (!Number.isSafeInteger(size) || size <= 0 || size % 4096 !== 0) {
      throw new UsageError(`volume size must be a positive multiple of 4 KiB, got ${size} bytes`);
    }
    checkReplication(options.replication, Boolean(this.cluster));
    const wrapped = options.encrypt ? await this.keys.newWrappedKey() : undefined;
    const record = await this.catalog.create({
      name,
      size,
      blockSize: this.settings.blockSize,
      encrypted: Boolean(options.encrypt),
      ...(options.replication !== undefined ? { replication: options.replication } : {}),
      ...wrapped,
    });
    if (!this.cluster) {
      const versioned = await this.catalog.get(name);
      this.records.set(name, versioned);
      this.volumes.set(name, await this.openVolume(versioned));
    }
    this.log.info({ volume: name, size: formatSize(size), encrypted: record.encrypted }, 'volume created');
    return this.volumeStatus(record);
  }

  async deleteVolume(name: string): Promise<void> {
    const volume = this.volumes.get(name);
    if (!volume && !this.unavailable.has(name) && !this.cluster) throw new NotFoundError(`no volume named "${name}"`);
    if (volume && volume.openSessions > 0) {
      throw new ConflictError(`volume "${name}" is in use by ${volume.openSessions} NBD connection(s); disconnect them first`);
    }
    // Another node's read-only clients would lose the data under them. This
    // node's own pin (an idle reader, lingering) goes first: it is no client.
    if (this.cluster) {
      await this.releaseReadPin(name);
      await assertNoReaders(this.meta, name);
    }
    const timer = this.lingering.get(name);
    if (timer) clearTimeout(timer);
    this.lingering.delete(name);
    const lock = this.locks.get(name);
    // Fenced by our lock if we hold it; refused naming the holder if another
    // node does. The lock key goes with the record; out of `locks` first so
    // its 'lost' notice is not logged as an error.
    this.locks.delete(name);
    let record;
    try {
      record = await this.catalog.remove(name, lock ? { fence: lock } : undefined);
    } catch (err) {
      if (lock) this.locks.set(name, lock);
      throw err;
    }
    await lock?.release().catch(() => undefined); // ends its lease
    await this.releaseReadPin(name);
    this.readOnlyBecause.delete(name);
    this.volumes.delete(name);
    this.records.delete(name);
    this.unavailable.delete(name);
    if (volume) await volume.close().catch(() => undefined); // its data is going anyway
    let freed = 0;
    for (const [ref] of [...this.store.blocks()]) {
      if (ref.volumeId === record.id) {
        this.store.release(ref);
        freed++;
      }
    }
    this.log.info({ volume: name, blocks: freed }, 'volume deleted');
  }

  private volumeStatus(record: VolumeRecord): VolumeStatus {
    const volume = this.volumes.get(record.name);
    let used = 0;
    for (const [ref] of this.store.blocks()) if (ref.volumeId === record.id) used++;
    return {
      name: record.name,
      id: record.id,
      size: record.size,
      used: used * this.store.blockSize,
      encrypted: record.encrypted,
      ...(record.replication !== undefined ? { replication: record.replication } : {}),
      generation: volume?.committedGeneration ?? record.generation,
      sessions: volume?.openSessions ?? 0,
      createdAt: record.createdAt,
    };
  }

  async listVolumes(): Promise<VolumeStatus[]> {
    return (await this.catalog.list()).map((record) => this.volumeStatus(record));
  }

  status() {
    return {
      dataDir: this.dataDir,
      blockSize: this.settings.blockSize,
      capacity: this.store.slotCount * this.store.blockSize,
      used: this.store.usedSlots * this.store.blockSize,
      cache: { size: this.cache.slotCount * this.cache.blockSize, dirty: this.cache.dirtySlots * this.cache.blockSize, hits: this.cache.hits, misses: this.cache.misses },
      volumes: this.volumes.size,
      unavailable: Object.fromEntries(this.unavailable),
      ...(this.scrubber ? { scrub: this.scrubber.stats } : {}),
      ...(this.clusterStatus ? { cluster: this.clusterStatus() } : {}),
      ...(this.cluster ? { replication: { ...this.cluster.stats, workers: this.pool.replicationStats, repair: this.repair?.stats, rebalance: this.rebalancer?.stats } } : {}),
    };
  }

  async flushVolume(name: string): Promise<void> {
    const volume = this.volumes.get(name);
    if (!volume) throw new NotFoundError(`no volume named "${name}"`);
    await volume.flush();
  }

  /** Flush every volume (best effort, each on its own). */
  async flushAll(): Promise<void> {
    await Promise.all(
      [...this.volumes.values()].map((v) =>
        v.flush().catch((err) => this.log.error({ volume: v.name, err: (err as Error).message }, 'flush at shutdown failed')),
      ),
    );
  }

  // ------------------------------------------------------------- peers

  /**
   * Serve this node's local store to the cluster's other nodes over TBP
   * (cluster mode): a PeerServer on host:port over a DiskPeerBackend. Rejects
   * with the listen error (EADDRINUSE, …), leaving nothing running.
   */
  async servePeers(options: PeerServiceOptions): Promise<PeerService> {
    if (this.closing) throw new Error('storage node is closing');
    if (this.peers) throw new Error(`already serving peers on port ${this.peers.address.port}`);
    const log = options.log ?? this.log.child({ component: 'peer' });
    const backend = new DiskPeerBackend(this.store, options.nodeId, log, await hasher());
    const server = new PeerServer(backend, { clusterId: options.clusterId, nodeId: options.nodeId, log });
    let address: AddressInfo;
    try {
      address = await server.listen(options.host, options.port);
    } catch (err) {
      await server.close({ drainMs: 0 });
      await backend.close();
      throw err;
    }
    this.peers = { server, backend, address };
    return this.peers;
  }

  /** The running peer service (servePeers), if any: the PeerServer, its DiskPeerBackend and address. */
  get peerService(): PeerService | undefined {
    return this.peers;
  }

  /**
   * Stop serving peers: the server drains (new requests get SHUTTING_DOWN)
   * for up to drainMs, then the backend waits for what still runs on the
   * store. Before the store closes; close() does it too.
   */
  async stopServingPeers(drainMs = 3000): Promise<void> {
    const peers = this.peers;
    if (!peers) return;
    this.peers = undefined;
    await peers.server.close({ drainMs });
    await peers.backend.close();
  }

  /**
   * Cluster mode: keep placement current with the watched ring and live
   * nodes (a node that leaves or joins changes where new copies go).
   */
  followMembership(table: PeerTable): void {
    const cluster = this.cluster;
    if (!cluster) return;
    const repair = new ReplicaRepair(cluster, this.peers?.backend, () => this.refsToKeepReplicated(), this.log.child({ component: 'repair' }));
    this.repair = repair;
    // A storage node (one serving its store to peers) moves its own blocks to
    // where the ring puts them and frees its garbage; a store-less client has none.
    const backend = this.peers?.backend;
    // GC's view of the catalog: each volume's committed map, kept between runs and reloaded by changed pages.
    const views = new CatalogGcViews({ store: this.store, cluster }, this.log.child({ component: 'gc' }));
    const rebalancer = backend
      ? new Rebalancer({
          placement: cluster.placement,
          peerStore: (peer) => cluster.clientFor(peer),
          local: backend,
          gcView: async () => {
            const records = await this.catalog.list();
            // Pins after the catalog: the order read-pins.ts's protocol relies on.
            const pins = await listReadPins(this.meta);
            // Every volume's own replication, before a run decides what is surplus.
            for (const record of records) cluster.placement.setVolumeReplication(record.id, record.replication);
            return views.view(records, pins);
          },
          log: this.log.child({ component: 'rebalance' }),
          rateBytesPerSecond: this.rebalance.rate,
          intervalMs: this.rebalance.intervalMs,
        })
      : undefined;
    this.rebalancer = rebalancer;
    let ringVersion = table.ring()?.version;
    let live = liveSet(table);
    const update = () => {
      cluster.placement.update(table.ring(), table.peers());
      // Targets move when the ring or the set of live nodes does: check copies then.
      const version = table.ring()?.version;
      const now = liveSet(table);
      if (version !== ringVersion || now !== live) {
        repair.schedule();
        rebalancer?.schedule();
      }
      ringVersion = version;
      live = now;
    };
    update();
    repair.schedule(); // copies missed while this node was down or starting
    rebalancer?.start();
    table.on('change', update);
    this.stopFollowing = () => table.off('change', update);
  }

  /** Every ref of the committed versions of the volumes this node writes (holds the lock of). */
  private *refsToKeepReplicated(): IterableIterator<BlockRef> {
    for (const [name, volume] of this.volumes) {
      if (this.locks.has(name)) yield* volume.referencedRefs();
    }
  }

  get repairStatus() {
    return this.repair?.stats;
  }

  get rebalanceStatus() {
    return this.rebalancer?.stats;
  }

  /**
   * What this node reports with its registration (list-peers REB/REP DATA):
   * bytes/s its rebalance copies out, bytes/s of copies peers store here.
   */
  clusterRates(): NodeRates {
    const stats = this.rebalancer?.stats;
    return {
      rebalancing: this.rebalancer?.rebalancing ?? false,
      rebalanceRate: this.rebalancer?.rate() ?? 0,
      replicationRate: this.peers?.backend.received.rate() ?? 0,
      ...(stats && !stats.running ? { rebalancePending: stats.pendingBlocks * this.store.blockSize } : {}),
    };
  }

  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    for (const timer of this.lingering.values()) clearTimeout(timer);
    this.lingering.clear();
    // Background copying ends before the peer service it uses for this store does.
    await this.scrubber?.close();
    this.stopFollowing?.();
    await this.rebalancer?.close();
    await this.repair?.close();
    await this.stopServingPeers();
    await this.flushAll();
    for (const volume of this.volumes.values()) await volume.close().catch(() => undefined);
    // After the last commit: release, so another node may take over at once.
    for (const lock of this.locks.values()) await lock.release().catch((err) => this.log.warn({ volume: lock.volume, err: String(err) }, 'could not release a write lock; it lapses with its lease'));
    this.locks.clear();
    for (const name of [...this.readPins.keys()]) await this.releaseReadPin(name);
    await this.cluster?.close();
    await this.pool.close();
    await this.store.close();
    if (this.ownsMeta) await this.meta.close();
  }
}

/** An export's NBD description: "torus volume NAME (SIZE[, encrypted][; read-only: WHY])". */
function exportDescription(name: string, size: number, encrypted: boolean, readOnly?: string): string {
  return `torus volume ${name} (${formatSize(size)}${encrypted ? ', encrypted' : ''}${readOnly ? `; read-only: ${readOnly}` : ''})`;
}

/** Why a node serves a volume read-only: "written by node … (host …) (lock epoch N)". */
function writtenBy(lock: { holder: LockHolder; epoch: number }): string {
  return `written by ${describeHolder(lock.holder)} (lock epoch ${lock.epoch})`;
}

/** A volume's own replication factor: a cluster's, 1 to MAX_TARGETS. */
export function checkReplication(replication: number | undefined, cluster: boolean): void {
  if (replication === undefined) return;
  if (!cluster) throw new UsageError('--replication needs a cluster (-C/--etcd): a single node keeps one copy');
  if (!Number.isSafeInteger(replication) || replication < 1 || replication > MAX_TARGETS) {
    throw new UsageError(`replication must be a whole number from 1 to ${MAX_TARGETS}, got ${replication}`);
  }
}

/**
 * The live nodes as one comparable string — by process, not just uuid: a
 * node killed and restarted before its lease lapsed never shows as down, yet
 * the copies it missed meanwhile must still be made.
 */
function liveSet(table: PeerTable): string {
  return table
    .peers()
    .map((p) => `${p.uuid}/${p.instance}`)
    .sort()
    .join(',');
}

/** Placement seeded from the ring and registrations as they are now; followMembership() keeps it current. */
async function clusterBlocks(meta: MetadataStore, self: { uuid: string; clusterId: string; holdsCopies?: boolean }, log: Logger): Promise<ClusterBlocks> {
  const snapshot = await readMembership(meta, log);
  const placement = new ClusterPlacement(self.uuid, { clusterId: self.clusterId, nodeId: self.uuid }, self.holdsCopies ?? true);
  placement.update(snapshot.ring?.description, [...snapshot.peers.values()].map((p) => p.info));
  return new ClusterBlocks(placement, await hasher(), log.child({ component: 'replication' }));
}

/**
 * A directory that joined a cluster keeps its volumes' records in that
 * cluster's etcd: opened on the single-node store, the start-up sweep would
 * find none of them and free every block.
 */
async function refuseClusterDataDir(dataDir: string): Promise<void> {
  const binding = await readClusterBinding(dataDir);
  if (binding) {
    throw new ConflictError(`data directory ${dataDir} belongs to a cluster (joined through etcd ${binding.etcd}): give --etcd ${binding.etcd}, or use another --data-dir for a single node`);
  }
}
