/**
 * Byte rates for replication traffic: the meter that list-peers and
 * /metrics show. (The limiter that paces rebalance copies is
 * ../jobs/token-bucket.ts.)
 */

/** Seconds the meter averages over: long enough to smooth chunked copies, short enough to fall to 0 soon after traffic stops. */
const WINDOW_SECONDS = 5;

/**
 * Bytes per second over the last WINDOW_SECONDS whole seconds, from counts
 * in one-second buckets: add() is a clock read and an addition, rate() can be
 * asked by any number of readers (registration, scrapes) without resetting
 * anything.
 */
export class RateMeter {
  /** Bucket i counts the bytes of second `seconds[i]` (since the epoch). */
  private readonly bytes = new Float64Array(WINDOW_SECONDS + 1);
  private readonly seconds = new Float64Array(WINDOW_SECONDS + 1).fill(-1);
  /** Every byte ever added. */
  total = 0;

  constructor(private readonly now: () => number = Date.now) {}

  add(bytes: number): void {
    const second = Math.floor(this.now() / 1000);
    const at = second % this.bytes.length;
    if (this.seconds[at] !== second) {
      this.seconds[at] = second;
      this.bytes[at] = 0;
    }
    this.bytes[at] += bytes;
    this.total += bytes;
  }

  /** Whole bytes per second over the last WINDOW_SECONDS complete seconds. */
  rate(): number {
    const current = Math.floor(this.now() / 1000);
    let sum = 0;
    for (let i = 0; i < this.bytes.length; i++) {
      const age = current - this.seconds[i];
      if (age >= 1 && age <= WINDOW_SECONDS) sum += this.bytes[i];
    }
    return Math.round(sum / WINDOW_SECONDS);
  }
}
