/**
 * The NBD servers a benchmark compares, each started on a free loopback port
 * in its own temp dir, with one export of the same size, and stopped (every
 * process of it) by stop() or, failing that, by the cleanup registry.
 *
 * torus       our torusd serving volume "bench" from a fresh data dir
 * nbd-server  Debian's reference server exporting a preallocated file
 * nbdkit      nbdkit's memory plugin: a RAM disk, the ceiling for the protocol path
 * torus-cluster  etcd and three torusd nodes on loopback, replication 2, the
 *             volume served (and written) through node 1: the cluster mode
 * torus-cluster-cold  the same with every node's cache at CLUSTER_COLD_CACHE,
 *             far below the region: reads really go to the stores and the
 *             replicas, writes are spilled and replicated as they come
 * torus-cluster-degraded  torus-cluster-cold with node 2 killed (SIGKILL)
 *             once the region is prefilled: only read jobs run on it, and
 *             its figures are reported against torus-cluster-cold's
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { killQuietly, onCleanup } from './cleanup.js';
import { LOOPBACK, freePort, isAlive, processTree, waitForListener } from './processes.js';

export const PROJECT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export const SERVER_NAMES = [
  'torus',
  'nbd-server',
  'nbdkit',
  'torus-cluster',
  'torus-cluster-cold',
  'torus-cluster-degraded',
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
  'nbd-server': { 'nbd-server': 'nbd-server', fallocate: 'util-linux' },
  nbdkit: { nbdkit: 'nbdkit' },
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
  stop(): Promise<void>;
}

/** The healthy server a degraded one is reported against. */
export const BASELINE: Partial<Record<ServerName, ServerName>> = {
  'torus-cluster-degraded': 'torus-cluster-cold',
};

/** Every node's --cache-size in the cold cluster modes: an eighth of the default 512 MiB region. */
export const CLUSTER_COLD_CACHE = '64MiB';

const STARTUP_TIMEOUT_MS = 60_000;
const STOP_GRACE_MS = 10_000;

/** Signal a server's process group and every descendant (some servers leave their group). */
function signalTree(pid: number, signal: NodeJS.Signals): void {
  const members = processTree(pid);
  killQuietly(-pid, signal);
  for (const p of members) killQuietly(p.pid, signal);
}

async function stopTree(pid: number): Promise<void> {
  signalTree(pid, 'SIGTERM');
  const deadline = Date.now() + STOP_GRACE_MS;
  while (isAlive(pid) && Date.now() < deadline) await sleep(100);
  signalTree(pid, 'SIGKILL');
}

/**
 * Run a foreground server in its own process group (so a terminal's Ctrl-C
 * reaches us first and we stop it in order), output to a log file whose tail
 * explains a failed start.
 */
async function launch(
  name: ServerName,
  argv: string[],
  port: number,
  uri: string,
  workDir: string,
): Promise<BenchServer> {
  const logPath = join(workDir, `${name}.log`);
  const log = openSync(logPath, 'a');
  const child: ChildProcess = spawn(argv[0], argv.slice(1), {
    cwd: workDir,
    stdio: ['ignore', log, log],
    detached: true,
  });
  closeSync(log);
  const pid = child.pid!;
  const forget = onCleanup(() => signalTree(pid, 'SIGKILL'));
  let exited: string | undefined;
  child.once('exit', (code, signal) => (exited = `exited with ${code ?? signal}`));
  child.once('error', (err) => (exited = err.message));
  try {
    await waitForListener(
      port,
      name,
      STARTUP_TIMEOUT_MS,
      () => exited && `${exited}; last output:\n${tail(logPath)}`,
    );
  } catch (err) {
    forget();
    throw err;
  }
  return {
    name,
    uri,
    pid,
    commandLine: argv.join(' '),
    async stop() {
      if (exited === undefined) await stopTree(pid);
      forget();
    },
  };
}

function tail(path: string, lines = 20): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no output)';
  }
}

function runToCompletion(argv: string[], what: string): void {
  const r = spawnSync(argv[0], argv.slice(1), {
    encoding: 'utf8',
    timeout: 120_000,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (r.status !== 0) {
    throw new Error(
      `${what} failed (${r.error?.message ?? `exit ${r.status ?? r.signal}`}): ${argv.join(' ')}\n${r.stdout}${r.stderr}`,
    );
  }
}

export const TORUS_VOLUME = 'bench';
const TORUS_STORE_SIZE = '4GiB';

/**
 * Create the bench volume in a fresh data dir and return the torusd command
 * line serving it. Kept apart from starting it so the profiler can run the
 * same command under clinic; adjust here when the CLI changes.
 */
export function prepareTorus(
  options: ServerOptions,
  port: number,
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
    argv: [...bin('torusd'), '--size', TORUS_STORE_SIZE, '--nbd', `${LOOPBACK}:${port}`],
    uri: `nbd://${LOOPBACK}:${port}/${TORUS_VOLUME}`,
  };
}

async function startTorus(options: ServerOptions): Promise<BenchServer> {
  const port = await freePort();
  const { argv, uri } = prepareTorus(options, port);
  return launch('torus', argv, port, uri, options.workDir);
}

/**
 * nbd-server always daemonizes (its -d "do not fork" mode serves a single
 * connection and drops fio's), so it runs as a daemon with a pid file and a
 * config file of its own, which also keeps it off /etc/nbd-server/config.
 */
async function startNbdServer(options: ServerOptions): Promise<BenchServer> {
  const port = await freePort();
  const image = join(options.workDir, 'export.img');
  // Preallocated so writes measure the server, not the filesystem growing a sparse file.
  runToCompletion(
    ['fallocate', '-l', String(options.exportBytes), image],
    'preallocating the nbd-server export',
  );
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
      '',
    ].join('\n'),
  );
  const argv = ['nbd-server', '-C', config, '-p', pidFile];
  runToCompletion(argv, 'nbd-server');
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
    throw err;
  }
  return {
    name: 'nbd-server',
    uri: `nbd://${LOOPBACK}:${port}/${TORUS_VOLUME}`,
    pid: daemon,
    commandLine: `${argv.join(' ')}   # config: [generic] port, listenaddr; [${TORUS_VOLUME}] exportname = preallocated file`,
    async stop() {
      await stopTree(daemon);
      forget();
    },
  };
}

async function startNbdkit(options: ServerOptions): Promise<BenchServer> {
  const port = await freePort();
  const argv = [
    'nbdkit',
    '--foreground',
    '--exit-with-parent',
    '--ipaddr',
    LOOPBACK,
    '--port',
    String(port),
    'memory',
    `size=${options.exportBytes}`,
  ];
  return launch('nbdkit', argv, port, `nbd://${LOOPBACK}:${port}/`, options.workDir);
}

/**
 * The cluster in the issue's shape: etcd plus three storage nodes, ring
 * replication 2, all children of one shell so the measured process tree
 * (CPU, RSS) is the whole cluster. fio talks to node 1, which writes the
 * volume; each block goes to the two nodes the ring names for it.
 * cacheSize: every node's --cache-size (default: torusd's). killNode2: after
 * the prefill, SIGKILL node 2 and wait until the cluster lists it DOWN.
 */
async function startTorusCluster(
  name: ServerName,
  options: ServerOptions,
  variant: { cacheSize?: string; killNode2?: boolean } = {},
): Promise<BenchServer> {
  const [etcdClient, etcdPeer, nbd, ...peerPorts] = await Promise.all(
    Array.from({ length: 6 }, () => freePort()),
  );
  const endpoint = `${LOOPBACK}:${etcdClient}`;
  const node = (bin: string) =>
    `${JSON.stringify(process.execPath)} ${JSON.stringify(join(PROJECT, 'bin', bin))}`;
  const dir = options.workDir;
  const create = `${node('torusctl')} -C ${endpoint} volume create-block ${TORUS_VOLUME} ${options.exportBytes}${options.encrypt ? ' --encrypt --key-file ' + JSON.stringify(join(dir, 'master.key')) : ''}`;
  // Node 1 keeps the volume (its write lock and cache) open between fio's
  // connections, as it would for a client attached for days: with the default
  // 5 s linger, whether a run found the cache warm depended on how long the
  // other servers' runs took. It still commits each run's writes when the
  // connection closes, while the bench waits for quiet (run.ts settle).
  const torusd = (i: number, nbdPort: string) =>
    `${node('torusd')} --etcd ${endpoint} --data-dir ${JSON.stringify(join(dir, `node${i}`))} --size ${TORUS_STORE_SIZE} --nbd ${nbdPort}${i === 1 ? ' --lock-linger 3600' : ''} ` +
    `--peer-address ${LOOPBACK}:${peerPorts[i - 1]} --auto-join${variant.cacheSize ? ` --cache-size ${variant.cacheSize}` : ''}` +
    `${options.encrypt ? ' --key-file ' + JSON.stringify(join(dir, 'master.key')) : ''} > ${JSON.stringify(join(dir, `node${i}.log`))} 2>&1 & echo $! > ${JSON.stringify(join(dir, `node${i}.pid`))}`;
  const script = [
    'set -e',
    `etcd --name bench --data-dir ${JSON.stringify(join(dir, 'etcd'))} --listen-client-urls http://${endpoint} --advertise-client-urls http://${endpoint} ` +
      `--listen-peer-urls http://${LOOPBACK}:${etcdPeer} --initial-advertise-peer-urls http://${LOOPBACK}:${etcdPeer} ` +
      `--initial-cluster bench=http://${LOOPBACK}:${etcdPeer} > ${JSON.stringify(join(dir, 'etcd.log'))} 2>&1 &`,
    `for i in $(seq 1 100); do ${node('torusctl')} -C ${endpoint} init --replication 2${options.blockSize ? ` --block-size ${options.blockSize}` : ''} > /dev/null 2>&1 && break; sleep 0.2; done`,
    // Nodes 2 and 3 first and before the volume exists: they only store
    // copies. Node 1 then loads the volume, takes its write lock and serves it.
    torusd(2, `${LOOPBACK}:${await freePort()}`),
    torusd(3, `${LOOPBACK}:${await freePort()}`),
    `for i in $(seq 1 100); do [ "$(${node('torusctl')} -C ${endpoint} list-peers -o json | grep -o '"member": *"OK"' | wc -l)" -ge 2 ] && break; sleep 0.2; done`,
    create,
    torusd(1, `${LOOPBACK}:${nbd}`),
    'wait',
  ].join('\n');
  const server = await launch(
    name,
    ['bash', '-c', script],
    nbd,
    `nbd://${LOOPBACK}:${nbd}/${TORUS_VOLUME}`,
    options.workDir,
  );
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
    case 'torus':
      return startTorus(options);
    case 'nbd-server':
      return startNbdServer(options);
    case 'nbdkit':
      return startNbdkit(options);
  }
}
