/**
 * What every Volume of a node is given: the node's store, cache and worker
 * pool, cluster placement when there is one, its commits (through
 * VolumeOwnership: fenced by the write lock in a cluster) and its metrics.
 * Built in this one place, for every volume of the node alike.
 */
import type { Logger } from '../common/log.js';
import type { VolumeOwnership } from '../controlplane/volumes/ownership.js';
import type { LocalSlotStore } from '../dataplane/blocks/slot-store.js';
import type { BlockCache } from '../dataplane/cache/block-cache.js';
import type { DataPool } from '../dataplane/pool/data-pool.js';
import type { IntentLog } from '../dataplane/intent-log/intent-log.js';
import type { ClusterBlocks } from '../dataplane/replication/cluster-blocks.js';
import { SingleNodePlacement } from '../dataplane/replication/single-node.js';
import type { VolumeServices } from '../dataplane/volume/volume.js';
import type { NodeMetrics } from './metrics.js';

export interface VolumeServiceParts {
  store: LocalSlotStore;
  cache: BlockCache;
  pool: DataPool;
  log: Logger;
  /** Placement and peer copies; undefined on a single node. */
  cluster: ClusterBlocks | undefined;
  ownership: VolumeOwnership;
  /** A single node's intent log: FLUSH is logged there, the version committed in the background. */
  intentLog: IntentLog | undefined;
  metrics: NodeMetrics | undefined;
  /** VolumeServices.foldQuietMs. */
  foldQuietMs: number;
}

export function volumeServices(parts: VolumeServiceParts): VolumeServices {
  const { ownership, metrics } = parts;
  return {
    store: parts.store,
    cache: parts.cache,
    pool: parts.pool,
    log: parts.log,
    // A single node is the degenerate placement: every block here, no peers.
    placement: parts.cluster ?? new SingleNodePlacement(),
    ...(parts.intentLog ? { intentLog: parts.intentLog } : {}),
    foldQuietMs: parts.foldQuietMs,
    commit: (identity, generation, root, mapHeight, intent) =>
      ownership.commit(identity.name, generation, root ?? null, mapHeight, intent),
    onChecksumError: (volume) => metrics?.checksumErrors.inc({ volume }),
    onFlush: (_volume, blocks, seconds) => {
      metrics?.flushSeconds.observe(seconds);
      metrics?.flushedBlocks.inc(blocks);
    },
    onSpill: (_volume, blocks, seconds) => {
      metrics?.spillSeconds.observe(seconds);
      metrics?.spilledBlocks.inc(blocks);
    },
    onFold: (_volume, blocks) => metrics?.foldedBlocks.inc(blocks),
  };
}
