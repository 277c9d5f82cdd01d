/**
 * `torusctl fsck DIR`: check a single node's data directory offline, and
 * with `salvage` make every damaged volume loadable again.
 *
 * Offline means holding the directory's metadata lock for the whole run
 * (the embedded store's LOCK file, as torusd does): a running torusd makes
 * the open fail with ConflictError naming its pid, and no torusd can start
 * while fsck runs. A cluster node's directory is refused: its volumes' blocks
 * are spread over other nodes, and a block missing here may be held there.
 */
import { open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { UsageError } from '../common/errors.js';
import { openEmbeddedMetadataStore } from '../controlplane/metadata/embedded/index.js';
import { readClusterBinding } from '../controlplane/membership/node-identity.js';
import { VolumeCatalog, type VolumeRecord } from '../controlplane/volumes/catalog.js';
import { INTENT_LOG_FILE, IntentLog } from '../dataplane/intent-log/intent-log.js';
import { recordsToReplay } from '../dataplane/intent-log/replay.js';
import { RECORD_SIZE, SLOT_FREE, OFF_STATE } from '../dataplane/blocks/record.js';
import { LocalSlotStore, type StoreLayout } from '../dataplane/blocks/slot-store.js';
import { salvageVolume, type SalvageResult } from './salvage.js';
import { scanSlotTable } from './slot-scan.js';
import { VolumeChecker, type Damage, type DamageKind } from './volume-check.js';

/** One damaged block or page as reported: no hashes, no map. */
export interface DamageReport {
  kind: DamageKind;
  block: string;
  /** Bytes of the volume affected: [offset, offset + length). */
  offset: number;
  length: number;
  /** Found intact in this slot (its record damaged): salvage keeps it. */
  recoverableFrom?: number;
}

export interface VolumeReport {
  name: string;
  id: number;
  generation: number;
  size: number;
  encrypted: boolean;
  pagesChecked: number;
  blocksChecked: number;
  state: 'clean' | 'damaged' | 'salvaged';
  damage: DamageReport[];
  salvage?: SalvageResult;
}

export interface FsckReport {
  dataDir: string;
  blockSize: number;
  slotCount: number;
  /** Slot records that are neither free nor intact (torusd sets their slots aside until fsck has looked). */
  damagedSlots: { slot: number; recordOffset: number }[];
  volumes: VolumeReport[];
  clean: boolean;
  salvaged: boolean;
  /**
   * Volumes with FLUSHed data still only in the intent log (records newer
   * than their committed version): starting torusd replays and commits it.
   */
  pendingIntents: { volume: string; records: number }[];
  /** With salvage: the JSON file in DIR where this report was written. */
  reportFile?: string;
}

/** Check `dataDir`; with `salvage`, repair what is damaged and write the report into the directory. */
export async function fsck(dataDir: string, options: { salvage: boolean }): Promise<FsckReport> {
  const blocksDir = join(dataDir, 'blocks');
  if (!(await LocalSlotStore.exists(blocksDir)))
    throw new UsageError(
      `${dataDir} is not a torus data directory: no ${LocalSlotStore.layoutPath(blocksDir)}`,
    );
  if (!(await stat(join(dataDir, 'meta')).catch(() => undefined)))
    throw new UsageError(`${dataDir} has no metadata directory (meta/): nothing names its volumes`);
  const binding = await readClusterBinding(dataDir);
  if (binding)
    throw new UsageError(
      `${dataDir} belongs to cluster ${binding.clusterId} (etcd ${binding.etcd}): fsck checks single-node directories; a cluster's blocks are spread over its nodes and its scrub repairs them`,
    );
  const meta = await openEmbeddedMetadataStore(join(dataDir, 'meta'));
  try {
    const layout = JSON.parse(
      await readFile(LocalSlotStore.layoutPath(blocksDir), 'utf8'),
    ) as StoreLayout;
    const pendingIntents = await pendingIntentsOf(dataDir, await new VolumeCatalog(meta).list());
    if (options.salvage && pendingIntents.length > 0)
      throw new UsageError(
        `${dataDir}: the intent log holds FLUSHed data not yet committed (${pendingIntents.map((p) => `${p.volume}: ${p.records} record(s)`).join(', ')}); start torusd once to replay it, stop it, then salvage`,
      );
    const damagedSlots = await scanSlotTable(blocksDir, layout.slotCount, layout.blockSize);
    // Opened as found: a format 1 store is upgraded by torusd's next start, not by a check that writes nothing.
    const store = await LocalSlotStore.open(blocksDir, { upgrade: false });
    const report: FsckReport = {
      dataDir,
      blockSize: store.blockSize,
      slotCount: store.slotCount,
      damagedSlots: damagedSlots.map(({ slot, recordOffset }) => ({ slot, recordOffset })),
      pendingIntents,
      volumes: [],
      clean: true,
      salvaged: false,
    };
    try {
      const catalog = new VolumeCatalog(meta);
      const checker = new VolumeChecker(store, damagedSlots);
      for (const record of await catalog.list()) {
        const check = await checker.check(record);
        const volume: VolumeReport = {
          name: check.name,
          id: check.id,
          generation: check.generation,
          size: check.size,
          encrypted: check.encrypted,
          pagesChecked: check.pagesChecked,
          blocksChecked: check.blocksChecked,
          state: check.damage.length > 0 ? 'damaged' : 'clean',
          damage: check.damage.map(reportOf),
        };
        if (options.salvage && check.damage.length > 0) {
          volume.salvage = await salvageVolume(
            check,
            await catalog.get(record.name),
            store,
            catalog,
          );
          volume.state = 'salvaged';
        }
        report.volumes.push(volume);
      }
      report.clean = damagedSlots.length === 0 && report.volumes.every((v) => v.state === 'clean');
      if (options.salvage && !report.clean) {
        await clearDamagedRecords(store, damagedSlots);
        report.salvaged = true;
      }
    } finally {
      await store.close();
    }
    if (report.salvaged) {
      report.reportFile = join(dataDir, `fsck-${new Date().toISOString().replace(/:/g, '-')}.json`);
      await writeFile(report.reportFile, JSON.stringify(report, null, 2) + '\n', { mode: 0o600 });
    }
    return report;
  } finally {
    await meta.close();
  }
}

/** Per volume, the intent-log records a start would replay (salvage would commit past them). */
async function pendingIntentsOf(
  dataDir: string,
  volumes: readonly VolumeRecord[],
): Promise<FsckReport['pendingIntents']> {
  const records = await IntentLog.peek(join(dataDir, INTENT_LOG_FILE));
  const pending: FsckReport['pendingIntents'] = [];
  for (const volume of volumes) {
    const n = recordsToReplay(records, volume.id, volume.generation);
    if (n.length > 0) pending.push({ volume: volume.name, records: n.length });
  }
  return pending;
}

function reportOf(d: Damage): DamageReport {
  return {
    kind: d.kind,
    block: d.block,
    offset: d.offset,
    length: d.length,
    ...(d.recoverableFrom !== undefined ? { recoverableFrom: d.recoverableFrom } : {}),
  };
}

/**
 * Zero the damaged records salvage did not reuse, so a second run finds the
 * table clean. A slot salvage allocated has a fresh record in memory (and on
 * disk): left alone. torusd sets the others aside until then (never reusing a
 * slot whose block fsck might still find by hash); zeroed, they are free.
 */
async function clearDamagedRecords(
  store: LocalSlotStore,
  damaged: readonly { slot: number; recordOffset: number }[],
): Promise<void> {
  const zeros = Buffer.alloc(RECORD_SIZE);
  const file = await open(store.slotsPath, 'r+');
  try {
    for (const { slot, recordOffset } of damaged) {
      // Set aside by the store (its record damaged), or free: zeroed. A slot
      // salvage allocated holds a fresh intact record: left alone.
      const free = store.record(slot).getUint32(OFF_STATE, true) === SLOT_FREE;
      if (!store.isSetAside(slot) && !free) continue;
      await file.write(zeros, 0, RECORD_SIZE, recordOffset);
    }
    await file.datasync();
  } finally {
    await file.close();
  }
}
