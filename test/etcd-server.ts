/**
 * A real etcd for tests: started on free loopback ports with a throwaway data
 * directory, stopped (and the directory removed) by stop().
 *
 * Heartbeat 50 ms / election 500 ms instead of 100 ms / 1 s: a single member
 * elects itself sooner, and etcd's minimum lease TTL (1.5 election timeouts,
 * rounded up to whole seconds) drops from 2 s to 1 s, so 1 s lease tests
 * mean what they say.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface EtcdServer {
  /** http://127.0.0.1:<port> (https:// with EtcdOptions.tls) */
  endpoint: string;
  /** The client port, the same on every address it listens on. */
  port: number;
  /** Of the current process: changes with restart(). */
  pid: number;
  /** SIGSTOP: the process stays, its sockets stay open, nothing answers. */
  freeze(): void;
  /** SIGCONT after freeze(). */
  thaw(): void;
  /** SIGKILL, keeping the data directory and ports for restart(). */
  kill(): Promise<void>;
  /**
   * Start it again on the same data directory, name and ports (after kill());
   * resolves once healthy again.
   */
  restart(options?: { readyTimeoutMs?: number }): Promise<void>;
  /** Kill it and remove its data directory. Idempotent. */
  stop(): Promise<void>;
}

export interface EtcdOptions {
  readyTimeoutMs?: number;
  /**
   * Extra addresses to listen on for clients, besides 127.0.0.1 (e.g. a veth
   * address reachable from another network namespace); same port on each.
   */
  extraHosts?: string[];
  /**
   * Serve clients over TLS only, requiring a client certificate signed by
   * caFile (health is then checked on a separate plain-HTTP metrics port).
   */
  tls?: { certFile: string; keyFile: string; caFile: string };
}

/** Set by `npm run test:fast` (scripts/test.mjs --fast): the fast tier starts no etcd, so its etcd variants skip. */
export const FAST_TIER_ENV = 'TORUS_TEST_FAST';

/** Undefined when etcd can be run; otherwise why not, naming the package (or the fast tier). */
export function etcdMissing(): string | undefined {
  if (process.env[FAST_TIER_ENV] === '1')
    return 'the fast tier (npm run test:fast) starts no etcd; npm test runs this';
  const found = spawnSync('sh', ['-c', 'command -v etcd'], { stdio: 'ignore' }).status === 0;
  return found ? undefined : 'etcd is not installed: apt-get install etcd-server';
}

async function freePorts(count: number): Promise<number[]> {
  // Held open together so the kernel hands out distinct ports, then released
  // for etcd; a port taken in between makes etcd exit, and start() retries.
  const servers = await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<ReturnType<typeof createServer>>((resolve, reject) => {
          const server = createServer();
          server.once('error', reject);
          server.listen(0, '127.0.0.1', () => resolve(server));
        }),
    ),
  );
  const ports = servers.map((s) => (s.address() as AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

export async function startEtcd(options: EtcdOptions = {}): Promise<EtcdServer> {
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(
        options.readyTimeoutMs ?? 15_000,
        options.extraHosts ?? [],
        options.tls,
      );
    } catch (err) {
      lastError = err as Error;
    }
  }
  throw lastError;
}

async function startOnce(
  readyTimeoutMs: number,
  extraHosts: string[],
  tls: EtcdOptions['tls'],
): Promise<EtcdServer> {
  const [clientPort, peerPort, metricsPort] = await freePorts(3);
  const dataDir = await mkdtemp(join(tmpdir(), 'torus-etcd-'));
  const scheme = tls ? 'https' : 'http';
  const client = `${scheme}://127.0.0.1:${clientPort}`;
  const clients = [client, ...extraHosts.map((h) => `${scheme}://${h}:${clientPort}`)].join(',');
  const health = tls ? `http://127.0.0.1:${metricsPort}/health` : `${client}/health`;
  const tlsArgs = tls
    ? [
        '--cert-file',
        tls.certFile,
        '--key-file',
        tls.keyFile,
        '--trusted-ca-file',
        tls.caFile,
        '--client-cert-auth',
        '--listen-metrics-urls',
        `http://127.0.0.1:${metricsPort}`,
      ]
    : [];
  const peer = `http://127.0.0.1:${peerPort}`;
  let child: ChildProcess;
  let stderr = '';
  let exited = false;
  let exit: Promise<void> = Promise.resolve();
  const spawnEtcd = () => {
    stderr = '';
    exited = false;
    child = spawn(
      'etcd',
      [
        '--name',
        'test',
        '--data-dir',
        dataDir,
        '--listen-client-urls',
        clients,
        '--advertise-client-urls',
        client,
        '--listen-peer-urls',
        peer,
        '--initial-advertise-peer-urls',
        peer,
        '--initial-cluster',
        `test=${peer}`,
        '--heartbeat-interval',
        '50',
        '--election-timeout',
        '500',
        '--logger',
        'zap',
        '--log-outputs',
        'stderr',
        '--log-level',
        'error',
        ...tlsArgs,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    child.stderr!.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    exit = new Promise<void>((resolve) =>
      child.once('exit', () => {
        exited = true;
        resolve();
      }),
    );
  };
  const kill = async () => {
    if (!exited) {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
      await exit;
    }
  };
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await kill();
    await rm(dataDir, { recursive: true, force: true });
  };
  const healthy = async (timeoutMs: number) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (exited) throw new Error(`etcd exited during start-up: ${stderr}`);
      if (Date.now() > deadline)
        throw new Error(`etcd did not become healthy within ${timeoutMs} ms: ${stderr}`);
      try {
        const res = await fetch(health, { signal: AbortSignal.timeout(500) });
        const body = (await res.json()) as { health?: string };
        if (body.health === 'true') return;
      } catch {
        // not listening yet
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  spawnEtcd();
  try {
    await healthy(readyTimeoutMs);
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    endpoint: client,
    port: clientPort,
    get pid() {
      return child.pid!;
    },
    freeze: () => {
      child.kill('SIGSTOP');
      waitUntilStopped(child.pid!);
    },
    thaw: () => void child.kill('SIGCONT'),
    kill,
    async restart(options = {}) {
      if (stopped) throw new Error('etcd was stopped: its data directory is gone');
      await kill();
      spawnEtcd();
      await healthy(options.readyTimeoutMs ?? 15_000);
    },
    stop,
  };
}

/**
 * SIGSTOP is delivered asynchronously: kill() returns before every thread of
 * the target has stopped, and a request sent in that moment can still be
 * answered (seen once: a call made right after freeze() succeeded). Wait,
 * synchronously and for at most 2 s, until /proc shows every thread stopped.
 */
function waitUntilStopped(pid: number): void {
  const nap = new Int32Array(new SharedArrayBuffer(4));
  const deadline = Date.now() + 2000;
  while (Date.now() < deadline) {
    let running = false;
    try {
      for (const task of readdirSync(`/proc/${pid}/task`)) {
        const stat = readFileSync(`/proc/${pid}/task/${task}/stat`, 'utf8');
        // The state is the field after the parenthesised command name.
        const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
        if (state !== 'T' && state !== 't') running = true;
      }
    } catch {
      return; // gone, or no /proc: nothing to wait for
    }
    if (!running) return;
    Atomics.wait(nap, 0, 0, 1);
  }
}
