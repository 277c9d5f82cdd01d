/**
 * Starting and stopping a benchmark server's processes: each in its own
 * process group with its output in a log file, stopped with everything it
 * forked, and registered with the cleanup registry meanwhile.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { killQuietly, onCleanup } from './cleanup.js';
import type { MemoryCgroup } from './memory-cgroup.js';
import { isAlive, processTree, waitForListener } from './processes.js';
import type { BenchServer, ServerName } from './servers.js';

export const STARTUP_TIMEOUT_MS = 60_000;
const STOP_GRACE_MS = 10_000;

/** Signal a server's process group and every descendant (some servers leave their group). */
export function signalTree(pid: number, signal: NodeJS.Signals): void {
  const members = processTree(pid);
  killQuietly(-pid, signal);
  for (const p of members) killQuietly(p.pid, signal);
}

export async function stopTree(pid: number): Promise<void> {
  // Every member is waited for, not only the root: a cluster's shell dies at
  // once, while its nodes are still closing (and writing --cpu-prof profiles).
  const members = processTree(pid);
  signalTree(pid, 'SIGTERM');
  const deadline = Date.now() + STOP_GRACE_MS;
  const anyAlive = () => isAlive(pid) || members.some((p) => isAlive(p.pid));
  while (anyAlive() && Date.now() < deadline) await sleep(100);
  signalTree(pid, 'SIGKILL');
}

/**
 * Run a foreground server in its own process group (so a terminal's Ctrl-C
 * reaches us first and we stop it in order), output to a log file whose tail
 * explains a failed start.
 */
export async function launch(
  name: ServerName,
  argv: string[],
  port: number,
  uri: string,
  workDir: string,
  cgroups: MemoryCgroup[] = [],
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
    cgroups,
    async stop() {
      if (exited === undefined) await stopTree(pid);
      forget();
      for (const cgroup of cgroups) cgroup.remove();
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

export function runToCompletion(argv: string[], what: string): void {
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
