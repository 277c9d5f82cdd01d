/**
 * torusblk nbdserve: serve every volume of a cluster over NBD from a machine
 * that stores nothing itself — the original's client-node mode, a store-less
 * node (src/library/client-node.ts, which the library's handles use too)
 * behind an NBD server. It takes a volume's write lock when an NBD client
 * opens it and places every copy on storage nodes; its scratch store
 * (default 256 MiB in the system temp dir, removed at exit) holds the map
 * pages it writes while committing.
 */
import { tmpdir } from 'node:os';
import { logger } from '../common/log.js';
import { formatSize } from '../common/size.js';
import { cacheSizeOf, CLIENT_CACHE } from '../common/memory-budget.js';
import { NbdServer } from '../dataplane/nbd/server.js';
import { startHttpServer } from '../node/http-server.js';
import { NodeMetrics } from '../node/metrics.js';
import { nbdMetricsHooks } from '../node/nbd-metrics.js';
import { nbdLimitFlags, nbdLimitOptions } from './nbd-limit-flags.js';
import { openClientNode } from '../library/client-node.js';
import { openClusterStore } from '../library/cluster-store.js';
import { PORT_RANGE, SECONDS_RANGE, WORKERS_RANGE } from './args.js';
import type { Address, FlagSpec, Parsed } from './args.js';
import { clusterEtcdFlags, DEFAULT_NBD_ADDR, etcdConfigOf, keyFileFlag } from './common-flags.js';
import { Closers } from './shutdown.js';
import { peerTlsFlags, peerTlsOf } from './peer-tls-flags.js';
import { nbdTlsFlags, serverTlsOf } from './tls-flags.js';

export const nbdserveFlags: Record<string, FlagSpec> = {
  listen: {
    type: 'address',
    short: 'l',
    help: 'NBD listen address HOST:PORT',
    default: DEFAULT_NBD_ADDR,
    env: 'TORUS_NBD_ADDR',
  },
  unix: {
    type: 'string',
    help: 'also serve NBD on this unix socket (nbd+unix://; torusblk nbd uses one)',
  },
  ...nbdLimitFlags,
  'cache-size': {
    type: 'size',
    help: 'block cache size (default: 1/16 of memory, or of the cgroup limit when lower; 64MiB to 256MiB)',
  },
  'scratch-size': {
    type: 'size',
    help: 'local scratch store for map pages being committed',
    min: 1,
    default: '256MiB',
  },
  'scratch-dir': {
    type: 'string',
    help: 'where the scratch store goes (removed at exit)',
    default: tmpdir(),
  },
  workers: {
    type: 'integer',
    help: 'data-plane worker threads (default: one per core, at most 4)',
    ...WORKERS_RANGE,
  },
  'key-file': keyFileFlag,
  'lock-linger': {
    type: 'integer',
    help: 'seconds a volume stays open, holding its write lock, after its last client disconnected',
    default: '5',
    ...SECONDS_RANGE,
  },
  port: {
    type: 'integer',
    help: 'HTTP port for /metrics and /healthz (off unless given)',
    ...PORT_RANGE,
  },
  host: { type: 'string', help: 'HTTP listen host', default: '127.0.0.1' },
  ...nbdTlsFlags,
  ...clusterEtcdFlags,
  ...peerTlsFlags,
};

export interface ServingClient {
  nbd: NbdServer;
  /** Where NBD listens (TCP). */
  address: { host: string; port: number };
  closers: Closers;
}

/** Start serving; the caller waits for a signal and runs closers.closeAll(). */
export async function startNbdServe(
  args: Parsed,
  options: { unixPath?: string } = {},
): Promise<ServingClient> {
  const v = args.values;
  const etcd = etcdConfigOf(v)!;
  const peerTls = peerTlsOf(v);
  const tls = serverTlsOf(v);
  const log = logger('torusblk');
  const closers = new Closers(log);
  try {
    const meta = await openClusterStore(etcd);
    closers.push('metadata store', () => meta.close());
    const metrics = new NodeMetrics();
    const client = await openClientNode({
      meta,
      endpoints: etcd.endpoints,
      label: 'torusblk',
      scratchDir: v['scratch-dir'] as string,
      scratchBytes: v['scratch-size'] as number,
      cacheBytes: cacheSizeOf(v['cache-size'] as number | undefined, CLIENT_CACHE, log),
      workers: (v.workers as number | undefined) || undefined,
      keyFile: v['key-file'] as string | undefined,
      metrics,
      log: logger('node'),
      lockLingerMs: (v['lock-linger'] as number) * 1000,
      peerTls,
    });
    closers.push('client node (commit, release locks)', () => client.close());
    const { node, settings, uuid } = client;

    const nbd = new NbdServer(node, {
      log: logger('nbd'),
      metrics: nbdMetricsHooks(metrics),
      ...nbdLimitOptions(v),
      tls,
    });
    closers.push('NBD server (drain)', () => nbd.close({ drainMs: 3000 }));
    const listen = v.listen as Address;
    const bound = await nbd.listenTcp(listen.host, listen.port);
    const unixPath = options.unixPath ?? (v.unix as string | undefined);
    if (unixPath) await nbd.listenUnix(unixPath);
    if (v.port !== undefined) {
      const http = await startHttpServer(v.host as string, v.port as number, metrics, () => ({
        ok: true,
        detail: node.status(),
      }));
      closers.push(
        'HTTP server',
        () =>
          new Promise<void>((resolve) => {
            http.close(() => resolve());
            http.closeAllConnections?.();
          }),
      );
    }
    const host = bound.address.includes(':') ? `[${bound.address}]` : bound.address;
    const volumes = await node.list();
    log.info(
      {
        nbd: `${host}:${bound.port}`,
        unix: unixPath,
        etcd: etcd.endpoints,
        client: uuid,
        scratch: formatSize(v['scratch-size'] as number),
        volumes: volumes.map((e) => e.name),
      },
      'torusblk serving the cluster over NBD',
    );
    process.stdout.write(
      `torusblk serving the volumes of cluster ${settings.createdAt} (etcd ${etcd.endpoints}) on nbd://${host}:${bound.port}/VOLUME\n`,
    );
    for (const { name } of volumes)
      process.stdout.write(`serving nbd://${host}:${bound.port}/${name}\n`);
    return { nbd, address: { host: bound.address, port: bound.port }, closers };
  } catch (err) {
    await closers.closeAll();
    throw err;
  }
}
