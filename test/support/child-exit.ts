/**
 * Waiting for a child process to exit, safely: a child that has already
 * exited emits no 'exit' again, so a bare `once('exit')` after it waits
 * forever (a crashed torusblk made cluster-read-nbdserve hang to its test
 * timeout with no message). This resolves at once for such a child, and
 * fails after `timeoutMs` naming what it waited for.
 */
import type { ChildProcess } from 'node:child_process';

/** Resolves with the exit code (or signal) once `child` has exited; rejects after timeoutMs. */
export function exitOf(
  child: ChildProcess,
  what: string,
  timeoutMs = 30_000,
): Promise<number | string> {
  if (child.exitCode !== null || child.signalCode !== null)
    return Promise.resolve(child.exitCode ?? child.signalCode!);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${what} (pid ${child.pid}) did not exit within ${timeoutMs} ms`)),
      timeoutMs,
    );
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve(code ?? signal ?? -1);
    });
  });
}
