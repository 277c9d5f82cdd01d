/**
 * Who starts a volume file helper (fuse-file-main.ts) and can tell whether it
 * still runs. Two launchers: this process (`LocalHelperLauncher`: spawned
 * detached, in its own session — enough on a host, where the helper outlives
 * the plugin) and the attachment keeper (keeper-client.ts: a process in
 * another container, so the helper outlives the plugin's container too).
 *
 * A helper's pid means something only in the pid namespace of the process
 * that started it, so liveness and killing go through the same launcher; a
 * pid is checked together with the helper's directory (its command line
 * names it), so a reused pid is never taken for the helper.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { NotFoundError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { FuseFileHelperArgs } from './fuse-file-main.js';

const HELPER = new URL('./fuse-file-main.js', import.meta.url).pathname;
/** The helper connects, mounts and reports within this, or is given up on. */
export const HELPER_START_TIMEOUT_MS = 60_000;

export interface HelperLauncher {
  /** Undefined for this process; the keeper's socket path when the keeper starts helpers. */
  readonly keeper: string | undefined;
  /**
   * Start a helper for `args.dir` (which exists, with an empty `mnt/`) and
   * resolve with its pid once it serves the volume file; NotFoundError when
   * the server has no such export, HelperStartError for any other failure
   * (the helper is gone then).
   */
  start(args: FuseFileHelperArgs): Promise<number>;
  /** Whether the helper with this pid still runs. */
  alive(pid: number, dir: string): Promise<boolean>;
  /** SIGKILL the helper if it still runs (it exits by itself once its file is unmounted). */
  kill(pid: number, dir: string): Promise<void>;
}

/** The helper could not be started; the message says why (its log's last lines included). */
export class HelperStartError extends Error {
  override name = 'HelperStartError';
}

/** What the helper reports on its fd 3 (see fuse-file-main.ts). */
export type HelperReport = { ready: true; size: number } | HelperFailure;
export interface HelperFailure {
  ready?: undefined;
  error: 'not-found' | 'failed';
  message: string;
}

export class LocalHelperLauncher implements HelperLauncher {
  readonly keeper = undefined;

  constructor(private readonly log: Logger) {}

  async start(args: FuseFileHelperArgs): Promise<number> {
    const { pid, report } = await spawnHelper(args);
    if (report.ready) return pid;
    this.log.warn({ export: args.export, report }, 'volume file helper failed to start');
    throw startFailure(args.export, report);
  }

  async alive(pid: number, dir: string): Promise<boolean> {
    return helperAlive(pid, dir);
  }

  async kill(pid: number, dir: string): Promise<void> {
    killHelper(pid, dir);
  }
}

/** The error a failed start is reported with, whoever started the helper. */
export function startFailure(exportName: string, report: HelperFailure): Error {
  if (report.error === 'not-found') return new NotFoundError(report.message);
  return new HelperStartError(`the volume file helper for ${exportName} failed: ${report.message}`);
}

/**
 * Spawn the helper detached (its own session: no signal to the starter's
 * process group reaches it) with its output in DIR/helper.log, and wait for
 * its report. A helper that did not report ready is killed before this returns.
 */
export async function spawnHelper(
  args: FuseFileHelperArgs,
): Promise<{ pid: number; report: HelperReport }> {
  const logFd = openSync(join(args.dir, 'helper.log'), 'a');
  const child = spawn(process.execPath, [HELPER, JSON.stringify(args)], {
    detached: true,
    stdio: ['ignore', logFd, logFd, 'pipe'],
    env: { ...process.env, UV_THREADPOOL_SIZE: '6', TORUS_LOG_FORMAT: 'json' },
  });
  closeSync(logFd);
  const reportPipe = child.stdio[3] as NodeJS.ReadableStream & { destroy(): void };
  const report = await new Promise<HelperReport>((done) => {
    let text = '';
    const timer = setTimeout(
      () => done({ error: 'failed', message: `no answer in ${HELPER_START_TIMEOUT_MS} ms` }),
      HELPER_START_TIMEOUT_MS,
    );
    reportPipe.setEncoding('utf8');
    reportPipe.on('data', (d: string) => (text += d));
    reportPipe.on('error', () => undefined);
    reportPipe.on('end', () => {
      clearTimeout(timer);
      try {
        done(JSON.parse(text) as HelperReport);
      } catch {
        done({ error: 'failed', message: `it exited: ${logTail(args.dir)}` });
      }
    });
  });
  reportPipe.destroy();
  child.unref();
  if (child.pid === undefined)
    return { pid: 0, report: { error: 'failed', message: 'it could not be started' } };
  if (!report.ready) child.kill('SIGKILL');
  return { pid: child.pid, report };
}

/** The helper with this pid still runs (and is ours: its command line names it and the directory). */
export function helperAlive(pid: number, dir: string): boolean {
  try {
    const commandLine = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return commandLine.includes('fuse-file-main') && commandLine.includes(dir);
  } catch {
    return false;
  }
}

/** SIGKILL the helper when it is still the process with this pid; whether it was. */
export function killHelper(pid: number, dir: string): boolean {
  if (!helperAlive(pid, dir)) return false;
  try {
    process.kill(pid, 'SIGKILL');
    return true;
  } catch {
    return false;
  }
}

function logTail(dir: string): string {
  const path = join(dir, 'helper.log');
  if (!existsSync(path)) return '(no log)';
  return readFileSync(path, 'utf8').trim().split('\n').slice(-5).join('\n');
}
