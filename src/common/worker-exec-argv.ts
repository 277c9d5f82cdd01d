/**
 * The node flags a worker thread can be started with: this process's, less
 * those a Worker refuses (ERR_WORKER_INVALID_EXEC_ARGV). V8's options are
 * per process — `--perf-basic-prof`, `--prof`, `--expose-gc`,
 * `--max-old-space-size` — so Node refuses them in a worker's execArgv, and a
 * pool that passed them on failed to start: `node --perf-basic-prof
 * bin/torusd`, the way to give `perf` the names of JIT-compiled functions,
 * exited at once. They need not be passed: they already hold for every
 * thread of the process.
 *
 * Which flags a Worker refuses is Node's to say, so each is tried: a
 * refused one throws as the Worker is constructed, an accepted one starts
 * a worker that is stopped at once. Only when the process has flags at all
 * (a profiling or debugging run), and once per process.
 */
import { Worker } from 'node:worker_threads';

let cached: string[] | undefined;

/** process.execArgv without the flags a worker thread refuses. */
export function workerExecArgv(execArgv: readonly string[] = process.execArgv): string[] {
  if (execArgv === process.execArgv && cached) return cached;
  // Each tried after those kept before it: some only go with another (--cpu-prof-dir with --cpu-prof).
  const kept: string[] = [];
  for (const flag of execArgv) if (acceptedByWorkers([...kept, flag])) kept.push(flag);
  if (execArgv === process.execArgv) cached = kept;
  return kept;
}

function acceptedByWorkers(execArgv: string[]): boolean {
  let probe: Worker;
  try {
    probe = new Worker('', { eval: true, execArgv, stdout: true, stderr: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ERR_WORKER_INVALID_EXEC_ARGV') return false;
    throw err;
  }
  probe.unref();
  void probe.terminate();
  return true;
}
