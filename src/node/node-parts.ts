/**
 * The parts of a storage node, opened in the order safety needs: the
 * metadata store first (the embedded one holds the data directory's lock,
 * so nothing else can open the same store), refusing a directory that
 * belongs to a cluster; then the settings, the local block store, the
 * shared cache, the worker pool, the key ring and, for a cluster member,
 * its placement and peer copies. StorageNode assembles what these parts
 * serve; closeNodeParts() closes them in the reverse order.
 */
import { join } from 'node:path';
import { ensureDirectory } from '../common/dirs.js';
import { ConflictError, UsageError } from '../common/errors.js';
import { formatSize } from '../common/size.js';
import { logger, type Logger } from '../common/log.js';
import { openEmbeddedMetadataStore } from '../controlplane/metadata/embedded/index.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import { readClusterBinding } from '../controlplane/membership/node-identity.js';
import { VolumeCatalog, type ClusterSettings } from '../controlplane/volumes/catalog.js';
import { SnapshotCatalog } from '../controlplane/volumes/snapshots.js';
import type { LocalSlotStore } from '../dataplane/blocks/slot-store.js';
import { BlockCache } from '../dataplane/cache/block-cache.js';
import { KeyRing } from '../dataplane/crypto/key-ring.js';
import { DataPool, defaultWorkerThreads } from '../dataplane/pool/data-pool.js';
import { directWritesPossible } from '../dataplane/pool/file-io.js';
import {
  directWritesWanted,
  readMemoryFacts,
  type DirectWriteMode,
} from '../common/memory-budget.js';
import type { ClusterBlocks } from '../dataplane/replication/cluster-blocks.js';
import {
  DEFAULT_INTENT_LOG_BYTES,
  defaultIntentLogBytes,
  INTENT_LOG_FILE,
  IntentLog,
  MIN_INTENT_LOG_BYTES,
} from '../dataplane/intent-log/intent-log.js';
import { HolderLog, MIN_HOLDER_LOG_BYTES } from '../dataplane/intent-log/holder-log.js';
import { hasher, type Hasher } from '../dataplane/blocks/hash.js';
import { openClusterBlocks, type ClusterIdentity } from './cluster-blocks.js';
import { openLocalStore } from './local-storage.js';
import type { NodeMetrics } from './metrics.js';

/**
 * 64 KiB: see docs/architecture.md "Block size". Small enough that a 4 KiB
 * random write costs at most one 64 KiB block write at the next flush (the
 * original's 512 KiB made that 128×), large enough that a 1 MiB sequential
 * write is 16 blocks, each hashed and stored in one batch.
 */
export { DEFAULT_BLOCK_SIZE } from '../common/block-size.js';
import { DEFAULT_BLOCK_SIZE } from '../common/block-size.js';
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
  /**
   * Cluster mode: how long a volume whose writer is gone (no node holds its
   * lock) may keep FLUSHed records in this node's holder log before this
   * node takes it over and commits them (default 5 min; seen at GC runs).
   */
  orphanAdoptAfterMs?: number;
  /**
   * Single node: size of the intent log FLUSH writes to (<data-dir>/intent.log,
   * default 64 MiB); 0: none, a FLUSH commits a whole version. A cluster
   * member: size of its holder log (<data-dir>/intent-holder.log; 0: none,
   * and its writers commit every FLUSH).
   */
  intentLogBytes?: number;
  /**
   * Cluster: a FLUSH of a volume written here is made durable on the
   * replicated intent log (R holder logs, docs/cluster-flush.md) instead of
   * by a commit. Default on. Off, this node still holds its peers' records
   * and replays a volume's records when it takes the volume over: nodes
   * with it off and on mix safely.
   */
  replicatedFlush?: boolean;
  /** Block writes around the page cache (O_DIRECT): memory-budget.ts directWritesWanted (default auto). */
  directWrites?: DirectWriteMode;
  /** Bytes/s a scrub pass reads from the local store (default 16 MiB/s). */
  scrubRate?: number;
  /** A scrub pass every this many ms, the first this long after start (default 24 h; 0 none). */
  scrubIntervalMs?: number;
  /** A volume's patches are rewritten whole after this many ms without a request (patch-folds.ts; default 5 s; 0 never). */
  foldQuietMs?: number;
}

export const DEFAULT_LOCK_LINGER_MS = 5000;
/**
 * A volume's writer gone this long with its records still on this holder:
 * long enough that a client moving to another node (a pod rescheduled)
 * reopens it first, which replays the records anyway.
 */
export const DEFAULT_ORPHAN_ADOPT_AFTER_MS = 5 * 60_000;

/** Whether the pool writes blocks around the page cache (see directWritesWanted), logged with why. */
function decideDirectWrites(
  mode: DirectWriteMode,
  cache: BlockCache,
  dataPath: string,
  log: Logger,
): boolean {
  const wanted = directWritesWanted(mode, readMemoryFacts());
  let on = wanted.on;
  let why = wanted.reason;
  if (on && !cache.pageAligned) [on, why] = [false, 'the cache is past 4 GiB (not page aligned)'];
  else if (on && !directWritesPossible(dataPath))
    [on, why] = [false, 'the store’s file system refuses O_DIRECT'];
  log.info(
    { directWrites: on, reason: why },
    on
      ? 'blocks are written and read around the page cache'
      : 'blocks are written and read through the page cache',
  );
  return on;
}

/** The node's parts, as openNodeParts() assembles them. */
export interface NodeParts {
  dataDir: string;
  settings: ClusterSettings;
  meta: MetadataStore;
  /** Whether close() closes meta (the embedded store; a caller's etcd stays open). */
  ownsMeta: boolean;
  catalog: VolumeCatalog;
  snapshots: SnapshotCatalog;
  store: LocalSlotStore;
  cache: BlockCache;
  pool: DataPool;
  keys: KeyRing;
  cluster: ClusterBlocks | undefined;
  /** Single node: the intent log (replayed by the hosting at start); undefined in a cluster or when turned off. */
  intentLog: IntentLog | undefined;
  /** Cluster: this node's holder log (its own writers' records and its peers'); undefined with no intent log. */
  holderLog: HolderLog | undefined;
  /** Cluster: whether this node's writers log their FLUSHes (StorageNodeOptions.replicatedFlush, default on). */
  replicatedFlush: boolean;
  /** xxh64 on this thread (intent records' checksums). */
  hasher: Hasher;
  metrics: NodeMetrics | undefined;
  log: Logger;
}

/** Open every part; on failure, what was opened of the metadata store is closed again. */
export async function openNodeParts(options: StorageNodeOptions): Promise<NodeParts> {
  const log = options.log ?? logger('node');
  await ensureDirectory(options.dataDir, 'data directory');
  const meta = options.meta ?? (await openEmbeddedMetadataStore(join(options.dataDir, 'meta')));
  // What is open so far: closed, last first, when a later step fails (a bad
  // option, etcd unreachable), so a refused open leaves no file or worker behind.
  const opened: { close(): Promise<void> }[] = [];
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
    opened.push(store);
    const cache = new BlockCache(settings.blockSize, options.cacheBytes ?? DEFAULT_CACHE_BYTES);
    const pool = new DataPool(
      {
        cache: cache.buffer,
        blockSize: settings.blockSize,
        records: store.records,
        dataPath: store.dataPath,
        slotsPath: store.slotsPath,
        directWrites: decideDirectWrites(
          options.directWrites ?? 'auto',
          cache,
          store.dataPath,
          log,
        ),
      },
      options.workers ?? defaultWorkerThreads(options.cluster ? 'cluster' : 'single-node'),
      // A cluster's tasks wait on peers, so a worker runs several at once. A
      // single node's never yield, so a second one only waits in the worker,
      // posted already: a worker that finishes starts it at once instead of
      // waiting for the event loop to hand it the next (1 MiB sequential
      // reads 1,444 -> 1,553 MiB/s, medians of 4; docs/benchmarks.md, session 35).
      options.cluster ? 4 : 2,
    );
    opened.push(pool);
    const keys = new KeyRing(options.keyFile ?? join(options.dataDir, 'master.key'), (path) =>
      log.warn(
        { keyFile: path },
        'the master key file is readable or writable by group or others: anyone who can read it can open every encrypted volume (chmod 600 it)',
      ),
    );
    const cluster = options.cluster
      ? await openClusterBlocks(meta, options.cluster, log)
      : undefined;
    if (cluster) opened.push(cluster);
    const logBytes =
      options.intentLogBytes ??
      (options.cluster
        ? DEFAULT_INTENT_LOG_BYTES
        : defaultIntentLogBytes(store.slotCount * store.blockSize));
    if (logBytes !== 0 && !(logBytes >= MIN_INTENT_LOG_BYTES))
      throw new UsageError(
        `intent log size must be 0 (none) or at least ${formatSize(MIN_INTENT_LOG_BYTES)}, got ${logBytes} bytes`,
      );
    const intentLog =
      cluster || logBytes === 0
        ? undefined
        : await IntentLog.open(join(options.dataDir, INTENT_LOG_FILE), logBytes, log);
    if (intentLog) opened.push(intentLog);
    // A store-less node (torusblk nbdserve, the library's cluster client) is no
    // ring member: no peer can reach a log of its, and its scratch dir goes
    // with it. It holds nothing and its writers commit every FLUSH.
    const storeless = options.cluster?.holdsCopies === false;
    const holderLog =
      cluster && !storeless && logBytes !== 0
        ? await HolderLog.open(options.dataDir, Math.max(logBytes, MIN_HOLDER_LOG_BYTES), log)
        : undefined;
    if (holderLog) opened.push(holderLog);
    return {
      dataDir: options.dataDir,
      settings,
      meta,
      ownsMeta: !options.meta,
      catalog,
      snapshots: new SnapshotCatalog(meta, catalog),
      store,
      cache,
      pool,
      keys,
      cluster,
      intentLog,
      holderLog,
      replicatedFlush: !storeless && (options.replicatedFlush ?? true),
      hasher: await hasher(),
      metrics: options.metrics,
      log,
    };
  } catch (err) {
    for (const part of opened.reverse()) await part.close().catch(() => undefined);
    if (!options.meta) await meta.close();
    throw err;
  }
}

/** Close what openNodeParts() opened, last first; a caller's metadata store stays open. */
export async function closeNodeParts(parts: NodeParts): Promise<void> {
  await parts.cluster?.close();
  await parts.pool.close();
  await parts.intentLog?.close();
  await parts.holderLog?.close();
  await parts.store.close();
  if (parts.ownsMeta) await parts.meta.close();
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
