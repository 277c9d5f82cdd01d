/**
 * Shutdown and other steps that must not be cut short (they may be
 * committing acknowledged writes) but may wait on the outside world: while
 * one runs past `everyMs`, it is named in the log every `everyMs`, so a stop
 * that hangs says where it hangs instead of going quiet.
 */
import type { Logger } from './log.js';

export const SLOW_STEP_REPORT_MS = 10_000;

export async function reportIfSlow<T>(
  log: Logger,
  step: string,
  run: () => Promise<T>,
  everyMs = SLOW_STEP_REPORT_MS,
): Promise<T> {
  const started = Date.now();
  const report = setInterval(
    () => log.warn({ step, waitedMs: Date.now() - started }, 'step still running'),
    everyMs,
  );
  try {
    return await run();
  } finally {
    clearInterval(report);
  }
}
