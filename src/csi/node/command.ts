/**
 * Running the system tools the node service drives (mount, losetup, mkfs,
 * blkid, nbd-client, …): with a time bound, output captured, and a typed
 * error naming the command line and what it printed when it fails.
 */
import { spawn } from 'node:child_process';

export interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** A tool exited non-zero, could not be started, or ran out of time. */
export class CommandError extends Error {
  override name = 'CommandError';
  constructor(
    readonly command: string,
    readonly result: CommandResult,
  ) {
    super(
      `${command} ${result.code === null ? 'did not finish' : `exited ${result.code}`}: ` +
        (result.stderr.trim() || result.stdout.trim() || '(no output)'),
    );
  }
}

/** Run to completion (killed after timeoutMs); never throws on the exit status. */
export function runCommand(
  command: string,
  args: string[],
  timeoutMs = 60_000,
): Promise<CommandResult> {
  return new Promise((done) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      stderr += `\n[killed after ${timeoutMs} ms]`;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      done({ code: null, stdout, stderr: `${stderr}${err.message}` });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      done({ code, stdout, stderr });
    });
  });
}

/** Run and insist on exit status 0; the output is returned. */
export async function runChecked(
  command: string,
  args: string[],
  timeoutMs = 60_000,
): Promise<string> {
  const result = await runCommand(command, args, timeoutMs);
  if (result.code !== 0) throw new CommandError(`${command} ${args.join(' ')}`, result);
  return result.stdout;
}
