/**
 * A token bucket in bytes: what keeps background jobs (rebalance copies,
 * scrub reads) from starving NBD I/O.
 *
 * take(n) resolves once n bytes may go at `bytesPerSecond`, with at most
 * `burstBytes` sent back to back. A take larger than the burst is let
 * through once the bucket is full (it then owes the difference), so a batch
 * bigger than the burst never waits forever. Waits are sliced so
 * `cancelled()` ends them within 100 ms.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    readonly bytesPerSecond: number,
    readonly burstBytes: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    if (!(bytesPerSecond > 0))
      throw new RangeError(`rate limit must be positive, got ${bytesPerSecond} bytes/s`);
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
    this.tokens = Math.min(
      this.burstBytes,
      this.tokens + ((t - this.last) / 1000) * this.bytesPerSecond,
    );
    this.last = t;
  }
}
