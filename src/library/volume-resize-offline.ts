/**
 * `volume resize` without a running torusd: on a single node's metadata
 * directory (grow only), or on a cluster's etcd (-C).
 *
 * Growing changes the record only (node/volume-resize.ts explains why that
 * is safe under a writer). Shrinking needs the version trimmed, which needs
 * the volume open: a single node does it in torusd (start it); a cluster
 * does it here with a store-less node of its own (cluster-shrink.ts) once
 * nobody writes or reads the volume.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ConflictError } from '../common/errors.js';
import { formatSize } from '../common/size.js';
import { describeHolder, readVolumeLock } from '../controlplane/locks/index.js';
import { readMembership } from '../controlplane/membership/peer-table.js';
import { readRing } from '../controlplane/membership/ring-store.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import type { VolumeCatalog } from '../controlplane/volumes/catalog.js';
import { readPinsOf } from '../controlplane/volumes/read-pins.js';
import {
  checkResize,
  resizeRecord,
  type ResizeOptions,
  type ResizeResult,
  type SizeLimit,
} from '../node/volume-resize.js';

/** What a cluster resize also reports: who has the volume open (their clients keep the old size). */
export interface ClusterResizeResult extends ResizeResult {
  /** The node holding the write lock, if any. */
  writer?: string;
  /** Nodes serving it read-only. */
  readers: string[];
}

/** A single node's store capacity, from its layout file; undefined before the store exists. */
async function storeLimit(dataDir: string): Promise<SizeLimit | undefined> {
  try {
    const layout = JSON.parse(await readFile(join(dataDir, 'blocks', 'store.json'), 'utf8')) as {
      blockSize: number;
      slotCount: number;
    };
    return { bytes: layout.blockSize * layout.slotCount, what: "this node's store capacity" };
  } catch {
    return undefined;
  }
}

/** Single node, torusd not running: grow the record; a shrink needs torusd. */
export async function resizeOffline(
  catalog: VolumeCatalog,
  dataDir: string,
  name: string,
  size: number,
  options: ResizeOptions,
): Promise<ResizeResult> {
  const { record } = await catalog.get(name);
  const limit = await storeLimit(dataDir);
  const way = checkResize(record, size, options, limit);
  if (way === 'shrink')
    throw new ConflictError(
      `shrinking volume "${name}" trims its blocks past the new end, which torusd does: start torusd for ${dataDir} and run this again`,
    );
  if (way === 'grow')
    await resizeRecord(catalog, name, size, (now) => checkResize(now, size, options, limit));
  return { name, oldSize: record.size, size, sessions: 0 };
}

/**
 * The most a cluster volume may hold: the live storage nodes' capacity
 * divided by the volume's replication (each block is stored that many
 * times). Undefined when no storage node is up (nothing to measure).
 */
async function clusterLimit(
  meta: MetadataStore,
  replication: number | undefined,
): Promise<SizeLimit | undefined> {
  const { peers, ring } = await readMembership(meta);
  const copies =
    replication ??
    ring?.description.replication ??
    (await readRing(meta))?.description.replication ??
    1;
  let capacity = 0;
  for (const { info } of peers.values()) capacity += info.capacity;
  if (capacity === 0) return undefined;
  const bytes = Math.floor(capacity / copies / 4096) * 4096;
  return {
    bytes,
    what: `the cluster's capacity (${formatSize(capacity)} on ${peers.size} live node(s)) divided by its replication ${copies}`,
  };
}

/** Who holds the volume open in the cluster: the writer (lock holder) and the read-only nodes (pins). */
async function holders(
  meta: MetadataStore,
  name: string,
): Promise<{ writer?: string; readers: string[] }> {
  const lock = await readVolumeLock(meta, name);
  const pins = await readPinsOf(meta, name);
  return {
    ...(lock ? { writer: `${describeHolder(lock.holder)} (lock epoch ${lock.epoch})` } : {}),
    readers: [...new Set(pins.map((pin) => `node ${pin.node}`))],
  };
}

/**
 * Cluster grow: a compare-and-swap of the record (no lock). Cluster shrink:
 * refused while any node holds the volume (naming them); otherwise
 * `shrinkInProcess` trims and commits it under the write lock.
 */
export async function resizeOnCluster(
  catalog: VolumeCatalog,
  meta: MetadataStore,
  name: string,
  size: number,
  options: ResizeOptions,
  shrinkInProcess: () => Promise<void>,
): Promise<ClusterResizeResult> {
  const { record } = await catalog.get(name);
  const limit = await clusterLimit(meta, record.replication);
  const way = checkResize(record, size, options, limit);
  const open = await holders(meta, name);
  const result = { name, oldSize: record.size, size, sessions: 0, ...open };
  if (way === 'grow')
    await resizeRecord(catalog, name, size, (now) => checkResize(now, size, options, limit));
  if (way === 'shrink') {
    const users = [
      ...(open.writer ? [`written by ${open.writer}`] : []),
      ...(open.readers.length > 0 ? [`read on ${open.readers.join(', ')}`] : []),
    ];
    if (users.length > 0)
      throw new ConflictError(
        `volume "${name}" is in use (${users.join('; ')}): disconnect its clients before shrinking it (a node keeps a volume --lock-linger seconds after its last client)`,
      );
    await shrinkInProcess();
  }
  return result;
}
