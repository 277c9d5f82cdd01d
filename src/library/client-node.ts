/**
 * A store-less cluster node in this process: the original's client-node
 * mode, used by `torusblk nbdserve`, by torusctl to shrink a cluster
 * volume, and by the library's handles on a cluster. One construction for
 * the three, so they behave alike.
 *
 * It joins no ring and registers nowhere; it watches the ring and the live
 * nodes in etcd so it knows where blocks are, takes a volume's write lock
 * when the volume is opened here (as a storage node does for an NBD client;
 * read-only with a read pin when another node writes it), and places every
 * copy on storage nodes. It still needs a little local disk: a scratch store
 * (removed at close) for the map pages it writes while committing; those
 * pages also go to storage nodes, and a commit fails unless each one is
 * durable on at least one of them.
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NotFoundError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { PeerTable } from '../controlplane/membership/peer-table.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import { VolumeCatalog, type ClusterSettings } from '../controlplane/volumes/catalog.js';
import type { NodeMetrics } from '../node/metrics.js';
import type { PeerTlsFiles } from '../dataplane/peer/peer-tls.js';
import { StorageNode } from '../node/storage-node.js';

export interface ClientNodeOptions {
  /** The cluster's etcd, opened by the caller, who closes it after the node. */
  meta: MetadataStore;
  /** Its endpoints, for messages. */
  endpoints: string;
  /** Bytes of scratch store for map pages being committed. */
  scratchBytes: number;
  /** Where the scratch directory goes (default: the system temp dir). */
  scratchDir?: string;
  cacheBytes: number;
  workers?: number;
  keyFile?: string;
  /** How long a volume stays open, with its write lock, after its last session. */
  lockLingerMs: number;
  metrics?: NodeMetrics;
  log: Logger;
  /** What the scratch directory's name starts with, to tell whose it is. */
  label: string;
  /** Mutual TLS to the storage nodes (--peer-tls-dir). */
  peerTls?: PeerTlsFiles;
}

export interface ClientNode {
  node: StorageNode;
  settings: ClusterSettings;
  /** This client's uuid (lock and pin holder). */
  uuid: string;
  /** Close the node (committing what it holds, releasing locks), stop following membership, remove the scratch. */
  close(): Promise<void>;
}

/** Open a store-less node on the cluster in `meta`; NotFoundError when the cluster is not initialised. */
export async function openClientNode(options: ClientNodeOptions): Promise<ClientNode> {
  const { meta, log } = options;
  const settings = await new VolumeCatalog(meta).settings();
  if (!settings)
    throw new NotFoundError(
      `the cluster in etcd ${options.endpoints} is not initialised: run torusctl -C ${options.endpoints} init first`,
    );
  const scratch = await mkdtemp(join(options.scratchDir ?? tmpdir(), `${options.label}-`));
  const uuid = randomUUID();
  let node: StorageNode | undefined;
  let peers: PeerTable | undefined;
  const close = async () => {
    try {
      await peers?.close();
      await node?.close();
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  };
  try {
    node = await StorageNode.open({
      dataDir: scratch,
      capacityBytes: options.scratchBytes,
      cacheBytes: options.cacheBytes,
      workers: options.workers,
      keyFile: options.keyFile,
      metrics: options.metrics,
      log,
      meta,
      cluster: {
        uuid,
        clusterId: settings.createdAt,
        holdsCopies: false,
        peerTls: options.peerTls,
      },
      lockLingerMs: options.lockLingerMs,
    });
    peers = await PeerTable.open(meta, { log: log.child({ component: 'membership' }) });
    node.followMembership(peers);
    return { node, settings, uuid, close };
  } catch (err) {
    await close().catch(() => undefined);
    throw err;
  }
}
