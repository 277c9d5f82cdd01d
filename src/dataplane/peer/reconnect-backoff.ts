/**
 * ReconnectBackoff: how long PeerClient leaves a peer alone after a failed
 * connection attempt, so a down peer is not hammered with attempts.
 *
 * Contract: after each failed attempt the wait doubles, from `min` up to
 * `max`; a successful HELLO resets it to nothing. While a wait runs, `refusal`
 * says why the client will not try (requests fail fast with it); otherwise it
 * is undefined and the client may connect. Times are performance.now() ms.
 */
export class ReconnectBackoff {
  private waitMs = 0;
  private retryAt = 0;
  private lastFailure = '';

  constructor(private readonly limits: { min: number; max: number }) {}

  /** An attempt failed for `reason`: wait before the next one. */
  failed(reason: string, now: number): void {
    this.waitMs = Math.min(this.limits.max, this.waitMs === 0 ? this.limits.min : this.waitMs * 2);
    this.retryAt = now + this.waitMs;
    this.lastFailure = reason;
  }

  /** A connection was made: the next failure starts from `min` again. */
  succeeded(): void {
    this.waitMs = 0;
  }

  /** Why no attempt may be made at `now`, or undefined when one may. */
  refusal(now: number): string | undefined {
    if (now >= this.retryAt) return undefined;
    return `not reconnecting for another ${Math.ceil(this.retryAt - now)} ms after: ${this.lastFailure}`;
  }
}
