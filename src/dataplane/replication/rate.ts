/**
 * Byte rates for replication traffic: a meter (what list-peers and /metrics
 * show) and a limiter (what keeps rebalance from starving NBD I/O).
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

/**
 * A token bucket in bytes: take(n) resolves once n bytes may be sent at
 * `bytesPerSecond`, with at most `burstBytes` sent back to back. A take
 * larger than the burst is let through once the bucket is full (it then
 * owes the difference), so a batch bigger than the burst never waits
 * forever. Waits are sliced so `cancelled()` ends them within 100 ms.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    readonly bytesPerSecond: number,
    readonly burstBytes: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    if (!(bytesPerSecond > 0)) throw new RangeError(`rate limit must be positive, got ${bytesPerSecond} bytes/s`);
    this.tokens = burstBytes;
    this.last = now();
  }

  /** Resolves true once `bytes` are granted, false if cancelled() turned true while waiting. */
  async take(bytes: number, cancelled: () => boolean = () => false): Promise<boolean> {
    for (;;) {
      this.refill();
      const need = Math.min(bytes, this.burstBytes);
      if (this.tokens >= need) {
        this.tokens -= bytes;
        return true;
      }
      if (cancelled()) return false;
      const waitMs = ((need - this.tokens) / this.bytesPerSecond) * 1000;
      await new Promise((resolve) => setTimeout(resolve, Math.min(100, Math.max(1, waitMs))));
    }
  }

  private refill(): void {
    const t = this.now();
    this.tokens = Math.min(this.burstBytes, this.tokens + ((t - this.last) / 1000) * this.bytesPerSecond);
    this.last = t;
  }
}
