/**
 * BackgroundJob: when a node's background work runs, never what it does.
 *
 * The work (a rebalance run, a scrub pass) is one async function. The job
 * starts it after a trigger (schedule(): debounced; runNow(): at once),
 * periodically, never two at a time, paces its bytes through a token bucket,
 * and at close() stops starting runs and waits for the one in progress —
 * which ends early because it checks `closed` between steps and pace()
 * returns false once the job is closed.
 *
 * Coalescing: triggers while a run waits to start make that one run; a
 * schedule() during a run makes exactly one more run right after it.
 *
 * Periods, two kinds:
 *   'fixed'     a schedule() every intervalMs from start(), whatever runs
 *               meanwhile (a tick during a run makes one more after it);
 *   'after-run' a runNow() intervalMs after start(), then intervalMs after
 *               each periodic run ended: never back to back, however long
 *               a run takes.
 */
import { TokenBucket } from './token-bucket.js';

export interface BackgroundJobOptions {
  /** One run. It should return soon once the job is `closed` (checked between steps; pace() says false). */
  work: () => Promise<void>;
  /** A run rejected; the job goes on, the next trigger runs again. */
  onError: (err: unknown) => void;
  /** schedule() waits this long before running, so a burst of triggers makes one run. Default 0. */
  settleMs?: number;
  /** Periodic runs after start(); 0 or absent for none. */
  intervalMs?: number;
  /** How periodic runs are timed (see above). Default 'fixed'. */
  period?: 'fixed' | 'after-run';
  /** start() also schedules a run at once (else the first waits for the period). Default false. */
  runAtStart?: boolean;
  /** pace()'s limit: bytes per second, and how many may go back to back. Absent: pace() never waits. */
  pace?: { bytesPerSecond: number; burstBytes: number };
}

export class BackgroundJob {
  private settleTimer: NodeJS.Timeout | undefined;
  private periodTimer: NodeJS.Timeout | undefined;
  private again = false;
  private current: Promise<void> | undefined;
  private isClosed = false;
  private readonly bucket: TokenBucket | undefined;
  private readonly settleMs: number;
  private readonly intervalMs: number;

  constructor(private readonly options: BackgroundJobOptions) {
    this.settleMs = options.settleMs ?? 0;
    this.intervalMs = options.intervalMs ?? 0;
    this.bucket =
      options.pace && new TokenBucket(options.pace.bytesPerSecond, options.pace.burstBytes);
  }

  /** close() was called: no run starts, and the one running should end. */
  get closed(): boolean {
    return this.isClosed;
  }

  /** A run (or its follow-up after a trigger) is in progress. */
  get running(): boolean {
    return this.current !== undefined;
  }

  /** Begin the periodic runs (and one now, with runAtStart). A second call adds nothing. */
  start(): void {
    if (this.isClosed) return;
    if (this.options.runAtStart) this.schedule();
    if (this.intervalMs <= 0 || this.periodTimer) return;
    if (this.options.period === 'after-run') {
      this.armAfterRun();
    } else {
      this.periodTimer = setInterval(() => this.schedule(), this.intervalMs);
      this.periodTimer.unref();
    }
  }

  /** Something changed: run settleMs from now (once, however many triggers arrive meanwhile), or once more after the current run. */
  schedule(): void {
    if (this.isClosed) return;
    if (this.current) {
      this.again = true;
      return;
    }
    if (this.settleTimer) return;
    this.settleTimer = setTimeout(() => {
      this.settleTimer = undefined;
      this.launch();
    }, this.settleMs);
    this.settleTimer.unref();
  }

  /** Run now, or join the run in progress; resolves when it ends (never rejects). A pending schedule() is served by this run. */
  runNow(): Promise<void> {
    if (this.isClosed) return Promise.resolve();
    if (!this.current) {
      clearTimeout(this.settleTimer);
      this.settleTimer = undefined;
      this.launch();
    }
    return this.current!;
  }

  /** Resolves once `bytes` may go at the pace's rate; false (at once or within 100 ms of waiting) once the job is closed. */
  pace(bytes: number): Promise<boolean> {
    if (!this.bucket) return Promise.resolve(!this.isClosed);
    return this.bucket.take(bytes, () => this.isClosed);
  }

  /** Resolves once no run is in progress or due from a trigger (tests, shutdown). Periodic runs still come. */
  async idle(): Promise<void> {
    while (this.current || this.settleTimer) {
      if (this.current) await this.current;
      else await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /** No more runs; resolves once the one in progress has returned. */
  async close(): Promise<void> {
    this.isClosed = true;
    clearTimeout(this.settleTimer);
    clearTimeout(this.periodTimer); // Node's clearTimeout ends an interval too
    this.settleTimer = this.periodTimer = undefined;
    await this.current;
  }

  private armAfterRun(): void {
    this.periodTimer = setTimeout(() => {
      this.periodTimer = undefined;
      void this.runNow().finally(() => {
        if (!this.isClosed) this.armAfterRun();
      });
    }, this.intervalMs);
    this.periodTimer.unref();
  }

  private launch(): void {
    this.current = this.loop();
  }

  private async loop(): Promise<void> {
    try {
      do {
        this.again = false;
        try {
          await this.options.work();
        } catch (err) {
          this.options.onError(err);
        }
      } while (this.again && !this.isClosed);
    } finally {
      // In the same step as the last look at `again`: a schedule() after it sees no run and starts one.
      this.current = undefined;
    }
  }
}
