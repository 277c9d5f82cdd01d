/**
 * Running the real third-party clients from tests: find them, run them with
 * a time bound, and skip (naming the Debian package) when one is missing.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

export const PACKAGE_OF: Record<string, string> = {
  nbdinfo: 'libnbd-bin',
  nbdcopy: 'libnbd-bin',
  nbdsh: 'libnbd-bin python3-libnbd',
  nbdfuse: 'nbdfuse',
  'qemu-io': 'qemu-utils',
  'qemu-img': 'qemu-utils',
  fio: 'fio',
  fusermount3: 'fuse3',
  'mkfs.ext4': 'e2fsprogs',
  e2fsck: 'e2fsprogs',
  fuse2fs: 'fuse2fs',
  etcd: 'etcd-server',
};

const found = new Map<string, boolean>();

export function have(tool: string): boolean {
  let ok = found.get(tool);
  if (ok === undefined) {
    ok = spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0;
    found.set(tool, ok);
  }
  return ok;
}

/** A skip reason naming what to install, or undefined when every tool is there. */
export function missing(...tools: string[]): string | undefined {
  const absent = tools.filter((t) => !have(t));
  if (absent.length === 0) return undefined;
  const packages = [...new Set(absent.map((t) => PACKAGE_OF[t] ?? t))];
  return `needs ${absent.join(', ')}: apt-get install ${packages.join(' ')}`;
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a command to completion, killed after timeoutMs. Never throws on exit status. */
export function run(command: string, args: string[], options: { timeoutMs?: number; input?: string | Buffer; env?: Record<string, string> } = {}): Promise<RunResult> {
  return new Promise((done, fail) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...toolEnv, ...options.env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      stderr += `\n[killed after ${options.timeoutMs ?? 60_000} ms]`;
      child.kill('SIGKILL');
    }, options.timeoutMs ?? 60_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      fail(err);
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input);
  });
}

/** Run and insist on exit status 0, with the output in the failure message. */
export async function runOk(command: string, args: string[], options: Parameters<typeof run>[2] = {}): Promise<string> {
  const r = await run(command, args, options);
  if (r.code !== 0) throw new Error(`${command} ${args.join(' ')} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/**
 * The python3 that has Debian's libnbd bindings. A python3 earlier on PATH
 * (pyenv, a venv) usually lacks them, and nbdsh runs whichever python3 PATH
 * finds first — so tests put /usr/bin first for nbdsh too (see toolEnv).
 */
export const SYSTEM_PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

/** Environment for third-party tools: the system python3 first on PATH. */
export const toolEnv = { PATH: `/usr/bin:${process.env.PATH ?? ''}` };

/** A python3 libnbd script (`import nbd`). */
export function python(script: string, timeoutMs = 60_000): Promise<RunResult> {
  return run(SYSTEM_PYTHON, ['-c', script], { timeoutMs });
}
