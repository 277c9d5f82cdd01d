/**
 * Start the real torusd binary for whole-system tests: its own data dir,
 * port 0 (it prints the port it bound), killed and cleaned up by stop().
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const PROJECT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const BIN = join(PROJECT, 'bin');

export interface TorusdProcess {
  dataDir: string;
  port: number;
  pid: number;
  child: ChildProcess;
  uri(volume: string): string;
  unixUri(volume: string): string;
  /** Everything it printed so far (stdout and stderr). */
  output(): string;
  /** Send a signal and wait for exit; returns the exit code (or the signal name). */
  stop(signal?: NodeJS.Signals, timeoutMs?: number): Promise<number | string>;
}

export async function makeDataDir(label = 'node'): Promise<string> {
  return mkdtemp(join(tmpdir(), `torus-${label}-`));
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

export async function startTorusd(options: {
  dataDir: string;
  size?: string;
  args?: string[];
  env?: Record<string, string>;
  /** Run through this command, e.g. ['ip', 'netns', 'exec', NAME] (it must exec, keeping the pid). */
  prefix?: string[];
  /** How long it may take to print that it listens (default 20 s). */
  startTimeoutMs?: number;
}): Promise<TorusdProcess> {
  const startTimeoutMs = options.startTimeoutMs ?? 20_000;
  const args = [
    join(BIN, 'torusd'),
    '--data-dir',
    options.dataDir,
    '--size',
    options.size ?? '512MiB',
    '--nbd',
    '127.0.0.1:0',
    '--cache-size',
    '128MiB',
    ...(options.args ?? []),
  ];
  const [command, ...commandArgs] = [...(options.prefix ?? []), process.execPath, ...args];
  const child = spawn(command, commandArgs, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TORUS_LOG_FORMAT: 'json', ...options.env },
  });
  let text = '';
  child.stdout!.on('data', (d: Buffer) => (text += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (text += d.toString()));
  const exited = new Promise<number | string>((done) =>
    child.once('exit', (code, signal) => done(code ?? signal ?? -1)),
  );
  const port = await new Promise<number>((done, fail) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      fail(new Error(`torusd did not start within ${startTimeoutMs / 1000} s:\n${text}`));
    }, startTimeoutMs);
    const check = () => {
      const m = /torusd listening on nbd:\/\/[^:]+:(\d+)\//.exec(text);
      if (m) {
        clearTimeout(timer);
        child.stdout!.off('data', check);
        done(Number(m[1]));
      }
    };
    child.stdout!.on('data', check);
    void exited.then((code) => {
      clearTimeout(timer);
      fail(new Error(`torusd exited (${code}) before listening:\n${text}`));
    });
  });
  return {
    dataDir: options.dataDir,
    port,
    pid: child.pid!,
    child,
    uri: (volume) => `nbd://127.0.0.1:${port}/${volume}`,
    unixUri: (volume) => `nbd+unix:///${volume}?socket=${join(options.dataDir, 'nbd.sock')}`,
    output: () => text,
    async stop(signal = 'SIGTERM', timeoutMs = 15_000) {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** Run one of our CLIs to completion. */
export function runCli(
  binary: 'torusctl' | 'torusblk' | 'torusd',
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, [join(BIN, binary), ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, TORUS_LOG_FORMAT: 'json', ...env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      done({ code: code ?? -1, stdout, stderr });
    });
  });
}
