/**
 * A node's identity and the cluster its data directory belongs to, both kept
 * in the data directory:
 *
 *   node-id   the node's uuid, created once. The same directory is the same
 *             member across restarts; a wiped or different directory is a
 *             new member (its old uuid shows DOWN until removed).
 *   cluster   which cluster the directory's blocks belong to (the id of the
 *             cluster's settings) and the etcd it was joined through.
 *
 * The cluster file exists because a node frees, at start-up, every local
 * block no volume of *its* catalog references: pointing a directory at
 * another catalog (another etcd cluster, or the single-node store) would
 * silently free all its data. So a bound directory refuses any other.
 *
 * Both files are created complete or not at all: written to a private name,
 * fsync'd, then link()ed into place (which fails if one exists, so two
 * racing creators agree on the winner), then the directory is fsync'd.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { link, open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { ConflictError } from '../../common/errors.js';
import { UUID_PATTERN } from './peer-info.js';

export const NODE_ID_FILE = 'node-id';
export const CLUSTER_FILE = 'cluster';

export interface NodeIdentity {
  uuid: string;
  /** True when this call created it: the directory is new to the cluster. */
  created: boolean;
}

export interface ClusterBinding {
  /** Identifies the cluster: its settings' creation time (written once by init). */
  clusterId: string;
  /** The etcd endpoints the directory was joined through, for messages only. */
  etcd: string;
  boundAt: string;
}

/** Read the node's uuid from `<dataDir>/node-id`, creating it the first time. */
export async function loadOrCreateNodeId(dataDir: string): Promise<NodeIdentity> {
  const path = join(dataDir, NODE_ID_FILE);
  const existing = await readIfExists(path);
  if (existing !== undefined) return { uuid: checkNodeId(existing, path), created: false };
  const uuid = randomUUID();
  if (await createExclusive(dataDir, NODE_ID_FILE, `${uuid}\n`)) return { uuid, created: true };
  // Another process created it between our read and our link: theirs wins.
  return { uuid: checkNodeId((await readIfExists(path)) ?? '', path), created: false };
}

function checkNodeId(text: string, path: string): string {
  const uuid = text.trim();
  if (!UUID_PATTERN.test(uuid)) {
    throw new Error(
      `node id file ${path} is damaged (expected a uuid, got ${JSON.stringify(uuid.slice(0, 64))}); restore it, or delete it to join as a new node`,
    );
  }
  return uuid;
}

export async function readClusterBinding(dataDir: string): Promise<ClusterBinding | undefined> {
  const path = join(dataDir, CLUSTER_FILE);
  const text = await readIfExists(path);
  if (text === undefined) return undefined;
  try {
    const binding = JSON.parse(text) as ClusterBinding;
    if (typeof binding.clusterId === 'string' && typeof binding.etcd === 'string') return binding;
  } catch {
    // fall through
  }
  throw new Error(
    `cluster file ${path} is damaged; restore it (deleting it lets this directory join another cluster, whose start-up would free all its blocks)`,
  );
}

/**
 * Bind `dataDir` to a cluster, or check that it is bound to this one.
 * ConflictError when it belongs to another cluster.
 */
export async function bindToCluster(
  dataDir: string,
  cluster: { clusterId: string; etcd: string },
): Promise<{ bound: boolean }> {
  const check = (existing: ClusterBinding) => {
    if (existing.clusterId !== cluster.clusterId) {
      throw new ConflictError(
        `data directory ${dataDir} belongs to another cluster (initialised ${existing.clusterId}, joined through etcd ${existing.etcd}); ` +
          `this etcd's cluster was initialised ${cluster.clusterId}. Use a new --data-dir for this cluster`,
      );
    }
    return { bound: false };
  };
  const existing = await readClusterBinding(dataDir);
  if (existing) return check(existing);
  const binding: ClusterBinding = { ...cluster, boundAt: new Date().toISOString() };
  if (await createExclusive(dataDir, CLUSTER_FILE, JSON.stringify(binding) + '\n'))
    return { bound: true };
  return check((await readClusterBinding(dataDir))!);
}

async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Create `dir/name` with `content`, durably; false if it already exists. */
async function createExclusive(dir: string, name: string, content: string): Promise<boolean> {
  const path = join(dir, name);
  const temp = join(dir, `.${name}.${process.pid}.${randomBytes(4).toString('hex')}`);
  const handle = await open(temp, 'wx', 0o644);
  try {
    await handle.writeFile(content);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await link(temp, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    await unlink(temp).catch(() => undefined);
  }
  const dirHandle = await open(dir, 'r');
  try {
    await dirHandle.sync();
  } finally {
    await dirHandle.close();
  }
  return true;
}
