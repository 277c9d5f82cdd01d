/**
 * The node's local block store in <data-dir>/blocks (created on first start
 * with the capacity given), and the gauges of the store and the block cache.
 */
import { join } from 'node:path';
import { UsageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { formatSize } from '../common/size.js';
import { LocalSlotStore } from '../dataplane/blocks/slot-store.js';
import type { BlockCache } from '../dataplane/cache/block-cache.js';
import type { IntentLog } from '../dataplane/intent-log/intent-log.js';
import type { HolderLog } from '../dataplane/intent-log/holder-log.js';
import type { DataPool } from '../dataplane/pool/data-pool.js';
import type { NodeMetrics } from './metrics.js';

/**
 * Open the local store, creating it when there is none yet (capacityBytes is
 * then required). An existing store keeps the capacity it was created with.
 */
export async function openLocalStore(
  dataDir: string,
  blockSize: number,
  capacityBytes: number | undefined,
  log: Logger,
): Promise<LocalSlotStore> {
  const storeDir = join(dataDir, 'blocks');
  if (!(await LocalSlotStore.exists(storeDir))) {
    if (!capacityBytes)
      throw new UsageError(
        `no local store in ${storeDir} yet: give its capacity with --size (e.g. --size 20GiB)`,
      );
    log.info(
      { dir: storeDir, capacity: formatSize(capacityBytes), blockSize },
      'creating local block store',
    );
    await LocalSlotStore.create(storeDir, { blockSize, capacityBytes });
  }
  const store = await LocalSlotStore.open(storeDir);
  store.reservedSlots = store.defaultMapPageReserve; // so a full store can still commit, freeing space
  if (store.setAsideSlots > 0)
    log.warn(
      { dir: storeDir, slots: store.setAsideSlots },
      'slot records fail their checksum: those slots are set aside, not reused, until `torusctl fsck --salvage` (with torusd stopped) has recovered what it can from them',
    );
  if (store.patchesWithoutBase > 0)
    log.warn(
      { dir: storeDir, patches: store.patchesWithoutBase },
      'stored patches name a base block the store no longer has: the blocks they hold fail to read (EIO); `torusctl fsck` (with torusd stopped) names the volumes and ranges',
    );
  if (capacityBytes && Math.floor(capacityBytes / store.blockSize) !== store.slotCount) {
    log.warn(
      {
        requested: formatSize(capacityBytes),
        actual: formatSize(store.slotCount * store.blockSize),
      },
      'the local store keeps the capacity it was created with; --size ignored',
    );
  }
  return store;
}

export function registerStorageGauges(
  metrics: NodeMetrics,
  store: LocalSlotStore,
  cache: BlockCache,
  pool: DataPool,
): void {
  metrics.gauge(
    'torus_store_capacity_bytes',
    'Local block store capacity',
    () => store.slotCount * store.blockSize,
  );
  metrics.gauge(
    'torus_store_used_bytes',
    'Local block store bytes in use',
    () => store.usedSlots * store.blockSize,
  );
  metrics.gauge(
    'torus_store_held_bytes',
    'Local block store bytes kept only as the base of patches: not in used bytes, freed with the last patch over them',
    () => store.heldSlots * store.blockSize,
  );
  metrics.gauge(
    'torus_store_patches',
    'Blocks stored as patches (the 4 KiB sub-blocks written since their base, which supplies the rest)',
    () => store.patchSlots,
  );
  metrics.gauge('torus_cache_bytes', 'Block cache size', () => cache.slotCount * cache.blockSize);
  metrics.gauge(
    'torus_cache_dirty_bytes',
    'Block cache bytes written but not yet flushed',
    () => cache.dirtySlots * cache.blockSize,
  );
  metrics.gauge('torus_cache_hits_total', 'Block cache hits', () => cache.hits);
  metrics.gauge('torus_cache_misses_total', 'Block cache misses', () => cache.misses);
  metrics.gauge(
    'torus_cache_misses_read_inline_total',
    'Small cache misses read on the event loop: the store answered from memory',
    () => pool.inlineMissCounts.inline,
  );
  metrics.gauge(
    'torus_cache_misses_read_async_total',
    "Small cache misses read in libuv's thread pool: the store answered from the disk",
    () => pool.inlineMissCounts.async,
  );
  metrics.gauge(
    'torus_cache_misses_read_from_peers_inline_total',
    'Small cache misses with no local copy fetched from replicas by the event loop, not a pool worker',
    () => pool.inlineMissCounts.remote,
  );
  metrics.gauge(
    'torus_pool_read_tasks_total',
    'Cache-miss read tasks posted to the data-plane workers (each costs a round trip of two messages)',
    () => pool.taskCounts.reads,
  );
  metrics.gauge(
    'torus_pool_read_task_blocks_total',
    'Blocks read by those tasks: blocks over tasks is the mean task size',
    () => pool.taskCounts.readBlocks,
  );
  metrics.gauge(
    'torus_pool_write_tasks_total',
    'Write-back tasks posted to the data-plane workers',
    () => pool.taskCounts.writes,
  );
  metrics.gauge(
    'torus_pool_write_task_blocks_total',
    'Blocks stored by those tasks',
    () => pool.taskCounts.writeBlocks,
  );
}

export function registerIntentLogGauges(metrics: NodeMetrics, log: IntentLog): void {
  metrics.gauge('torus_intent_log_bytes', 'Intent log file size', () => log.fileBytes);
  metrics.gauge(
    'torus_intent_log_used_bytes',
    'Intent log bytes holding records not yet in a committed version',
    () => log.usedBytes(),
  );
  metrics.gauge(
    'torus_intent_log_wraps_total',
    'Times the intent log went back to its start over records already committed',
    () => log.wraps,
  );
  metrics.gauge(
    'torus_intent_log_full_total',
    'FLUSHes the intent log could not take (a whole version committed instead): a sign the log is small for the load',
    () => log.refusals,
  );
}

export function registerHolderLogGauges(metrics: NodeMetrics, log: HolderLog): void {
  metrics.gauge(
    'torus_intent_holder_log_bytes',
    'Intent holder log file size',
    () => log.fileBytes,
  );
  metrics.gauge(
    'torus_intent_holder_log_used_bytes',
    "Intent holder log bytes from the oldest record still held to the newest: writers' FLUSHed records not yet in a committed version",
    () => log.stats.usedBytes,
  );
  metrics.gauge(
    'torus_intent_holder_log_records',
    'Intent records held for writers until a committed version holds them',
    () => log.stats.liveRecords,
  );
  metrics.gauge(
    'torus_intent_holder_log_wraps_total',
    'Times the intent holder log went back to its start over records no longer held',
    () => log.stats.wraps,
  );
  metrics.gauge(
    'torus_intent_holder_log_full_total',
    "Appends the intent holder log refused for room (their writers' FLUSHes committed versions instead): a sign the log is small for the load, or records of a volume nobody commits any more",
    () => log.stats.refusals,
  );
}
