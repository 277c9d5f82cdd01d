/** Running the bench's tools (fio, the flush-cadence driver) to completion, and killing them and their children. */
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { killQuietly, onCleanup } from './cleanup.js';

/** Every process below `root` (by parent pid in /proc), synchronously: it also runs from a signal handler. */
function descendantsOf(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      // The parent pid is the second field after the parenthesised command name.
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(parent, [...(children.get(parent) ?? []), Number(name)]);
    } catch {
      // gone while we looked
    }
  }
  const found: number[] = [];
  const walk = (pid: number) => {
    for (const child of children.get(pid) ?? []) {
      found.push(child);
      walk(child);
    }
  };
  walk(root);
  return found;
}

/**
 * Run `command` to completion and resolve with its stdout; killed with every
 * process it started past `timeoutMs` or at the bench's cleanup; an exit
 * other than 0 throws with the last lines of its output.
 */
export function runTool(command: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((done, fail) => {
    // Its own process group: fio forks a process per job, which a kill of
    // fio alone leaves running (seen: a job process outliving Ctrl-C by its
    // whole runtime). Killing the group takes them all.
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const killAll = () => {
      if (child.pid !== undefined) {
        // fio's job processes may leave its process group (seen: a job with
        // its own session, orphaned in a futex wait for 40 minutes after the
        // group was killed), so they are found by parentage first.
        for (const pid of descendantsOf(child.pid)) killQuietly(pid, 'SIGKILL');
        killQuietly(-child.pid, 'SIGKILL');
      }
      child.kill('SIGKILL');
    };
    const forget = onCleanup(killAll);
    let output = '';
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      output += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => {
      output += `\n[${command} killed after ${timeoutMs / 1000} s]`;
      killAll();
    }, timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      forget();
      fail(err);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      forget();
      if (code === 0) done(stdout);
      else
        fail(
          new Error(
            `${command} exited with ${code ?? signal}: ${output.trim().split('\n').slice(-5).join(' | ')}`,
          ),
        );
    });
  });
}
