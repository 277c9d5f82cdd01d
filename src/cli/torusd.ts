/**
 * torusd: a storage node. Opens (or creates) the node's store in --data-dir,
 * serves every volume over NBD by export name on --nbd and on a unix socket,
 * answers torusctl on <data-dir>/torusd.sock, and, with --port, serves
 * /metrics and /healthz over HTTP.
 *
 * With --etcd (or TORUS_ETCD) the node is a cluster member: volume records
 * live in etcd; the node serves its local store to its peers over TBP on the
 * host:port of --peer-address, then registers itself (uuid from the data dir,
 * that address), heartbeats under a lease and watches peers and the ring;
 * --auto-join adds it to the ring. Without, the single-node store in
 * <data-dir>/meta holds the metadata.
 *
 * SIGTERM/SIGINT: leave the cluster, stop accepting, let in-flight requests
 * finish (bounded; the peer server before the store closes), commit
 * everything acknowledged, exit 0. A second signal exits at once.
 */
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { ensureDirectory } from '../common/dirs.js';
import { DirectoryLock } from '../controlplane/metadata/embedded/dir-lock.js';
import type { MetadataStore } from '../controlplane/metadata/store.js';
import { ClusterMember, prepareClusterDataDir } from '../node/cluster-member.js';
import { blockSizeProblem } from '../common/block-size.js';
import { logger, type Logger } from '../common/log.js';
import { formatSize, parseSize } from '../common/size.js';
import { NbdServer } from '../dataplane/nbd/server.js';
import { startAdminApi } from '../node/admin-api.js';
import { startHttpServer } from '../node/http-server.js';
import { NodeMetrics } from '../node/metrics.js';
import { startMemoryReport } from '../common/memory-report.js';
import { nbdMetricsHooks } from '../node/nbd-metrics.js';
import { nbdLimitFlags, nbdLimitOptions } from './nbd-limit-flags.js';
import { DEFAULT_BLOCK_SIZE, StorageNode } from '../node/storage-node.js';
import {
  cacheSizeOf,
  DIRECT_WRITE_MODES,
  STORAGE_NODE_CACHE,
  type DirectWriteMode,
} from '../common/memory-budget.js';
import {
  ArgumentError,
  helpText,
  parseCommand,
  refuseNegative,
  runMain,
  PORT_RANGE,
  SECONDS_RANGE,
  WORKERS_RANGE,
  type Address,
  type CommandSpec,
} from './args.js';
import { openClusterStore } from '../library/cluster-store.js';
import { Closers } from './shutdown.js';
import { peerTlsFlags, peerTlsOf } from './peer-tls-flags.js';
import type { PeerTlsFiles } from '../dataplane/peer/peer-tls.js';
import { checkKeyFileMode, makeDataDirPrivate } from './startup-checks.js';
import { nbdTlsFlags, serverTlsOf } from './tls-flags.js';
import {
  DEFAULT_NBD_ADDR,
  DEFAULT_PEER_ADDRESS,
  dataDirFlag,
  etcdConfigOf,
  etcdFlags,
  keyFileFlag,
  type EtcdConfig,
} from './common-flags.js';

const spec: CommandSpec = {
  usage: 'torusd [flags]',
  summary: 'Run a Torus storage node: serve its volumes over NBD.',
  flags: {
    'data-dir': dataDirFlag,
    size: {
      type: 'size',
      help: 'capacity of the local block store, preallocated at first start (e.g. 20GiB)',
      env: 'TORUS_SIZE',
      min: 1,
    },
    nbd: {
      type: 'address',
      help: 'NBD listen address HOST:PORT',
      default: DEFAULT_NBD_ADDR,
      env: 'TORUS_NBD_ADDR',
    },
    'nbd-unix': {
      type: 'string',
      help: 'NBD unix socket path, for nbd+unix:// (default <data-dir>/nbd.sock; "" to disable)',
    },
    ...nbdLimitFlags,
    ...nbdTlsFlags,
    host: {
      type: 'string',
      help: 'HTTP listen host for /metrics and /healthz',
      default: '127.0.0.1',
    },
    port: {
      type: 'integer',
      help: 'HTTP listen port for /metrics and /healthz (off unless given)',
      ...PORT_RANGE,
    },
    'block-size': {
      type: 'size',
      help: `block size, fixed when the store is first created (default ${formatSize(DEFAULT_BLOCK_SIZE)})`,
      check: blockSizeProblem,
    },
    'cache-size': {
      type: 'size',
      help: 'shared block cache size (default: 25 % of memory, or of the cgroup limit when lower; 64MiB to 4GiB)',
      env: 'TORUS_CACHE_SIZE',
    },
    workers: {
      type: 'integer',
      help: 'data-plane worker threads (default: two per core on a single node, as they also wait on the disk; one per core in a cluster; at most 4)',
      ...WORKERS_RANGE,
    },
    'key-file': keyFileFlag,
    'allow-exposed-key': {
      type: 'boolean',
      help: 'start even when the master key file is readable by group or others (warns)',
    },
    'ensure-volume': {
      type: 'string',
      multiple: true,
      help: 'create volume NAME=SIZE at start if it does not exist (e.g. default=1GiB); may be given more than once',
    },
    ...etcdFlags,
    'peer-address': {
      type: 'string',
      help: 'where other nodes reach this node, http://HOST:PORT or HOST:PORT: registered in etcd and listened on for the peer protocol (needs --etcd)',
      default: DEFAULT_PEER_ADDRESS,
      env: 'TORUS_PEER_ADDRESS',
    },
    ...peerTlsFlags,
    'lock-linger': {
      type: 'integer',
      help: 'cluster: seconds a volume stays open here, holding its write lock, after its last NBD client disconnected (default 5; 0 lets go at once)',
      env: 'TORUS_LOCK_LINGER',
      ...SECONDS_RANGE,
    },
    'rebalance-rate': {
      type: 'size',
      help: 'cluster: bytes per second rebalance may copy to other nodes (default 100MiB)',
      env: 'TORUS_REBALANCE_RATE',
    },
    'rebalance-interval': {
      type: 'integer',
      help: 'cluster: seconds between rebalance and GC runs, besides those on every ring or membership change (default 60; 0 only on changes)',
      ...SECONDS_RANGE,
    },
    'adopt-orphans-after': {
      type: 'integer',
      help: "cluster: seconds a volume whose writer is gone (no node holds its lock) may keep FLUSHed records in this node's holder log before this node takes it over and commits them (default 300; checked at GC runs)",
      env: 'TORUS_ADOPT_ORPHANS_AFTER',
      ...SECONDS_RANGE,
    },
    'intent-log-size': {
      type: 'size',
      help: 'size of the intent log a FLUSH is made durable in, at least 16MiB (default a sixteenth of --size, 64MiB to 256MiB; 0: none, every FLUSH commits a whole version); in a cluster, of the holder log that keeps FLUSHed records (default 64MiB, at least 34MiB)',
      env: 'TORUS_INTENT_LOG_SIZE',
    },
    'direct-writes': {
      type: 'string',
      help: 'write blocks, and read them in the data-plane workers, around the page cache (O_DIRECT): auto (when a cgroup memory limit holds the node, where the page cache is small and each block through it reclaims a page), on or off',
      default: 'auto',
      env: 'TORUS_DIRECT_WRITES',
    },
    'scrub-rate': {
      type: 'size',
      help: 'bytes per second the background scrub re-reads the local store against its checksums (default 16MiB)',
      env: 'TORUS_SCRUB_RATE',
    },
    'scrub-interval': {
      type: 'integer',
      help: 'seconds between scrub passes, the first this long after start (default 86400; 0 never)',
      env: 'TORUS_SCRUB_INTERVAL',
      ...SECONDS_RANGE,
    },
    'fold-patches-after': {
      type: 'integer',
      help: 'seconds a volume goes without a request before the patches its small writes left are rewritten as whole blocks, freeing the space they hold and making reads whole again (default 5; 0 never)',
      env: 'TORUS_FOLD_PATCHES_AFTER',
      ...SECONDS_RANGE,
    },
    'auto-join': {
      type: 'boolean',
      help: 'add this node to the ring at start if it is not a member (needs --etcd)',
    },
    'commit-every-flush': {
      type: 'boolean',
      help: 'cluster: every FLUSH of a volume written here commits a whole version (7-10 ms) instead of going to the replicated intent log, this node and R - 1 peers (under 1 ms; docs/cluster-flush.md); the two mix safely across nodes',
      env: 'TORUS_COMMIT_EVERY_FLUSH',
    },
    'replicated-flush': {
      type: 'boolean',
      help: 'cluster: the default (kept for old command lines); TORUS_REPLICATED_FLUSH=0 is the same as --commit-every-flush',
      env: 'TORUS_REPLICATED_FLUSH',
    },
  },
};

export async function main(argv: string[]): Promise<number> {
  const args = parseCommand(spec, argv);
  if (args.help) {
    process.stdout.write(helpText(spec) + '\n');
    return 0;
  }
  const v = args.values;
  const dataDir = resolve(v['data-dir'] as string);
  const nbdAddress = v.nbd as Address;
  const nbdTls = serverTlsOf(v);
  const ensure = ((v['ensure-volume'] as string[] | undefined) ?? []).map(parseEnsureVolume);
  const etcd = etcdConfigOf(v);
  const peerAddress = parsePeerAddress(v['peer-address'] as string);
  const peerTls = peerTlsOf(v);
  if (v['auto-join'] && !etcd)
    throw new ArgumentError('--auto-join needs --etcd (a single node has no ring)');
  if (!(DIRECT_WRITE_MODES as readonly string[]).includes(v['direct-writes'] as string))
    throw new ArgumentError(
      `--direct-writes: expected ${DIRECT_WRITE_MODES.join(', ')}, got "${String(v['direct-writes'])}"`,
    );
  for (const flag of ['rebalance-rate', 'scrub-rate'] as const) {
    if (v[flag] !== undefined && !((v[flag] as number) > 0))
      throw new ArgumentError(
        `--${flag}: expected a rate above 0 bytes per second (e.g. 16MiB), got ${v[flag]}`,
      );
  }
  const log = logger('torusd');
  // Everything torusd creates (store, metadata, sockets) is the owner's only.
  process.umask(0o077);
  await makeDataDirPrivate(dataDir, log);
  const keyFile = (v['key-file'] as string | undefined) ?? join(dataDir, 'master.key');
  await checkKeyFileMode(resolve(keyFile), Boolean(v['allow-exposed-key']), log);
  const metrics = new NodeMetrics();
  startMemoryReport('main');

  // Closed in reverse order: the cluster store and the directory lock last.
  const closers = new Closers(log);
  const closeAll = () => closers.closeAll();
  let cluster:
    { meta: MetadataStore; uuid: string; clusterId: string; newNode: boolean } | undefined;
  let node: StorageNode;
  try {
    if (etcd) cluster = await openCluster(etcd, dataDir, closers);
    node = await StorageNode.open({
      dataDir,
      capacityBytes: v.size as number | undefined,
      blockSize: v['block-size'] as number | undefined,
      cacheBytes: cacheSizeOf(v['cache-size'] as number | undefined, STORAGE_NODE_CACHE, log),
      workers: (v.workers as number | undefined) || undefined,
      keyFile: v['key-file'] as string | undefined,
      metrics,
      log: logger('node'),
      meta: cluster?.meta,
      cluster: cluster ? { uuid: cluster.uuid, clusterId: cluster.clusterId, peerTls } : undefined,
      rebalanceRate: v['rebalance-rate'] as number | undefined,
      rebalanceIntervalMs:
        v['rebalance-interval'] === undefined
          ? undefined
          : (v['rebalance-interval'] as number) * 1000,
      lockLingerMs:
        v['lock-linger'] === undefined ? undefined : (v['lock-linger'] as number) * 1000,
      orphanAdoptAfterMs:
        v['adopt-orphans-after'] === undefined
          ? undefined
          : (v['adopt-orphans-after'] as number) * 1000,
      scrubRate: v['scrub-rate'] as number | undefined,
      intentLogBytes: v['intent-log-size'] as number | undefined,
      directWrites: v['direct-writes'] as DirectWriteMode,
      replicatedFlush: v['replicated-flush'] !== false && v['commit-every-flush'] !== true,
      scrubIntervalMs:
        v['scrub-interval'] === undefined ? undefined : (v['scrub-interval'] as number) * 1000,
      foldQuietMs:
        v['fold-patches-after'] === undefined
          ? undefined
          : (v['fold-patches-after'] as number) * 1000,
    });
  } catch (err) {
    await closeAll();
    throw err;
  }
  closers.push('storage node (commit, close stores)', () => node.close());
  try {
    const existing = new Set((await node.listVolumes()).map((vol) => vol.name));
    for (const { name, size } of ensure)
      if (!existing.has(name)) await node.createVolume(name, size);
    const nbd = new NbdServer(node, {
      log: logger('nbd'),
      metrics: nbdMetricsHooks(metrics),
      ...nbdLimitOptions(v),
      tls: nbdTls,
    });
    closers.push('NBD server (drain)', () => nbd.close({ drainMs: 3000 }));
    const { bound, tcpUnavailable } = await listenNbdTcp(
      nbd,
      nbdAddress,
      args.defaulted?.has('nbd') ?? false,
      log,
    );
    const unixPath =
      v['nbd-unix'] === undefined ? join(dataDir, 'nbd.sock') : (v['nbd-unix'] as string);
    if (unixPath) await nbd.listenUnix(unixPath);
    node.nbdListen = {
      ...(bound ? { tcp: `${formatHost(bound.address)}:${bound.port}` } : { tcpUnavailable }),
      ...(unixPath ? { unix: unixPath } : {}),
    };
    const admin = await startAdminApi(node, join(dataDir, 'torusd.sock'));
    closers.push('admin API', () => closeServer(admin));
    let http: Server | undefined;
    if (v.port !== undefined) {
      http = await startHttpServer(v.host as string, v.port as number, metrics, () => ({
        ok: true,
        detail: node.status(),
      }));
      closers.push('HTTP server', () => closeServer(http!));
    }
    let member: ClusterMember | undefined;
    let peerListen: string | undefined;
    if (cluster && etcd) {
      // Listening before registering: a peer that sees this node in etcd can reach it.
      const peers = await servePeers(node, peerAddress, { ...cluster, peerTls });
      closers.push('peer service', () => node.stopServingPeers()); // after leaving the cluster, before the store closes
      peerListen = `${formatHost(peers.address.address)}:${peers.address.port}`;
      member = await ClusterMember.join({
        meta: cluster.meta,
        uuid: cluster.uuid,
        address: peerAddress.url,
        usage: () => {
          const { capacity, used } = node.status();
          return { capacity, used };
        },
        rates: () => node.clusterRates(),
        version: packageVersion(),
        autoJoin: Boolean(v['auto-join']),
        log: logger('membership'),
      });
      const joined = member;
      node.followMembership(joined.peers);
      closers.push('cluster membership (leave)', () => joined.stop()); // first to run: the node leaves the cluster before it drains
      node.clusterStatus = () => ({ etcd: etcd.endpoints, peerListen, ...joined.status() });
    }
    const volumes = await node.list();
    log.info(
      {
        nbd: node.nbdListen.tcp,
        unix: unixPath || undefined,
        http: v.port !== undefined ? `${v.host}:${v.port}` : undefined,
        peer: peerListen,
        volumes: volumes.map((e) => e.name),
      },
      'torusd serving',
    );
    const url = (name: string) =>
      node.nbdListen?.tcp
        ? `nbd://${node.nbdListen.tcp}/${name}`
        : `nbd+unix:///${name}?socket=${unixPath}`;
    if (node.nbdListen.tcp || unixPath)
      process.stdout.write(`torusd listening on ${url('')} (data in ${dataDir})\n`);
    if (tcpUnavailable) process.stdout.write(`NBD not served on TCP: ${tcpUnavailable}\n`);
    const unavailable = Object.entries(node.status().unavailable);
    for (const [name, why] of unavailable)
      process.stdout.write(
        `NOT serving volume ${name}: ${why}${etcd ? '' : ` (if damaged: stop torusd, then torusctl fsck ${dataDir})`}\n`,
      );
    if (node.nbdListen.tcp || unixPath)
      for (const { name } of volumes) process.stdout.write(`serving ${url(name)}\n`);
    if (volumes.length > 0) {
      const example = url(volumes[0].name);
      process.stdout.write(`try: nbdinfo ${bound ? example : `'${example}'`}\n`);
    } else if (unavailable.length === 0)
      process.stdout.write(
        `no volumes yet: torusctl ${etcd ? `-C ${etcd.endpoints}` : `--data-dir ${dataDir}`} volume create-block NAME SIZE\n`,
      );
    if (member && etcd) {
      const ring = member.ring();
      process.stdout.write(
        `peer protocol (TBP) listening on ${peerListen} for cluster ${cluster!.clusterId}\n`,
      );
      process.stdout.write(
        `node ${member.uuid}${cluster!.newNode ? ' (new)' : ''} registered as ${peerAddress.url} in etcd ${etcd.endpoints}; ` +
          (member.memberStatus === 'OK'
            ? `a member of ring version ${ring?.version}\n`
            : `not in the ring (version ${ring?.version}) yet: torusctl -C ${etcd.endpoints} peer add ${member.uuid}\n`),
      );
    }
  } catch (err) {
    await closeAll();
    throw err;
  }

  await closers.untilSignalled();
  log.info('stopped');
  return 0;
}

/**
 * Connect to the cluster, lock the data directory (the same lock the
 * single-node store takes, <data-dir>/meta/LOCK, so no two processes of
 * either kind share a directory) and prepare it for membership.
 */
async function openCluster(etcd: EtcdConfig, dataDir: string, closers: Closers) {
  // The directory first: an unusable one fails at once, before connecting to etcd.
  const lockDir = join(dataDir, 'meta');
  await ensureDirectory(dataDir, 'data directory');
  await ensureDirectory(lockDir, 'metadata directory');
  const meta = await openClusterStore(etcd);
  closers.push('metadata store', () => meta.close());
  const lock = await DirectoryLock.acquire(lockDir, logger('torusd'));
  closers.push('data dir lock', () => lock.release());
  const prepared = await prepareClusterDataDir(meta, dataDir, etcd.endpoints);
  return { meta, ...prepared };
}

interface PeerAddress {
  /** http(s)://host:port, as registered in etcd and shown by list-peers. */
  url: string;
  /** Where the peer protocol listens: the same host (without IPv6 brackets) and port. */
  host: string;
  port: number;
}

/** A bare HOST:PORT (a name, an IPv4 address, or [IPv6]), which means http://HOST:PORT. */
const HOST_PORT = /^(\[[0-9A-Fa-f:.]+\]|[^\s:/?#@[\]]+):(\d{1,5})$/;

/**
 * --peer-address, as peers will dial it: http(s)://host[:port] or HOST:PORT.
 * Throws ArgumentError (exit 2) naming the flag otherwise. The scheme only
 * says how it is written: TBP is plain TCP on that host and port.
 */
function parsePeerAddress(text: string): PeerAddress {
  const spelled = !text.includes('://') && HOST_PORT.test(text) ? `http://${text}` : text;
  let url: URL | undefined;
  try {
    url = new URL(spelled);
  } catch {
    url = undefined;
  }
  if (
    !url ||
    (url.protocol !== 'http:' && url.protocol !== 'https:') ||
    !url.hostname ||
    (url.pathname !== '/' && url.pathname !== '') ||
    url.search ||
    url.hash ||
    url.username
  ) {
    throw new ArgumentError(
      `--peer-address: expected a URL like http://10.0.0.5:40000 or HOST:PORT, got "${text}"`,
    );
  }
  const port = url.port !== '' ? Number(url.port) : url.protocol === 'https:' ? 443 : 80;
  if (port === 0)
    throw new ArgumentError(
      `--peer-address: port 0 cannot be dialled by peers; give the port to listen on, got "${text}"`,
    );
  return { url: url.origin, host: url.hostname.replace(/^\[(.*)\]$/, '$1'), port };
}

/**
 * Start serving the node's store to its peers on --peer-address; a listen
 * failure becomes an error naming the flag (exit 1).
 */
async function servePeers(
  node: StorageNode,
  address: PeerAddress,
  cluster: { uuid: string; clusterId: string; peerTls?: PeerTlsFiles },
) {
  try {
    return await node.servePeers({
      host: address.host,
      port: address.port,
      clusterId: cluster.clusterId,
      nodeId: cluster.uuid,
      log: logger('peer'),
      tls: cluster.peerTls,
    });
  } catch (err) {
    throw new Error(
      `--peer-address ${address.url}: cannot listen on ${formatHost(address.host)}:${address.port} for the peer protocol: ${whyListenFailed(err)}`,
      { cause: err },
    );
  }
}

/**
 * Listen for NBD on TCP. The DEFAULT address already taken is not fatal:
 * the original guide runs several storage nodes on one host without --nbd,
 * so the second one serves NBD on its unix socket only, and says so (log,
 * stdout, status and /healthz: nbd.tcpUnavailable). An address given with
 * --nbd or TORUS_NBD_ADDR that cannot be had is an error (exit 1) naming it.
 */
async function listenNbdTcp(
  nbd: NbdServer,
  address: Address,
  defaulted: boolean,
  log: Logger,
): Promise<{ bound?: AddressInfo; tcpUnavailable?: string }> {
  const where = `${formatHost(address.host)}:${address.port}`;
  try {
    return { bound: await nbd.listenTcp(address.host, address.port) };
  } catch (err) {
    if (defaulted && (err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      const tcpUnavailable = `the default ${where} is in use (another torusd on this host?); give --nbd HOST:PORT to serve NBD on TCP too`;
      log.warn({ nbd: where }, `NBD not served on TCP: ${tcpUnavailable}`);
      return { tcpUnavailable };
    }
    throw new Error(`--nbd ${where}: cannot listen for NBD: ${whyListenFailed(err)}`, {
      cause: err,
    });
  }
}

/** Why listen() failed, for a person reading the message. */
function whyListenFailed(err: unknown): string {
  switch ((err as NodeJS.ErrnoException).code) {
    case 'EADDRINUSE':
      return 'the port is already in use (another torusd or process listens there)';
    case 'EADDRNOTAVAIL':
      return "that address is not one of this host's";
    case 'EACCES':
      return 'permission denied (ports below 1024 need privileges)';
    default:
      return (err as Error).message;
  }
}

function formatHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

function packageVersion(): string {
  try {
    // dist/src/cli/torusd.js → the project's package.json
    return (
      JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as {
        version: string;
      }
    ).version;
  } catch {
    return 'unknown';
  }
}

function parseEnsureVolume(text: string): { name: string; size: number } {
  const at = text.indexOf('=');
  if (at <= 0)
    throw new ArgumentError(
      `--ensure-volume: expected NAME=SIZE (e.g. default=1GiB), got "${text}"`,
    );
  refuseNegative('--ensure-volume', text.slice(at + 1));
  try {
    return { name: text.slice(0, at), size: parseSize(text.slice(at + 1)) };
  } catch {
    throw new ArgumentError(`--ensure-volume: "${text.slice(at + 1)}" is not a size (e.g. 1GiB)`);
  }
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections?.();
  });
}

runMain('torusd', () => main(process.argv.slice(2)));
