/**
 * A debugging aid for memory growth: with TORUS_MEMORY_REPORT_MS set, a
 * thread writes one line to stderr at most every that many milliseconds,
 *   torus-memory {"thread":"main","heapUsed":…,"heapTotal":…,"external":…,"arrayBuffers":…}
 * (bytes; V8's figures for that thread's isolate — the process's RSS is in
 * /proc). torusd's main thread reports on a timer; pool workers report from
 * their task handler, since an idle worker may be parked in Atomics.wait
 * where no timer fires. /metrics only sees the main thread.
 * bench/fuzz-soak.ts reads these lines. Off unless the variable is set: the
 * reporter is then a no-op and no timer exists.
 */
export const MEMORY_REPORT_PREFIX = 'torus-memory ';

/** A function that writes `thread`'s line when one is due (a no-op when reports are off). */
export function memoryReporter(thread: string): () => void {
  const everyMs = Number(process.env.TORUS_MEMORY_REPORT_MS);
  if (!(everyMs > 0)) return () => undefined;
  let lastMs = 0;
  return () => {
    const now = Date.now();
    if (now - lastMs < everyMs) return;
    lastMs = now;
    const { heapUsed, heapTotal, external, arrayBuffers } = process.memoryUsage();
    const line = { thread, heapUsed, heapTotal, external, arrayBuffers };
    process.stderr.write(`${MEMORY_REPORT_PREFIX}${JSON.stringify(line)}\n`);
  };
}

/** The main thread's reports, on a timer that never keeps the process alive. */
export function startMemoryReport(thread: string): void {
  const everyMs = Number(process.env.TORUS_MEMORY_REPORT_MS);
  if (everyMs > 0) setInterval(memoryReporter(thread), everyMs).unref();
}
