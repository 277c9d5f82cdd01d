/**
 * CaptureQueue: one volume's FLUSHes, captured one at a time (both logs:
 * volume-intents.ts, replicated-intents.ts), where a FLUSH that arrives
 * while a capture waits behind the running one joins that capture instead
 * of queueing one of its own.
 *
 * Why joining is enough: a capture takes every range noted when it starts,
 * and a write is noted when it completes, so a capture that has not started
 * yet covers every write completed before any FLUSH that joins it. Why it
 * matters: a client with several requests in flight (a database's group
 * commit, fio --iodepth=8 --fsync=32) keeps FLUSHes arriving while a slow
 * capture runs — one that commits a version because the ranges outgrew the
 * log — and each queued its own: four FLUSHes in flight meant four commits
 * in a row, the last FLUSH waiting for all of them.
 */
export class CaptureQueue {
  /** The last capture started or queued (settled, whatever its outcome, before the next starts). */
  private last: Promise<unknown> = Promise.resolve();
  /** A capture queued behind `last` that has not started: later FLUSHes join it. */
  private waiting: Promise<void> | undefined;

  constructor(private readonly capture: () => Promise<void>) {}

  /** Resolves once a capture started after this call is durable (or fails with it). */
  flush(): Promise<void> {
    if (this.waiting) return this.waiting;
    const durable = this.last.then(() => {
      // From here on a FLUSH needs the next capture: this one may have taken the ranges already.
      this.waiting = undefined;
      return this.capture();
    });
    this.waiting = durable;
    this.last = durable.catch(() => undefined);
    return durable;
  }
}
