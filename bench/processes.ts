/**
 * Process plumbing for benchmarks: free ports, waiting for a listener, and
 * reading a server's CPU time and memory from /proc. A server may be several
 * processes (nbd-server forks one per connection), so figures cover the
 * process and all its descendants.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

export const LOOPBACK = '127.0.0.1';

/** A port nothing listens on right now (the kernel picks it; we release it for the server to take). */
export function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const probe = createServer();
    probe.once('error', fail);
    probe.listen(0, LOOPBACK, () => {
      const address = probe.address();
      probe.close(() =>
        typeof address === 'object' && address
          ? done(address.port)
          : fail(new Error('no port from listen(0)')),
      );
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((done) => {
    const socket = createConnection({ host: LOOPBACK, port });
    socket.once('connect', () => {
      socket.destroy();
      done(true);
    });
    socket.once('error', () => done(false));
  });
}

/**
 * Wait until something accepts connections on the port. `stillStarting` lets
 * the caller give up early with its own reason (e.g. the server exited).
 */
export async function waitForListener(
  port: number,
  what: string,
  timeoutMs: number,
  stillStarting: () => string | undefined = () => undefined,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await canConnect(port)) return;
    const failure = stillStarting();
    if (failure) throw new Error(`${what} did not start: ${failure}`);
    if (Date.now() > deadline)
      throw new Error(
        `${what} is not listening on ${LOOPBACK}:${port} after ${timeoutMs / 1000} s`,
      );
    await sleep(100);
  }
}

interface ProcStat {
  pid: number;
  ppid: number;
  state: string;
  /** user+sys of the process itself, in clock ticks */
  ownTicks: number;
  /** user+sys of its children it has waited for */
  reapedChildTicks: number;
}

function readStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name may contain spaces and parentheses; fields resume after the last ')'.
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // proc(5): state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17); f[0] is field 3.
  return {
    pid,
    ppid: Number(f[1]),
    state: f[0],
    ownTicks: Number(f[11]) + Number(f[12]),
    reapedChildTicks: Number(f[13]) + Number(f[14]),
  };
}

/** The process and its live descendants, found by scanning /proc (no reliance on /proc/PID/task/TID/children). */
export function processTree(rootPid: number): ProcStat[] {
  const all: ProcStat[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = readStat(Number(name));
    if (stat) all.push(stat);
  }
  const tree = all.filter((p) => p.pid === rootPid);
  for (let i = 0; i < tree.length; i++) {
    for (const p of all) if (p.ppid === tree[i].pid) tree.push(p);
  }
  return tree;
}

export function isAlive(pid: number): boolean {
  const stat = readStat(pid);
  // A zombie has exited; it lingers only until its parent (maybe an init that never reaps) collects it.
  return stat !== undefined && stat.state !== 'Z';
}

/**
 * CPU ticks used so far by the server: its own, its reaped children's (a
 * finished per-connection child lands here) and its live descendants'.
 */
export function treeCpuTicks(rootPid: number): number {
  let total = 0;
  for (const p of processTree(rootPid))
    total += p.ownTicks + (p.pid === rootPid ? p.reapedChildTicks : 0);
  return total;
}

/**
 * CPU ticks of this process's children that have exited and been waited for.
 * fio is our child and waits for its own per-connection processes, so the
 * change across one fio run is fio's whole CPU use.
 */
export function ownReapedChildTicks(): number {
  return readStat(process.pid)?.reapedChildTicks ?? 0;
}

export const CLOCK_TICKS_PER_SECOND =
  Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

function statusKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  try {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(
      readFileSync(`/proc/${pid}/status`, 'utf8'),
    );
    return match ? Number(match[1]) : 0;
  } catch {
    return 0;
  }
}

/** Resident memory of the process and its live descendants now, in bytes. */
export function treeRssBytes(rootPid: number): number {
  return processTree(rootPid).reduce((sum, p) => sum + statusKiB(p.pid, 'VmRSS') * 1024, 0);
}

/** The kernel's high-water mark of the process's own resident memory, in bytes. */
export function peakRssBytes(pid: number): number {
  return statusKiB(pid, 'VmHWM') * 1024;
}
