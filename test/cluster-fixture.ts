/**
 * A whole cluster for tests: a real etcd on free ports, N real torusd nodes
 * (each with its own data directory, a free peer port and NBD on port 0),
 * `torusctl init`, and optionally `peer add --all-peers`. Nodes can be
 * killed and restarted on their own data directory (same uuid, same peer
 * port). stop() kills every process and removes every directory, whatever
 * state the test left them in; call it from after()/t.after().
 *
 * Sizes default small (64 MiB stores, 16 MiB caches, one worker) so that
 * eight nodes fit beside the rest of the suite on a shared machine.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { startEtcd, type EtcdOptions, type EtcdServer } from './etcd-server.js';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

/** The getting-started guide's peer ports: never handed out, so tests do not collide with someone walking the guide here. */
const RESERVED_PORTS = new Set([40000, 40001, 40002, 40003, 40004]);

/**
 * Where test ports come from: below Linux's ephemeral range (32768-60999 by
 * default). A port the kernel hands out for `listen(0)` or as the local end
 * of an outgoing connection can be taken again between our release and the
 * daemon's bind — seen on a loaded machine, where a torusd's own NBD
 * listener on port 0 got the peer port picked for it a moment before.
 */
const TEST_PORT_LOW = 20_000;
const TEST_PORT_HIGH = 32_000;

function tryListen(port: number): Promise<Server | undefined> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(undefined));
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

/** Distinct free TCP ports on 127.0.0.1, outside the ephemeral range (held together, then released), none of the reserved ones. */
export async function freePorts(count: number): Promise<number[]> {
  const held: Server[] = [];
  const ports: number[] = [];
  try {
    for (let attempt = 0; ports.length < count; attempt++) {
      if (attempt > 1000)
        throw new Error(`no ${count} free ports between ${TEST_PORT_LOW} and ${TEST_PORT_HIGH}`);
      const port = TEST_PORT_LOW + Math.floor(Math.random() * (TEST_PORT_HIGH - TEST_PORT_LOW));
      if (RESERVED_PORTS.has(port) || ports.includes(port)) continue;
      const server = await tryListen(port);
      if (!server) continue;
      held.push(server);
      ports.push(port);
    }
  } finally {
    await Promise.all(held.map((s) => new Promise((resolve) => s.close(resolve))));
  }
  return ports;
}

/** One free port (see freePorts). */
export async function freePort(): Promise<number> {
  return (await freePorts(1))[0];
}

/** Hex SHA-256, for comparing what was written with what reads back. */
export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/**
 * Poll `probe` every 200 ms until it gives a value; fail naming `what` (and
 * whatever `context` says, e.g. Cluster.diagnostics) after `timeoutMs`.
 */
export async function until<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 15_000,
  context: () => string = () => '',
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}\n${context()}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface PeerRow {
  uuid: string;
  member: 'OK' | 'Avail' | 'DOWN';
  address?: string;
  used?: number;
}

export interface NodeOptions {
  /** Host of --peer-address (default 127.0.0.1); the node listens there for its peers. */
  peerHost?: string;
  /** Run torusd through this command (e.g. ['ip', 'netns', 'exec', NS]). */
  prefix?: string[];
  /** The address this node reaches etcd at (default 127.0.0.1; etcd must listen there: ClusterOptions.etcd.extraHosts). */
  etcdHost?: string;
  /** More torusd flags. */
  args?: string[];
  label?: string;
}

export class ClusterNode {
  process: TorusdProcess | undefined;
  uuid = '';

  constructor(
    private readonly cluster: Cluster,
    readonly index: number,
    readonly dataDir: string,
    readonly peerPort: number,
    readonly options: NodeOptions,
  ) {}

  get peerAddress(): string {
    return `${this.options.peerHost ?? '127.0.0.1'}:${this.peerPort}`;
  }

  get alive(): boolean {
    const child = this.process?.child;
    return Boolean(child && child.exitCode === null && child.signalCode === null);
  }

  private get running(): TorusdProcess {
    if (!this.process) throw new Error(`node ${this.index} is not running`);
    return this.process;
  }

  /** nbd://127.0.0.1:PORT/NAME (only reachable from this namespace when the node runs in it). */
  uri(volume: string): string {
    return this.running.uri(volume);
  }

  /** nbd+unix:// through the node's socket in its data directory: reachable from any network namespace. */
  unixUri(volume: string): string {
    return this.running.unixUri(volume);
  }

  output(): string {
    return this.process?.output() ?? '';
  }

  /** Start (or start again, on the same directory and peer port). */
  async start(): Promise<void> {
    if (this.alive) throw new Error(`node ${this.index} is already running`);
    this.process = await startTorusd({
      dataDir: this.dataDir,
      size: this.cluster.options.size,
      prefix: this.options.prefix,
      // Generous: eight nodes starting at once on a shared two-core machine.
      startTimeoutMs: 60_000,
      args: [
        '--cache-size',
        this.cluster.options.cacheSize,
        '--workers',
        '1',
        '--etcd',
        this.options.etcdHost
          ? `http://${this.options.etcdHost}:${this.cluster.etcd.port}`
          : this.cluster.endpoint,
        '--peer-address',
        this.peerAddress,
        ...(this.cluster.options.args ?? []),
        ...(this.options.args ?? []),
      ],
    });
    this.uuid = (await readFile(join(this.dataDir, 'node-id'), 'utf8')).trim();
  }

  /** kill -9 (or another signal) and wait for the exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    await this.process?.stop(signal);
  }
}

export interface ClusterOptions {
  nodes: number;
  replication?: number;
  /** Each node's store (--size). */
  size?: string;
  /** Each node's --cache-size. */
  cacheSize?: string;
  /** `torusctl peer add --all-peers` once the nodes run (default true). */
  join?: boolean;
  /** More torusd flags for every node (before each node's own). */
  args?: string[];
  /** Passed to startEtcd (e.g. extra listen addresses). */
  etcd?: EtcdOptions;
  /** Options of the first `nodes` nodes. */
  node?: (index: number) => NodeOptions;
}

export class Cluster {
  readonly nodes: ClusterNode[] = [];
  private readonly dirs: string[] = [];
  readonly options: Required<Pick<ClusterOptions, 'size' | 'cacheSize'>> & ClusterOptions;

  private constructor(
    readonly etcd: EtcdServer,
    options: ClusterOptions,
  ) {
    this.options = { size: '64MiB', cacheSize: '16MiB', ...options };
  }

  /** Start etcd, init (replication R), the nodes in parallel, and (unless join: false) add them all to the ring. */
  static async start(options: ClusterOptions): Promise<Cluster> {
    const etcd = await startEtcd(options.etcd);
    const cluster = new Cluster(etcd, options);
    try {
      const init = await cluster.ctl('init', '--replication', String(options.replication ?? 2));
      assert.equal(init.code, 0, init.stderr);
      const ports = await freePorts(options.nodes);
      for (let i = 0; i < options.nodes; i++)
        await cluster.addNode(options.node?.(i) ?? {}, ports[i]);
      // At most four starting at once: each start is CPU-bound for a moment.
      for (let i = 0; i < cluster.nodes.length; i += 4)
        await Promise.all(cluster.nodes.slice(i, i + 4).map((n) => n.start()));
      if (options.join ?? true) {
        const added = await cluster.ctl('peer', 'add', '--all-peers');
        assert.equal(added.code, 0, added.stderr);
        await cluster.waitForMembers(options.nodes);
      }
    } catch (err) {
      await cluster.stop();
      throw err;
    }
    return cluster;
  }

  get endpoint(): string {
    return this.etcd.endpoint;
  }

  /** A node with its own data directory and peer port, not started yet. */
  async addNode(options: NodeOptions = {}, port?: number): Promise<ClusterNode> {
    const dir = await makeDataDir(options.label ?? `c${this.nodes.length}`);
    this.dirs.push(dir);
    const node = new ClusterNode(
      this,
      this.nodes.length,
      dir,
      port ?? (await freePorts(1))[0],
      options,
    );
    this.nodes.push(node);
    return node;
  }

  ctl(...args: string[]): Promise<CliResult> {
    return runCli('torusctl', ['-C', this.endpoint, ...args]);
  }

  /** Bytes in use in every node's store together (each node's `torusctl status`): R copies of each block. */
  async usedBytes(): Promise<number> {
    let total = 0;
    for (const node of this.nodes) {
      const r = await runCli('torusctl', ['status', '--data-dir', node.dataDir]);
      total += (JSON.parse(r.stdout) as { used: number }).used;
    }
    return total;
  }

  async peers(): Promise<PeerRow[]> {
    const r = await this.ctl('list-peers', '-o', 'json');
    assert.equal(r.code, 0, `list-peers: ${r.stderr}`);
    return JSON.parse(r.stdout).peers as PeerRow[];
  }

  /** Wait until at least `count` ring members are OK (alive and in the ring). */
  async waitForMembers(count: number, timeoutMs = 20_000): Promise<PeerRow[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = await this.ctl('list-peers', '-o', 'json');
      const rows = r.code === 0 ? (JSON.parse(r.stdout).peers as PeerRow[]) : [];
      if (rows.filter((p) => p.member === 'OK').length >= count) return rows;
      if (Date.now() > deadline)
        assert.fail(
          `fewer than ${count} nodes OK in the ring after ${timeoutMs} ms: ${r.stdout}${r.stderr}`,
        );
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  /** Wait until the node with this uuid is listed with this status. */
  async waitForStatus(uuid: string, member: PeerRow['member'], timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const row = (await this.peers()).find((p) => p.uuid === uuid);
      if (row?.member === member) return;
      if (Date.now() > deadline)
        assert.fail(
          `node ${uuid} is ${row?.member ?? 'not listed'}, not ${member}, after ${timeoutMs} ms`,
        );
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }

  /**
   * Wait until every running node has finished a rebalance run that started
   * at or after `since` (ms since the epoch) without a failed copy
   * (`torusctl status`: replication.rebalance). Not that nothing is pending:
   * a run may keep surplus copies it could not yet drop. Returns the seconds
   * waited and the nodes' pending block counts.
   */
  async waitForRebalance(
    since: number,
    timeoutMs = 30_000,
  ): Promise<{ seconds: number; pending: number[] }> {
    const deadline = Date.now() + timeoutMs;
    let last: string;
    for (;;) {
      const states = await Promise.all(
        this.nodes
          .filter((n) => n.alive)
          .map(async (n) => {
            const r = await runCli('torusctl', ['status', '--data-dir', n.dataDir]);
            const rebalance =
              r.code === 0 ? JSON.parse(r.stdout).replication?.rebalance : undefined;
            const done =
              rebalance &&
              !rebalance.running &&
              rebalance.lastStartedAt &&
              Date.parse(rebalance.lastStartedAt) >= since &&
              rebalance.last?.failed === 0;
            return { index: n.index, done: Boolean(done), rebalance };
          }),
      );
      if (states.every((s) => s.done))
        return {
          seconds: (Date.now() - since) / 1000,
          pending: states.map((s) => s.rebalance.pendingBlocks as number),
        };
      last = states
        .filter((s) => !s.done)
        .map((s) => `node ${s.index}: ${JSON.stringify(s.rebalance)}`)
        .join('\n');
      if (Date.now() > deadline)
        assert.fail(
          `rebalance not finished on every node ${timeoutMs} ms after ${new Date(since).toISOString()}:\n${last}`,
        );
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  }

  /**
   * For failure messages: each node's index, uuid, peer address, and its
   * log lines at warn level or above (the last `perNode` of them).
   */
  diagnostics(perNode = 12): string {
    return this.nodes
      .map((n) => {
        const lines = n
          .output()
          .split('\n')
          .filter((l) => /"level":(40|50|60)/.test(l));
        return `--- node ${n.index} ${n.uuid} ${n.peerAddress} ${n.alive ? 'up' : 'down'}\n${lines
          .slice(-perNode)
          .map((l) => l.slice(0, 600))
          .join('\n')}`;
      })
      .join('\n');
  }

  /** Every node killed, etcd stopped, every directory removed. Safe to call in any state, more than once. */
  async stop(): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.kill('SIGKILL').catch(() => undefined)));
    await this.etcd.stop();
    await Promise.all(this.dirs.map(removeDir));
  }
}
