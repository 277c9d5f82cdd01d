/**
 * A cluster node's ClusterBlocks: placement seeded from the ring and
 * registrations as they are at start (BackgroundServices.followMembership
 * keeps it current), and the gauges of replication.
 */
import type { Logger } from '../common/log.js';
import { readMembership } from '../controlplane/membership/peer-table.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import { hasher } from '../dataplane/blocks/hash.js';
import type { DataPool } from '../dataplane/pool/data-pool.js';
import { ClusterBlocks } from '../dataplane/replication/cluster-blocks.js';
import { ClusterPlacement } from '../dataplane/replication/placement.js';
import type { PeerTlsFiles } from '../dataplane/peer/peer-tls.js';
import type { NodeMetrics } from './metrics.js';

export interface ClusterIdentity {
  uuid: string;
  clusterId: string;
  /**
   * False for a store-less client (torusblk nbdserve): the local store is
   * scratch for map pages, never a place for copies (default true).
   */
  holdsCopies?: boolean;
  /** Mutual TLS with the cluster CA on every peer connection (--peer-tls-dir). */
  peerTls?: PeerTlsFiles;
}

export async function openClusterBlocks(
  meta: MetadataStore,
  self: ClusterIdentity,
  log: Logger,
): Promise<ClusterBlocks> {
  const snapshot = await readMembership(meta, log);
  const placement = new ClusterPlacement(
    self.uuid,
    { clusterId: self.clusterId, nodeId: self.uuid, tls: self.peerTls },
    self.holdsCopies ?? true,
  );
  placement.update(
    snapshot.ring?.description,
    [...snapshot.peers.values()].map((p) => p.info),
  );
  const cluster = new ClusterBlocks(
    placement,
    await hasher(),
    log.child({ component: 'replication' }),
  );
  // The way back to whole blocks only, should patches misbehave somewhere.
  cluster.patchesEnabled = process.env.TORUS_CLUSTER_PATCHES !== 'off';
  return cluster;
}

/** The main thread's replication counts (cluster) and the workers' (pool). */
export function registerReplicationGauges(
  metrics: NodeMetrics,
  cluster: ClusterBlocks,
  pool: DataPool,
): void {
  const stats = cluster.stats;
  metrics.gauge(
    'torus_replication_under_replicated_blocks_total',
    'Blocks stored with fewer copies than the ring asks for',
    () => stats.underReplicatedBlocks,
  );
  metrics.gauge(
    'torus_replication_failed_peer_writes_total',
    'Batches of copies a peer failed to store',
    () => stats.failedPeerWrites,
  );
  metrics.gauge(
    'torus_replication_remote_reads_total',
    'Blocks read from a peer by the main thread (map pages)',
    () => stats.remoteReads,
  );
  const workers = pool.replicationStats;
  metrics.gauge(
    'torus_replication_hedged_reads_total',
    'Replica reads that asked a second replica because the first was slow',
    () => workers.hedgedReads,
  );
  metrics.gauge(
    'torus_replication_replica_repairs_total',
    'Bad replica copies rewritten from a good one',
    () => workers.replicaRepairs,
  );
  metrics.gauge(
    'torus_replication_placed_elsewhere_total',
    'Copies placed on a spare node because a target was full',
    () => workers.placedElsewhere,
  );
  metrics.gauge(
    'torus_replication_full_refusals_total',
    'Copies a full peer refused',
    () => workers.fullRefusals,
  );
  metrics.gauge(
    'torus_replication_patch_copies_total',
    'Copies sent to replicas as patches: only the 4 KiB sub-blocks written',
    () => workers.patchCopiesSent,
  );
  metrics.gauge(
    'torus_replication_patch_copies_refused_total',
    'Patch copies a replica did not store (no base there): the block was then sent whole',
    () => workers.patchCopiesRefused,
  );
}
