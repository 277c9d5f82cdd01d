/**
 * The node's background services and their wiring, in one place: the scrub
 * of the local store (every node), and on a cluster the rebalance of its
 * store to where the ring puts blocks (which is also how lost copies are
 * made again), and GC (through the rebalancer, over the catalog's and
 * the read pins' view of what is still referenced).
 */
import type { Logger } from '../common/log.js';
import type { NodeRates } from '../controlplane/membership/registration.js';
import type { PeerTable } from '../controlplane/membership/peer-table.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import type { VolumeCatalog, VolumeRecord } from '../controlplane/volumes/catalog.js';
import { listReadPins } from '../controlplane/volumes/read-pins.js';
import { listSnapshotPins } from '../controlplane/volumes/snapshot-pins.js';
import {
  encodeSnapshotSpace,
  snapshotSpaceKey,
} from '../controlplane/volumes/snapshot-space-records.js';
import type { SnapshotCatalog } from '../controlplane/volumes/snapshots.js';
import { Scrubber } from '../dataplane/blocks/scrub.js';
import type { LocalSlotStore } from '../dataplane/blocks/slot-store.js';
import type { ClusterBlocks } from '../dataplane/replication/cluster-blocks.js';
import { CatalogGcViews } from '../dataplane/replication/gc-catalog.js';
import type { HolderLog } from '../dataplane/intent-log/holder-log.js';
import { Rebalancer } from '../dataplane/replication/rebalance.js';
import type { NodeMetrics } from './metrics.js';
import type { PeerServing } from './peer-service.js';

export const DEFAULT_SCRUB_RATE = 16 * 2 ** 20;
export const DEFAULT_SCRUB_INTERVAL_MS = 24 * 3600 * 1000;

/** How often a node recounts what its snapshots alone hold (a pass over their maps). */
const SNAPSHOT_SPACE_EVERY_MS = 10_000;

export interface BackgroundServiceParts {
  store: LocalSlotStore;
  meta: MetadataStore;
  catalog: VolumeCatalog;
  snapshots: SnapshotCatalog;
  /** Placement and peer copies; undefined on a single node (scrub only). */
  cluster: ClusterBlocks | undefined;
  peers: PeerServing;
  /** This node's intent holder log (a cluster member's); its deleted volumes' records are dropped after each GC listing. */
  holderLog?: HolderLog;
  /**
   * Called after each GC listing with the volumes the holder log keeps
   * records of that still exist: those whose writer is gone are taken over
   * and committed (OnDemandHosting.adoptOrphans). Not awaited.
   */
  adoptOrphans?: (names: readonly string[]) => Promise<void>;
  log: Logger;
  /** Bytes/s a scrub pass reads (default DEFAULT_SCRUB_RATE); ms between passes (default DEFAULT_SCRUB_INTERVAL_MS; 0 none). */
  scrub: { rate?: number; intervalMs?: number };
  /** Bytes/s the rebalance may copy to peers; a rebalance and GC run every intervalMs besides those on ring changes. */
  rebalance: { rate?: number; intervalMs?: number };
}

export class BackgroundServices {
  /** Re-reads the local store against its checksums. */
  private readonly scrubber: Scrubber;
  /** Cluster, storage nodes: moves this store's blocks where the ring wants them, drops surplus and garbage. */
  private rebalancer: Rebalancer | undefined;
  private stopFollowing: (() => void) | undefined;

  /** Starts the scrub. */
  constructor(private readonly parts: BackgroundServiceParts) {
    const { cluster } = parts;
    // Every stored copy re-read against its checksum in the background; in
    // a cluster a bad one is rewritten from a replica.
    this.scrubber = new Scrubber({
      store: parts.store,
      rateBytesPerSecond: parts.scrub.rate ?? DEFAULT_SCRUB_RATE,
      intervalMs: parts.scrub.intervalMs ?? DEFAULT_SCRUB_INTERVAL_MS,
      fetchGood: cluster
        ? (ref, hashLo, hashHi, dest) => cluster.getBlock(ref, hashLo, hashHi, dest)
        : undefined,
      log: parts.log.child({ component: 'scrub' }),
    });
    this.scrubber.start();
  }

  /**
   * Cluster mode: keep placement current with the watched ring and live
   * nodes (a node that leaves or joins changes where new copies go), and
   * start rebalance and GC. Call after servePeers, if at all.
   */
  followMembership(table: PeerTable): void {
    const { cluster } = this.parts;
    if (!cluster) return;
    const rebalancer = this.rebalancerFor(cluster);
    this.rebalancer = rebalancer;
    let ringVersion = table.ring()?.version;
    let live = liveSet(table);
    const update = () => {
      cluster.placement.update(table.ring(), table.peers());
      // Targets move when the ring or the set of live nodes does: check copies then.
      const version = table.ring()?.version;
      const now = liveSet(table);
      if (version !== ringVersion || now !== live) rebalancer?.schedule();
      ringVersion = version;
      live = now;
    };
    update();
    rebalancer?.start();
    table.on('change', update);
    this.stopFollowing = () => table.off('change', update);
  }

  /**
   * A storage node (one serving its store to peers) moves its own blocks to
   * where the ring puts them and frees its garbage; a store-less client has none.
   */
  private rebalancerFor(cluster: ClusterBlocks): Rebalancer | undefined {
    const { store, meta, log } = this.parts;
    const backend = this.parts.peers.current?.backend;
    if (!backend) return undefined;
    // GC's view of the catalog: each volume's committed map, kept between runs and reloaded by changed pages.
    const views = new CatalogGcViews({ store, cluster }, log.child({ component: 'gc' }));
    return new Rebalancer({
      placement: cluster.placement,
      peerStore: (peer) => cluster.clientFor(peer),
      local: backend,
      gcView: async () => {
        // Volumes with records held here before the listing: one the listing lacks was deleted.
        const held = this.parts.holderLog?.heldVolumes() ?? [];
        const { records, snapshots } = await this.parts.snapshots.listVersions();
        this.forgetDeletedVolumes(held, records);
        this.adoptOrphans(held, records);
        // Pins after the catalog: the order read-pins.ts's protocol relies on.
        const pins = await listReadPins(meta);
        const snapshotPins = await listSnapshotPins(meta);
        // Every volume's own replication, before a run decides what is surplus.
        for (const record of records)
          cluster.placement.setVolumeReplication(record.id, record.replication);
        const view = await views.view(records, pins, snapshots, snapshotPins);
        if (view) this.publishSnapshotSpace(views, cluster.placement.localUuid);
        return view;
      },
      log: log.child({ component: 'rebalance' }),
      rateBytesPerSecond: this.parts.rebalance.rate,
      intervalMs: this.parts.rebalance.intervalMs,
    });
  }

  /**
   * Drop the holder log's records of volumes deleted since they were
   * appended: no writer will commit them, and left alone they would stop
   * the log's ring once it came round to them (every FLUSH of every writer
   * using this holder would then commit). `held` was read before the
   * listing `records`, and ids are never reused, so a volume in one and not
   * the other is gone, not new.
   */
  private forgetDeletedVolumes(held: number[], records: readonly VolumeRecord[]): void {
    const holder = this.parts.holderLog;
    if (!holder || held.length === 0) return;
    const listed = new Set(records.map((r) => r.id));
    const deleted = held.filter((id) => !listed.has(id));
    if (deleted.length === 0) return;
    let dropped: number;
    try {
      dropped = holder.forgetVolumes(deleted);
    } catch (err) {
      // A closed or failed log: the node is stopping, or its appends are refused anyway.
      this.parts.log.warn(
        { err: (err as Error).message },
        'intent holder log: records of deleted volumes not dropped',
      );
      return;
    }
    this.parts.log.info(
      { volumes: deleted, records: dropped },
      'intent holder log: dropped the records of deleted volumes',
    );
  }

  /** Hand the volumes still listed whose records the holder log keeps to adoptOrphans (in the background). */
  private adoptOrphans(held: number[], records: readonly VolumeRecord[]): void {
    const adopt = this.parts.adoptOrphans;
    if (!adopt || held.length === 0) return;
    const ids = new Set(held);
    const names = records.filter((r) => ids.has(r.id)).map((r) => r.name);
    if (names.length > 0) void adopt(names);
  }

  private lastSpace = { at: 0, value: '' };

  /**
   * After a GC view: what deleting each snapshot (and each volume's
   * snapshots) would free of this node's store, put at
   * `space/snapshots/<node>` for `snapshot list` and `volume list`, which sum
   * it over the nodes registered now. At most every SNAPSHOT_SPACE_EVERY_MS,
   * written only when it changed; a failure costs a stale figure, nothing else.
   */
  private publishSnapshotSpace(views: CatalogGcViews, node: string): void {
    const now = Date.now();
    if (now - this.lastSpace.at < SNAPSHOT_SPACE_EVERY_MS) return;
    this.lastSpace.at = now;
    const { store, meta, log } = this.parts;
    const space = views.snapshotSpace(
      (ref) => store.lookup(ref.volumeId, ref.generation, ref.index) !== undefined,
    );
    const value = encodeSnapshotSpace(node, store.blockSize, space);
    if (value === this.lastSpace.value) return;
    meta.put(snapshotSpaceKey(node), Buffer.from(value)).then(
      () => (this.lastSpace.value = value),
      (err: Error) => log.debug({ err: err.message }, 'snapshot space not published'),
    );
  }

  get scrubStats() {
    return this.scrubber.stats;
  }

  get rebalanceStatus() {
    return this.rebalancer?.stats;
  }

  /** For status(): rebalance's counts. */
  get replicationStatus() {
    return { rebalance: this.rebalancer?.stats };
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
      replicationRate: this.parts.peers.receivedRate(),
      ...(stats && !stats.running
        ? { rebalancePending: stats.pendingBlocks * this.parts.store.blockSize }
        : {}),
    };
  }

  /** Background copying ends before the peer service it uses for this store does: close this first. */
  async close(): Promise<void> {
    await this.scrubber.close();
    this.stopFollowing?.();
    await this.rebalancer?.close();
  }

  registerScrubGauges(metrics: NodeMetrics): void {
    metrics.gauge(
      'torus_scrub_checked_bytes_total',
      'Bytes of the local store the scrub re-read against their checksums',
      () => this.scrubber.stats.checkedBytes,
    );
    metrics.gauge(
      'torus_scrub_bad_blocks_total',
      'Stored copies the scrub found failing their checksum',
      () => this.scrubber.stats.bad,
    );
    metrics.gauge(
      'torus_scrub_repaired_blocks_total',
      'Bad copies the scrub rewrote from a good replica',
      () => this.scrubber.stats.repaired,
    );
    metrics.gauge(
      'torus_scrub_passes_total',
      'Scrub passes completed over the whole local store',
      () => this.scrubber.stats.passes,
    );
  }

  /** Cluster: the rebalance's and GC's gauges (0 until followMembership starts them). */
  registerRebalanceGauges(metrics: NodeMetrics): void {
    metrics.gauge(
      'torus_rebalance_bytes_per_second',
      "Bytes/s this node's rebalance copies to peers",
      () => this.rebalancer?.rate() ?? 0,
    );
    metrics.gauge(
      'torus_rebalance_copied_blocks_total',
      'Blocks rebalance copied to the nodes the ring puts them on',
      () => this.rebalancer?.stats.copied ?? 0,
    );
    metrics.gauge(
      'torus_rebalance_dropped_blocks_total',
      'Surplus local copies released once their targets held them',
      () => this.rebalancer?.stats.dropped ?? 0,
    );
    metrics.gauge(
      'torus_rebalance_failed_total',
      'Copies rebalance could not check or make',
      () => this.rebalancer?.stats.failed ?? 0,
    );
    metrics.gauge(
      'torus_rebalance_pending_blocks',
      'Blocks left to move after the last rebalance run',
      () => this.rebalancer?.stats.pendingBlocks ?? 0,
    );
    metrics.gauge(
      'torus_gc_freed_blocks_total',
      'Local blocks freed as garbage (superseded or of deleted volumes)',
      () => this.rebalancer?.stats.garbageFreed ?? 0,
    );
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
