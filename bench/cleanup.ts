/**
 * Everything a benchmark starts (servers, temp dirs) registers how to undo
 * it here, so a normal end, an error and Ctrl-C all leave nothing behind.
 * Undo steps are synchronous on purpose: they must also run from a signal
 * handler and from process 'exit', where nothing asynchronous completes.
 */
import { rmSync } from 'node:fs';

type Undo = () => void;

const pending = new Set<Undo>();
let signalsHooked = false;

/** Register an undo step; the returned function runs it now (once) and forgets it. */
export function onCleanup(undo: Undo): () => void {
  hookSignals();
  pending.add(undo);
  return () => {
    if (pending.delete(undo)) undo();
  };
}

/** Run every pending undo step, newest first (servers die before their dirs are removed). */
export function cleanupAll(): void {
  for (const undo of [...pending].reverse()) {
    pending.delete(undo);
    try {
      undo();
    } catch (err) {
      process.stderr.write(`cleanup step failed: ${String(err)}\n`);
    }
  }
}

export function removeDirLater(dir: string): () => void {
  return onCleanup(() => rmSync(dir, { recursive: true, force: true }));
}

/** Kill a process (or, with a negative pid, a process group) if it is still there. */
export function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

function hookSignals(): void {
  if (signalsHooked) return;
  signalsHooked = true;
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      process.stderr.write(`\n${signal}: stopping servers and removing temp dirs\n`);
      cleanupAll();
      process.exit(128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 1));
    });
  }
  process.once('exit', cleanupAll);
}
