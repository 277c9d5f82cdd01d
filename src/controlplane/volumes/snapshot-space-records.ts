/**
 * What each cluster node last counted of its own store that only snapshots
 * hold (dataplane/replication/snapshot-space.ts), one key per node:
 * `space/snapshots/<node>` = { node, snapshots: { "vol@snap": bytes },
 * volumes: { vol: bytes } }. Readers sum over the nodes registered now (a
 * node gone keeps a stale key, never counted), so the figures are store
 * bytes across the cluster — every replica — as of each node's last GC run.
 */
import type { MetadataStore } from '../metadata/store.js';

const SNAPSHOT_SPACE = 'space/snapshots/';

export function snapshotSpaceKey(node: string): string {
  return SNAPSHOT_SPACE + node;
}

/** Bytes deleting them would free, summed over the nodes counted. */
export interface ClusterSnapshotSpace {
  /** By `volume@snapshot`. */
  snapshots: Map<string, number>;
  /** By volume: all its snapshots together. */
  volumes: Map<string, number>;
  /** Nodes whose count is in: fewer than registered means figures are partial. */
  nodes: number;
}

interface SpaceRecord {
  node: string;
  snapshots: Record<string, number>;
  volumes: Record<string, number>;
}

/** The record a node puts, from its counts of blocks of `blockSize`. */
export function encodeSnapshotSpace(
  node: string,
  blockSize: number,
  counts: { snapshots: Record<string, number>; volumes: Record<string, number> },
): string {
  const bytes = (from: Record<string, number>) =>
    Object.fromEntries(Object.entries(from).map(([name, blocks]) => [name, blocks * blockSize]));
  const record: SpaceRecord = {
    node,
    snapshots: bytes(counts.snapshots),
    volumes: bytes(counts.volumes),
  };
  return JSON.stringify(record);
}

/** The sum over `registered` nodes of what each put last. */
export async function readSnapshotSpace(
  meta: MetadataStore,
  registered: ReadonlySet<string>,
): Promise<ClusterSnapshotSpace> {
  const space: ClusterSnapshotSpace = { snapshots: new Map(), volumes: new Map(), nodes: 0 };
  for (const kv of await meta.getPrefix(SNAPSHOT_SPACE)) {
    const node = kv.key.slice(SNAPSHOT_SPACE.length);
    if (!registered.has(node)) continue;
    let record: SpaceRecord;
    try {
      record = JSON.parse(kv.value.toString()) as SpaceRecord;
    } catch {
      continue; // a damaged count is a missing one
    }
    space.nodes++;
    add(space.snapshots, record.snapshots);
    add(space.volumes, record.volumes);
  }
  return space;
}

function add(into: Map<string, number>, from: Record<string, number> | undefined): void {
  for (const [name, bytes] of Object.entries(from ?? {}))
    if (Number.isSafeInteger(bytes) && bytes >= 0) into.set(name, (into.get(name) ?? 0) + bytes);
}
