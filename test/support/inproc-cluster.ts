/**
 * A whole cluster in the test's own process: N StorageNodes sharing one
 * embedded metadata store (no etcd), each serving its peers over TBP on
 * 127.0.0.1 port 0 and following membership like torusd does. What makes a
 * node a member is production code, as in src/cli/torusd.ts:
 * prepareClusterDataDir binds the directory and gives the uuid,
 * StorageNode.servePeers listens before ClusterMember.join registers, and
 * followMembership feeds the member's PeerTable to placement.
 *
 * close() stops every node (each bounded by CLOSE_LIMIT_MS) and removes the
 * temp directory whatever state the test left; call it from after().
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { logger, type Logger } from '../../src/common/log.js';
import { openEmbeddedMetadataStore } from '../../src/controlplane/metadata/embedded/index.js';
import type { MetadataStore } from '../../src/controlplane/metadata/store.js';
import { initRing, readRing } from '../../src/controlplane/membership/ring-store.js';
import { buildRing } from '../../src/model/ring/index.js';
import { VolumeCatalog } from '../../src/controlplane/volumes/catalog.js';
import { refKey, type BlockRef } from '../../src/model/block-ref.js';
import type { NbdExport } from '../../src/dataplane/nbd/export.js';
import { ClusterMember, prepareClusterDataDir } from '../../src/node/cluster-member.js';
import { StorageNode, type PeerService } from '../../src/node/storage-node.js';

const MiB = 1024 * 1024;
/** What prepareClusterDataDir records as the cluster's endpoints (it only shows in messages). */
const METADATA_LABEL = 'in-process embedded store';
/** Longest a node may take to close before close() gives up on it and reports it. */
const CLOSE_LIMIT_MS = 15_000;

export interface InProcessClusterOptions {
  /** The ring's replication (default 2). */
  replication?: number;
  /** Per node (default 64 MiB). */
  capacityBytes?: number;
  /** Set when the cluster is initialised (default 64 KiB, torusd's). */
  blockSize?: number;
  /** How long a volume stays open after its last session (default 0: let go at once). */
  lockLingerMs?: number;
  /** Periodic rebalance and GC runs (default every 1 s; besides those on every ring change). */
  rebalanceIntervalMs?: number;
  /** A volume's patches are folded after this long without a request (default 0: never, as the tests count copies and versions). */
  foldQuietMs?: number;
  /** Logs at this level and above (default TORUS_LOG_LEVEL, else error: the tests' own failures say enough). */
  logLevel?: string;
}

export interface InProcessNode {
  index: number;
  uuid: string;
  dataDir: string;
  node: StorageNode;
  member: ClusterMember;
  /** The node's store as its peers see it: listBlocks() is what the node holds. */
  peers: PeerService;
}

export class InProcessCluster {
  readonly nodes: InProcessNode[] = [];
  private closed = false;

  private constructor(
    /** Temp directory holding the metadata store and every node's data directory. */
    readonly dir: string,
    readonly meta: MetadataStore,
    readonly clusterId: string,
    private readonly options: Required<Omit<InProcessClusterOptions, 'logLevel'>>,
    private readonly log: Logger,
  ) {}

  /** A metadata store initialised like `torusctl init --replication R`, and `nodes` nodes that joined the ring. */
  static async create(
    nodes: number,
    options: InProcessClusterOptions = {},
  ): Promise<InProcessCluster> {
    const log = logger('inproc').child(
      {},
      { level: options.logLevel ?? process.env.TORUS_LOG_LEVEL ?? 'error' },
    );
    const dir = await mkdtemp(join(tmpdir(), 'torus-inproc-'));
    let meta: MetadataStore | undefined;
    try {
      meta = await openEmbeddedMetadataStore(join(dir, 'meta'), { log });
      const blockSize = options.blockSize ?? 64 * 1024;
      const settings = await new VolumeCatalog(meta).initSettings({
        blockSize,
        createdAt: new Date().toISOString(),
      });
      await initRing(meta, { replication: options.replication ?? 2 });
      const cluster = new InProcessCluster(
        dir,
        meta,
        settings.createdAt,
        {
          replication: options.replication ?? 2,
          capacityBytes: options.capacityBytes ?? 64 * MiB,
          blockSize: settings.blockSize,
          lockLingerMs: options.lockLingerMs ?? 0,
          rebalanceIntervalMs: options.rebalanceIntervalMs ?? 1000,
          foldQuietMs: options.foldQuietMs ?? 0,
        },
        log,
      );
      try {
        for (let i = 0; i < nodes; i++) await cluster.addNode();
        await cluster.converged();
      } catch (err) {
        await cluster.close();
        throw err;
      }
      return cluster;
    } catch (err) {
      await meta?.close().catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
  }

  /**
   * Start one more node; with autoJoin (default) it adds itself to the ring,
   * as torusd --auto-join. Then converged() before a test relies on it.
   */
  async addNode(options: { autoJoin?: boolean } = {}): Promise<InProcessNode> {
    if (this.closed) throw new Error('the in-process cluster is closed');
    const index = this.nodes.length;
    const dataDir = join(this.dir, `node-${index}`);
    const log = this.log.child({ node: index });
    await mkdir(dataDir);
    const { uuid, clusterId } = await prepareClusterDataDir(this.meta, dataDir, METADATA_LABEL);
    const node = await StorageNode.open({
      dataDir,
      capacityBytes: this.options.capacityBytes,
      cacheBytes: 16 * MiB,
      workers: 1,
      log,
      meta: this.meta,
      cluster: { uuid, clusterId },
      lockLingerMs: this.options.lockLingerMs,
      rebalanceIntervalMs: this.options.rebalanceIntervalMs,
      scrubIntervalMs: 0,
      // The tests on this harness count copies and versions right after a
      // FLUSH (placement, rebalance, GC): each FLUSH commits here. The
      // replicated intent log is tested on real processes
      // (test/cluster-intent-log.test.ts and the cluster suites).
      replicatedFlush: false,
      foldQuietMs: this.options.foldQuietMs,
    });
    try {
      // Listening before registering, as torusd: a peer that sees this node registered can reach it.
      const peers = await node.servePeers({
        host: '127.0.0.1',
        port: 0,
        clusterId,
        nodeId: uuid,
        log,
      });
      const member = await ClusterMember.join({
        meta: this.meta,
        uuid,
        address: `http://127.0.0.1:${peers.address.port}`,
        usage: () => {
          const { capacity, used } = node.status();
          return { capacity, used };
        },
        rates: () => node.clusterRates(),
        version: 'in-process',
        autoJoin: options.autoJoin ?? true,
        log,
      });
      node.followMembership(member.peers);
      const added: InProcessNode = { index, uuid, dataDir, node, member, peers };
      this.nodes.push(added);
      return added;
    } catch (err) {
      await node.close();
      throw err;
    }
  }

  /**
   * Wait until every node sees the ring in the store and every node live, so
   * placement agrees everywhere (a node's view follows the store by watch).
   */
  async converged(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const version = (await readRing(this.meta))?.description.version;
      const behind = this.nodes.filter(
        (n) =>
          n.member.ring()?.version !== version ||
          n.member.peers.peers().length !== this.nodes.length,
      );
      if (behind.length === 0) return;
      if (Date.now() > deadline) {
        const which = behind.map((n) => n.index).join(', ');
        throw new Error(
          `nodes ${which} did not see ring version ${version} and ${this.nodes.length} live nodes within ${timeoutMs} ms`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }

  /** Stop one node as torusd's SIGTERM does: leave the cluster, then close the node (its data directory stays). */
  async stopNode(n: InProcessNode): Promise<void> {
    const at = this.nodes.indexOf(n);
    if (at < 0) return;
    this.nodes.splice(at, 1);
    await bounded(`closing node ${n.index}`, async () => {
      await n.member.stop();
      await n.node.close();
    });
  }

  /** Every block each node holds, as refKey strings, by node index. */
  async holdings(): Promise<Map<number, Set<string>>> {
    const held = new Map<number, Set<string>>();
    for (const n of this.nodes) {
      const keys = new Set<string>();
      for await (const block of n.peers.backend.listBlocks({})) keys.add(keyOf(block.ref));
      held.set(n.index, keys);
    }
    return held;
  }

  /** The uuids of the ring's first `count` members for block (volumeId, index): where its copies belong when every node is live. */
  async placementOf(volumeId: number, index: number, count: number): Promise<string[]> {
    const ring = await readRing(this.meta);
    if (!ring) throw new Error('no ring');
    const out = new Uint32Array(count);
    const indexed = buildRing(ring.description);
    const n = indexed.placeInto(volumeId, index, count, out);
    return [...out.subarray(0, n)].map((member) => indexed.members[member]);
  }

  /** Open `volume` on node `n` as an NBD session would, run `body`, and close the session whatever happens. */
  async withExport<T>(
    n: InProcessNode,
    volume: string,
    body: (exp: NbdExport) => Promise<T>,
  ): Promise<T> {
    const exp = await n.node.open(volume);
    if (!exp) throw new Error(`node ${n.index} has no volume "${volume}"`);
    try {
      return await body(exp);
    } finally {
      await exp.close();
    }
  }

  /** Stop every node (leaving the cluster first), close the metadata store, remove every directory. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const failures: string[] = [];
    for (const n of [...this.nodes].reverse()) {
      await this.stopNode(n).catch((err: Error) => failures.push(err.message));
    }
    await bounded('closing the metadata store', () => this.meta.close()).catch((err: Error) =>
      failures.push(err.message),
    );
    await rm(this.dir, { recursive: true, force: true });
    if (failures.length > 0)
      throw new Error(`in-process cluster did not close cleanly: ${failures.join('; ')}`);
  }
}

/** createN: `nodes` storage nodes in this process, every one in the ring. */
export function createCluster(
  nodes: number,
  options: InProcessClusterOptions = {},
): Promise<InProcessCluster> {
  return InProcessCluster.create(nodes, options);
}

/**
 * Poll `check` (every 200 ms) until it has no complaint; fail with its last
 * one after `timeoutMs`. For what background work settles (rebalance, GC).
 */
export async function settles(
  check: () => Promise<string | undefined>,
  timeoutMs = 20_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const complaint = await check();
    if (complaint === undefined) return;
    if (Date.now() > deadline) throw new Error(`after ${timeoutMs} ms: ${complaint}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

export function keyOf(ref: BlockRef): string {
  return refKey(ref.volumeId, ref.generation, ref.index);
}

async function bounded(what: string, work: () => Promise<void>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what} took more than ${CLOSE_LIMIT_MS} ms`)),
      CLOSE_LIMIT_MS,
    );
  });
  try {
    await Promise.race([work(), limit]);
  } finally {
    clearTimeout(timer);
  }
}
