/**
 * Running the real third-party clients from tests: find them, run them with
 * a time bound, and skip (naming the Debian package) when one is missing.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Executable → Debian package, the same table npm test installs from. */
export const PACKAGE_OF: Record<string, string> = JSON.parse(
  readFileSync(
    join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts', 'test-tools.json'),
    'utf8',
  ),
);

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
  // nbdsh and the python tests need Debian's python3 bindings as well.
  if (tools.includes('nbdsh') && !absent.includes('nbdsh') && !pythonHasNbd())
    absent.push('python3 nbd module');
  if (absent.length === 0) return undefined;
  const packages = [
    ...new Set(
      absent.map((t) => PACKAGE_OF[t] ?? (t === 'python3 nbd module' ? 'python3-libnbd' : t)),
    ),
  ];
  return `needs ${absent.join(', ')}: apt-get install ${packages.join(' ')}`;
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a command to completion, killed after timeoutMs. Never throws on exit status. */
export function run(
  command: string,
  args: string[],
  options: { timeoutMs?: number; input?: string | Buffer; env?: Record<string, string> } = {},
): Promise<RunResult> {
  return new Promise((done, fail) => {
    const child = spawn(command, args, {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, ...toolEnv, ...options.env },
    });
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
export async function runOk(
  command: string,
  args: string[],
  options: Parameters<typeof run>[2] = {},
): Promise<string> {
  const r = await run(command, args, options);
  if (r.code !== 0)
    throw new Error(`${command} ${args.join(' ')} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/**
 * The python3 that has Debian's libnbd bindings. A python3 earlier on PATH
 * (pyenv, a venv) usually lacks them, and nbdsh runs whichever python3 PATH
 * finds first — so tests put /usr/bin first for nbdsh too (see toolEnv).
 */
export const SYSTEM_PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

let pythonNbd: boolean | undefined;
function pythonHasNbd(): boolean {
  pythonNbd ??=
    spawnSync(SYSTEM_PYTHON, ['-c', 'import nbd'], { stdio: 'ignore', timeout: 20_000 }).status ===
    0;
  return pythonNbd;
}

/** Environment for third-party tools: the system python3 first on PATH. */
export const toolEnv = { PATH: `/usr/bin:${process.env.PATH ?? ''}` };

/** A python3 libnbd script (`import nbd`). */
export function python(script: string, timeoutMs = 60_000): Promise<RunResult> {
  return run(SYSTEM_PYTHON, ['-c', script], { timeoutMs });
}
