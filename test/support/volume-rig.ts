/**
 * A volume's services on a real local store, cache and worker pool, with no
 * node around them: what the volume layer's tests open volumes on. The
 * metadata commit is recorded in `committed` (pass one in to reopen a
 * volume at what an earlier rig committed).
 */
import { logger } from '../../src/common/log.js';
import { LocalSlotStore } from '../../src/dataplane/blocks/slot-store.js';
import { BlockCache } from '../../src/dataplane/cache/block-cache.js';
import { InlineReads } from '../../src/dataplane/blocks/inline-reads.js';
import { DataPool } from '../../src/dataplane/pool/data-pool.js';
import { SingleNodePlacement } from '../../src/dataplane/replication/single-node.js';
import type { VolumeServices } from '../../src/dataplane/volume/volume.js';
import type { MapRoot } from '../../src/model/map-root.js';

export interface VolumeRig {
  dir: string;
  store: LocalSlotStore;
  cache: BlockCache;
  pool: DataPool;
  committed: { generation: number; root: MapRoot | undefined };
  services: VolumeServices;
}

/** Open (creating it the first time) the store in `dir`, a cache and a pool over it. */
export async function volumeRig(
  dir: string,
  options: {
    blockSize: number;
    capacityBytes: number;
    cacheBytes: number;
    workers: number;
    committed?: VolumeRig['committed'];
    /** Small misses always read on the main thread, however slow a loaded machine makes them (tests that count them). */
    inlineMissesAlways?: boolean;
    /** Plain blocks written around the page cache (WorkerSetup.directWrites). */
    directWrites?: boolean;
  },
): Promise<VolumeRig> {
  const { blockSize } = options;
  if (!(await LocalSlotStore.exists(dir)))
    await LocalSlotStore.create(dir, { blockSize, capacityBytes: options.capacityBytes });
  const store = await LocalSlotStore.open(dir);
  const cache = new BlockCache(blockSize, options.cacheBytes);
  const pool = new DataPool(
    {
      cache: cache.buffer,
      blockSize,
      records: store.records,
      dataPath: store.dataPath,
      slotsPath: store.slotsPath,
      directWrites: options.directWrites && cache.pageAligned,
    },
    options.workers,
    1,
    options.inlineMissesAlways ? () => new InlineReads(Infinity) : undefined,
  );
  const committed = options.committed ?? { generation: 0, root: undefined };
  const services: VolumeServices = {
    store,
    cache,
    pool,
    placement: new SingleNodePlacement(),
    log: logger('test'),
    async commit(_identity, generation, root) {
      committed.generation = generation;
      committed.root = root;
    },
  };
  return { dir, store, cache, pool, committed, services };
}

export async function closeVolumeRig(r: VolumeRig): Promise<void> {
  await r.pool.close();
  await r.store.close();
}
