/**
 * The NBD servers a benchmark compares, each started on a free loopback port
 * in its own temp dir, with one export of the same size, and stopped (every
 * process of it) by stop() or, failing that, by the cleanup registry.
 *
 * torus       our torusd serving volume "bench" from a fresh data dir
 * nbd-server  Debian's reference server exporting a preallocated file
 * nbdkit      nbdkit's memory plugin: a RAM disk, the ceiling for the protocol path
 * nbdkit-file nbdkit's file plugin over a preallocated file: a second C server
 *             on the same footing as nbd-server (the one to use with --memory-budget,
 *             where a RAM disk cannot live within the limit)
 * torus-cluster  etcd and three torusd nodes on loopback, replication 2, the
 *             volume served (and written) through node 1: the cluster mode
 * torus-cluster-cold  the same with every node's cache at CLUSTER_COLD_CACHE,
 *             far below the region: reads really go to the stores and the
 *             replicas, writes are spilled and replicated as they come
 * torus-cluster-degraded  torus-cluster-cold with node 2 killed (SIGKILL)
 *             once the region is prefilled: only read jobs run on it, and
 *             its figures are reported against torus-cluster-cold's
 * torus-client  `torusblk nbdserve` in front of three storage nodes
 *             (replication 2, default caches): fio talks to the store-less
 *             client, so every block crosses the client path
 *
 * With a memory budget (--memory-budget) each server, and each node and the
 * nbdserve of a cluster mode (not etcd), starts inside a memory cgroup of that
 * size (memory-cgroup.ts), and torus's --cache-size is half of it.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { onCleanup } from './cleanup.js';
import { LOOPBACK, freePort, isAlive, waitForListener } from './processes.js';
import {
  STARTUP_TIMEOUT_MS,
  launch,
  runToCompletion,
  signalTree,
  stopTree,
} from './server-launch.js';
import { createMemoryCgroup, type MemoryCgroup, type MemoryController } from './memory-cgroup.js';

export const PROJECT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export const SERVER_NAMES = [
  'torus',
  'nbd-server',
  'nbdkit',
  'nbdkit-file',
  'torus-cluster',
  'torus-cluster-cold',
  'torus-cluster-degraded',
  'torus-client',
] as const;
export type ServerName = (typeof SERVER_NAMES)[number];
/** What `npm run bench` compares unless told otherwise: the single node against the C peers. */
export const DEFAULT_SERVERS: readonly ServerName[] = ['torus', 'nbd-server', 'nbdkit'];

/** Executables each server needs, with the Debian package that provides them. */
export const SERVER_TOOLS: Record<ServerName, Record<string, string>> = {
  torus: {},
  'torus-cluster': { etcd: 'etcd-server' },
  'torus-cluster-cold': { etcd: 'etcd-server' },
  'torus-cluster-degraded': { etcd: 'etcd-server' },
  'torus-client': { etcd: 'etcd-server' },
  'nbd-server': { 'nbd-server': 'nbd-server', fallocate: 'util-linux' },
  nbdkit: { nbdkit: 'nbdkit' },
  'nbdkit-file': { nbdkit: 'nbdkit', fallocate: 'util-linux' },
};

export interface ServerOptions {
  /** A fresh directory the server may fill; removed by the caller. */
  workDir: string;
  /** Size of the export every server offers. */
  exportBytes: number;
  /** torus only: create the volume encrypted. */
  encrypt: boolean;
  /** torus only: store block size (e.g. "64KiB"), passed through to torusctl init. */
  blockSize?: string;
  /** Same-memory mode: run every server process in a memory cgroup of budgetBytes. */
  memory?: { controller: MemoryController; budgetBytes: number };
}

export interface BenchServer {
  name: ServerName;
  uri: string;
  /** The process whose tree is measured. */
  pid: number;
  /** How it was started, for the report. */
  commandLine: string;
  /** Runs once the region is prefilled, before any measured run; says what it did. */
  afterPrefill?(): Promise<string>;
  /** Only read-only jobs run on it (a degraded cluster is measured for reads). */
  readJobsOnly?: boolean;
  /** Same-memory mode: the cgroups it runs in (one per node of a cluster). */
  cgroups?: MemoryCgroup[];
  /** torus: the serving process's /metrics, scraped around each run (server-counters.ts). */
  metricsUrl?: string;
  stop(): Promise<void>;
}

/** The healthy server a degraded one is reported against. */
export const BASELINE: Partial<Record<ServerName, ServerName>> = {
  'torus-cluster-degraded': 'torus-cluster-cold',
};

/** Every node's --cache-size in the cold cluster modes: an eighth of the default 512 MiB region. */
export const CLUSTER_COLD_CACHE = '64MiB';

/**
 * torus's --cache-size in same-memory mode: half the budget. The other half
 * is for what the kernel charges the cgroup besides the cache: the Node
 * heaps of the main thread and the pool workers (about 100 MiB at rest) and
 * the page cache of the store files, which every pread and write goes through.
 */
export function torusCacheBytes(budgetBytes: number): number {
  return Math.floor(budgetBytes / 2 / 2 ** 20) * 2 ** 20;
}

/**
 * torusd's --size: four times the export, as the default bench has always
 * run (4 GiB for 1 GiB). Old versions hold space until GC; with twice the
 * export a 2 GiB region ran out after about 4 GiB of writes (2026-12-05:
 * reads failed with ENOSPC while spilling dirty blocks to make room).
 */
export function torusStoreBytes(exportBytes: number): number {
  return 4 * exportBytes;
}

/** A fresh memory cgroup for one server process in same-memory mode, else undefined. */
function cgroupFor(options: ServerOptions, name: string): MemoryCgroup | undefined {
  return (
    options.memory &&
    createMemoryCgroup(options.memory.controller, name, options.memory.budgetBytes)
  );
}

export const TORUS_VOLUME = 'bench';

/**
 * Create the bench volume in a fresh data dir and return the torusd command
 * line serving it. Kept apart from starting it so the profiler can run the
 * same command under clinic; adjust here when the CLI changes.
 */
export function prepareTorus(
  options: ServerOptions,
  port: number,
  metricsPort?: number,
): { argv: string[]; uri: string } {
  const dataDir = join(options.workDir, 'torus-data');
  mkdirSync(dataDir, { recursive: true });
  const bin = (name: string) => [
    process.execPath,
    join(PROJECT, 'bin', name),
    '--data-dir',
    dataDir,
  ];
  if (options.blockSize)
    runToCompletion(
      [...bin('torusctl'), 'init', '--block-size', options.blockSize],
      'torusctl init',
    );
  const create = [
    ...bin('torusctl'),
    'volume',
    'create-block',
    TORUS_VOLUME,
    String(options.exportBytes),
  ];
  runToCompletion(
    options.encrypt ? [...create, '--encrypt'] : create,
    'torusctl volume create-block',
  );
  return {
    argv: [
      ...bin('torusd'),
      '--size',
      String(torusStoreBytes(options.exportBytes)),
      '--nbd',
      `${LOOPBACK}:${port}`,
      ...(metricsPort ? ['--port', String(metricsPort)] : []),
      ...(options.memory
        ? ['--cache-size', String(torusCacheBytes(options.memory.budgetBytes))]
        : []),
    ],
    uri: `nbd://${LOOPBACK}:${port}/${TORUS_VOLUME}`,
  };
}

async function startTorus(options: ServerOptions): Promise<BenchServer> {
  const [port, metricsPort] = await Promise.all([freePort(), freePort()]);
  const prepared = prepareTorus(options, port, metricsPort);
  const { uri } = prepared;
  // The cluster modes' profiling knob (TORUS_BENCH_NODE_FLAGS, see startCluster) for the single node too.
  const nodeFlags = (process.env.TORUS_BENCH_NODE_FLAGS ?? '').split(' ').filter(Boolean);
  const argv = [prepared.argv[0], ...nodeFlags, ...prepared.argv.slice(1)];
  const cgroup = cgroupFor(options, 'torus');
  const server = await launch(
    'torus',
    cgroup ? cgroup.wrap(argv) : argv,
    port,
    uri,
    options.workDir,
    cgroup ? [cgroup] : [],
  );
  return { ...server, metricsUrl: `http://${LOOPBACK}:${metricsPort}/metrics` };
}

/**
 * nbd-server always daemonizes (its -d "do not fork" mode serves a single
 * connection and drops fio's), so it runs as a daemon with a pid file and a
 * config file of its own, which also keeps it off /etc/nbd-server/config.
 */
async function startNbdServer(options: ServerOptions): Promise<BenchServer> {
  const port = await freePort();
  const image = preallocatedImage(options, 'nbd-server');
  const config = join(options.workDir, 'nbd-server.conf');
  const pidFile = join(options.workDir, 'nbd-server.pid');
  writeFileSync(
    config,
    [
      '[generic]',
      `port = ${port}`,
      `listenaddr = ${LOOPBACK}`,
      '',
      `[${TORUS_VOLUME}]`,
      `exportname = ${image}`,
      // Advertise FLUSH (off by default in nbd-server): without it the
      // durable-write jobs' fsyncs fail, as they should on a server that
      // cannot make writes durable. It answers FLUSH with fsync of the file.
      'flush = true',
      '',
    ].join('\n'),
  );
  const argv = ['nbd-server', '-C', config, '-p', pidFile];
  // The daemon it forks, and each per-connection child, stay in the cgroup.
  const cgroup = cgroupFor(options, 'nbd-server');
  runToCompletion(cgroup ? cgroup.wrap(argv) : argv, 'nbd-server');
  let pid = 0;
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  while (!pid) {
    try {
      pid = Number(readFileSync(pidFile, 'utf8').trim());
    } catch {
      if (Date.now() > deadline) throw new Error(`nbd-server wrote no pid file ${pidFile}`);
      await sleep(50);
    }
  }
  const daemon = pid;
  const forget = onCleanup(() => signalTree(daemon, 'SIGKILL'));
  try {
    await waitForListener(port, 'nbd-server', STARTUP_TIMEOUT_MS, () =>
      isAlive(daemon) ? undefined : 'the daemon exited (see syslog)',
    );
  } catch (err) {
    forget();
    cgroup?.remove();
    throw err;
  }
  return {
    name: 'nbd-server',
    uri: `nbd://${LOOPBACK}:${port}/${TORUS_VOLUME}`,
    pid: daemon,
    commandLine: `${argv.join(' ')}   # config: [generic] port, listenaddr; [${TORUS_VOLUME}] exportname = preallocated file, flush = true`,
    cgroups: cgroup ? [cgroup] : [],
    async stop() {
      await stopTree(daemon);
      forget();
      cgroup?.remove();
    },
  };
}

/** The export file of a C server, preallocated so writes measure the server, not the filesystem growing a sparse file. */
function preallocatedImage(options: ServerOptions, server: string): string {
  const image = join(options.workDir, 'export.img');
  runToCompletion(
    ['fallocate', '-l', String(options.exportBytes), image],
    `preallocating the ${server} export`,
  );
  return image;
}

/** nbdkit's file plugin: reads and writes with pread/pwrite, FLUSH as fdatasync, like nbd-server. */
function startNbdkitFile(options: ServerOptions): Promise<BenchServer> {
  const image = preallocatedImage(options, 'nbdkit-file');
  return startNbdkitPlugin(options, 'nbdkit-file', ['file', `file=${image}`]);
}

// A RAM disk cannot honour a memory budget smaller than its export: use nbdkit-file there.
function startNbdkit(options: ServerOptions): Promise<BenchServer> {
  return startNbdkitPlugin(options, 'nbdkit', ['memory', `size=${options.exportBytes}`]);
}

/** nbdkit on a free loopback port with `plugin` (its name and parameters), in its memory cgroup if any. */
async function startNbdkitPlugin(
  options: ServerOptions,
  name: 'nbdkit' | 'nbdkit-file',
  plugin: string[],
): Promise<BenchServer> {
  const port = await freePort();
  const argv = [
    'nbdkit',
    '--foreground',
    '--exit-with-parent',
    '--ipaddr',
    LOOPBACK,
    '--port',
    String(port),
    ...plugin,
  ];
  const cgroup = cgroupFor(options, name);
  return launch(
    name,
    cgroup ? cgroup.wrap(argv) : argv,
    port,
    `nbd://${LOOPBACK}:${port}/`,
    options.workDir,
    cgroup ? [cgroup] : [],
  );
}

/**
 * The cluster in the issue's shape: etcd plus three storage nodes, ring
 * replication 2, all children of one shell so the measured process tree
 * (CPU, RSS) is the whole cluster. fio talks to node 1, which writes the
 * volume; each block goes to the two nodes the ring names for it.
 * cacheSize: every node's --cache-size (default: torusd's; in same-memory
 * mode half the budget). killNode2: after the prefill, SIGKILL node 2 and
 * wait until the cluster lists it DOWN. client: fio talks to `torusblk
 * nbdserve` instead, which holds the volume and stores nothing itself.
 */
async function startTorusCluster(
  name: ServerName,
  options: ServerOptions,
  variant: { cacheSize?: string; killNode2?: boolean; client?: boolean } = {},
): Promise<BenchServer> {
  const [etcdClient, etcdPeer, nbd, metricsPort, ...peerPorts] = await Promise.all(
    Array.from({ length: 7 }, () => freePort()),
  );
  const endpoint = `${LOOPBACK}:${etcdClient}`;
  const node = (bin: string) =>
    `${JSON.stringify(process.execPath)} ${JSON.stringify(join(PROJECT, 'bin', bin))}`;
  // Node flags for the long-lived processes only (the nodes, nbdserve), e.g. to profile them:
  // TORUS_BENCH_NODE_FLAGS='--cpu-prof --cpu-prof-dir=DIR' (Node refuses --cpu-prof in NODE_OPTIONS).
  const nodeFlags = process.env.TORUS_BENCH_NODE_FLAGS ?? '';
  const daemon = (bin: string) =>
    `${JSON.stringify(process.execPath)} ${nodeFlags} ${JSON.stringify(join(PROJECT, 'bin', bin))}`;
  const dir = options.workDir;
  const q = JSON.stringify;
  const create = `${node('torusctl')} -C ${endpoint} volume create-block ${TORUS_VOLUME} ${options.exportBytes}${options.encrypt ? ' --encrypt --key-file ' + q(join(dir, 'master.key')) : ''}`;
  const cacheSize = options.memory
    ? String(torusCacheBytes(options.memory.budgetBytes))
    : variant.cacheSize;
  const cacheFlag = cacheSize ? ` --cache-size ${cacheSize}` : '';
  const keyFlag = options.encrypt ? ' --key-file ' + q(join(dir, 'master.key')) : '';
  const cgroups: MemoryCgroup[] = [];
  // In same-memory mode each process starts in its own cgroup before it allocates anything.
  const inCgroup = (cgroupName: string, command: string) => {
    const cgroup = cgroupFor(options, `${name}-${cgroupName}`);
    if (!cgroup) return command;
    cgroups.push(cgroup);
    return cgroup.wrapShell(command);
  };
  // Whoever serves fio keeps the volume (its write lock and cache) open
  // between fio's connections, as it would for a client attached for days:
  // with the default 5 s linger, whether a run found the cache warm depended
  // on how long the other servers' runs took. It still commits each run's
  // writes when the connection closes, while the bench waits for quiet
  // (run.ts settle).
  const linger = ' --lock-linger 3600';
  const torusd = (i: number, nbdPort: string) =>
    inCgroup(
      `node${i}`,
      `${daemon('torusd')} --etcd ${endpoint} --data-dir ${q(join(dir, `node${i}`))} --size ${torusStoreBytes(options.exportBytes)} --nbd ${nbdPort}${i === 1 && !variant.client ? ` --port ${metricsPort}${linger}` : ''} ` +
        `--peer-address ${LOOPBACK}:${peerPorts[i - 1]} --auto-join${cacheFlag}${keyFlag}`,
    ) + ` > ${q(join(dir, `node${i}.log`))} 2>&1 & echo $! > ${q(join(dir, `node${i}.pid`))}`;
  const waitForMembers = (count: number) =>
    `for i in $(seq 1 100); do [ "$(${node('torusctl')} -C ${endpoint} list-peers -o json | grep -o '"member": *"OK"' | wc -l)" -ge ${count} ] && break; sleep 0.2; done`;
  // The client's cache is its own default unless the budget sets it.
  const nbdserve = () =>
    inCgroup(
      'nbdserve',
      `${daemon('torusblk')} nbdserve -C ${endpoint} --listen ${LOOPBACK}:${nbd} --port ${metricsPort} --scratch-dir ${q(dir)}${linger}` +
        `${options.memory ? cacheFlag : ''}${keyFlag}`,
    ) + ` > ${q(join(dir, 'nbdserve.log'))} 2>&1 &`;
  const script = [
    'set -e',
    `etcd --name bench --data-dir ${q(join(dir, 'etcd'))} --listen-client-urls http://${endpoint} --advertise-client-urls http://${endpoint} ` +
      `--listen-peer-urls http://${LOOPBACK}:${etcdPeer} --initial-advertise-peer-urls http://${LOOPBACK}:${etcdPeer} ` +
      `--initial-cluster bench=http://${LOOPBACK}:${etcdPeer} > ${q(join(dir, 'etcd.log'))} 2>&1 &`,
    `for i in $(seq 1 100); do ${node('torusctl')} -C ${endpoint} init --replication 2${options.blockSize ? ` --block-size ${options.blockSize}` : ''} > /dev/null 2>&1 && break; sleep 0.2; done`,
    // Storage-only nodes first and before the volume exists: they only store
    // copies. Then node 1 (or the client) loads the volume, takes its write lock and serves it.
    torusd(2, `${LOOPBACK}:${await freePort()}`),
    torusd(3, `${LOOPBACK}:${await freePort()}`),
    ...(variant.client
      ? [torusd(1, `${LOOPBACK}:${await freePort()}`), waitForMembers(3), create, nbdserve()]
      : [waitForMembers(2), create, torusd(1, `${LOOPBACK}:${nbd}`)]),
    'wait',
  ].join('\n');
  let launched: BenchServer;
  try {
    launched = await launch(
      name,
      ['bash', '-c', script],
      nbd,
      `nbd://${LOOPBACK}:${nbd}/${TORUS_VOLUME}`,
      options.workDir,
      cgroups,
    );
  } catch (err) {
    for (const cgroup of cgroups) cgroup.remove();
    throw err;
  }
  // The serving process's: node 1, the writer, or in client mode nbdserve (its cache, its commits).
  const server = { ...launched, metricsUrl: `http://${LOOPBACK}:${metricsPort}/metrics` };
  if (!variant.killNode2) return server;
  return {
    ...server,
    readJobsOnly: true,
    async afterPrefill() {
      const pid = Number(readFileSync(join(dir, 'node2.pid'), 'utf8').trim());
      process.kill(pid, 'SIGKILL');
      const started = Date.now();
      // Its lease lapses within about 5 s; until then it is a live node that refuses connections.
      for (;;) {
        const r = spawnSync(
          process.execPath,
          [join(PROJECT, 'bin', 'torusctl'), '-C', endpoint, 'list-peers', '-o', 'json'],
          { encoding: 'utf8', timeout: 10_000 },
        );
        if (/"member": *"DOWN"/.test(r.stdout ?? '')) break;
        if (Date.now() - started > 30_000)
          throw new Error(
            `node 2 (pid ${pid}) killed but not listed DOWN within 30 s: ${r.stdout}${r.stderr}`,
          );
        await sleep(250);
      }
      return `node 2 (pid ${pid}) killed with SIGKILL, listed DOWN after ${((Date.now() - started) / 1000).toFixed(1)} s`;
    },
  };
}

export function startServer(name: ServerName, options: ServerOptions): Promise<BenchServer> {
  switch (name) {
    case 'torus-cluster':
      return startTorusCluster(name, options);
    case 'torus-cluster-cold':
      return startTorusCluster(name, options, { cacheSize: CLUSTER_COLD_CACHE });
    case 'torus-cluster-degraded':
      return startTorusCluster(name, options, { cacheSize: CLUSTER_COLD_CACHE, killNode2: true });
    case 'torus-client':
      return startTorusCluster(name, options, { client: true });
    case 'torus':
      return startTorus(options);
    case 'nbd-server':
      return startNbdServer(options);
    case 'nbdkit':
      return startNbdkit(options);
    case 'nbdkit-file':
      return startNbdkitFile(options);
  }
}
