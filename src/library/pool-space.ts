/**
 * What the pool has room for: raw capacity and use of the storage, the
 * block size volumes are made of, and how many copies of a block are kept.
 * The CSI driver's GetCapacity divides free space by the copies; the
 * rounding of new volumes' sizes uses the block size.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DEFAULT_BLOCK_SIZE } from '../common/block-size.js';
import { readMembership } from '../controlplane/membership/peer-table.js';
import { DEFAULT_REPLICATION, readRing } from '../controlplane/membership/ring-store.js';
import {
  readSnapshotSpace,
  type ClusterSnapshotSpace,
} from '../controlplane/volumes/snapshot-space-records.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import type { VolumeCatalog } from '../controlplane/volumes/catalog.js';

export interface PoolSpace {
  /** Block size of the cluster's (or node's) volumes. */
  blockSize: number;
  /** Raw bytes of store: the single node's, or the sum over live cluster nodes. */
  capacity: number;
  /** Raw bytes in use; undefined when it cannot be known (a single node whose torusd is not running). */
  used: number | undefined;
  /** Copies of each block by default (a cluster's ring replication; 1 on a single node). */
  replication: number;
  /** Live storage nodes counted (1 on a single node). */
  nodes: number;
}

/** A running single node's space, from its status. */
export function singleNodeSpace(status: {
  blockSize: number;
  capacity: number;
  used: number;
}): PoolSpace {
  return {
    blockSize: status.blockSize,
    capacity: status.capacity,
    used: status.used,
    replication: 1,
    nodes: 1,
  };
}

/** A cluster's space, from its live registrations and ring, or an idle single node's, from its layout file. */
export async function readPoolSpace(
  catalog: VolumeCatalog,
  meta: MetadataStore,
  where: { cluster: true } | { cluster: false; dataDir: string },
): Promise<PoolSpace> {
  const blockSize = (await catalog.settings())?.blockSize ?? DEFAULT_BLOCK_SIZE;
  if (!where.cluster) {
    const layout = await readFile(join(where.dataDir, 'blocks', 'store.json'), 'utf8')
      .then((text) => JSON.parse(text) as { blockSize: number; slotCount: number })
      .catch(() => undefined);
    const capacity = layout ? layout.blockSize * layout.slotCount : 0;
    return { blockSize, capacity, used: undefined, replication: 1, nodes: 1 };
  }
  const { peers, ring } = await readMembership(meta);
  const replication =
    ring?.description.replication ??
    (await readRing(meta))?.description.replication ??
    DEFAULT_REPLICATION;
  let capacity = 0;
  let used = 0;
  for (const { info } of peers.values()) {
    capacity += info.capacity;
    used += info.used;
  }
  return { blockSize, capacity, used, replication, nodes: peers.size };
}

/**
 * What deleting snapshots would free across a cluster (store bytes, every
 * replica), as each registered node last counted it; undefined while some
 * registered node has no count yet (a partial sum would understate).
 */
export async function clusterSnapshotSpace(
  meta: MetadataStore,
): Promise<ClusterSnapshotSpace | undefined> {
  const { peers } = await readMembership(meta);
  const space = await readSnapshotSpace(meta, new Set(peers.keys()));
  return space.nodes === peers.size && peers.size > 0 ? space : undefined;
}
