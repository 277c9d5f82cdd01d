/**
 * An in-process lease. Expiry is a timer TTL after the last renewal; with
 * keepAlive on, renewal runs every TTL/3, so only an event loop stalled for
 * most of a TTL (or keepAlive off) lets it lapse — the same contract etcd
 * gives a client that stops talking. Timers are unref'd: a lease alone does
 * not keep the process running.
 */
import { LeaseLostError, LeaseNotFoundError } from '../errors.js';
import { LeaseStateMachine } from '../lease-state.js';

/** The store's side of its leases: ending one deletes its keys. */
export interface LeaseTable {
  endLease(lease: EmbeddedLease, how: 'revoked' | 'lost', reason?: Error): Promise<void>;
}

export class EmbeddedLease extends LeaseStateMachine {
  private expiryTimer: NodeJS.Timeout | undefined;
  private keepAliveTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly store: LeaseTable,
    readonly id: string,
    readonly ttlSeconds: number,
    private readonly autoKeepAlive: boolean,
  ) {
    super();
  }

  start(): void {
    this.transition('alive');
    this.expiryTimer = setTimeout(() => this.expire(), this.ttlSeconds * 1000).unref();
    if (this.autoKeepAlive) {
      this.keepAliveTimer = setInterval(() => this.renew(), (this.ttlSeconds * 1000) / 3).unref();
    }
  }

  private renew(): void {
    this.expiryTimer?.refresh();
  }

  async keepAliveOnce(): Promise<void> {
    if (this.state !== 'alive') throw new LeaseNotFoundError(this.id);
    this.renew();
  }

  async revoke(): Promise<void> {
    await this.store.endLease(this, 'revoked');
  }

  private expire(): void {
    const reason = new LeaseLostError(
      this.id,
      `lease ${this.id} expired: not kept alive within its ${this.ttlSeconds}s TTL`,
    );
    this.store.endLease(this, 'lost', reason).catch(() => undefined);
  }

  /** @internal the store's half of endLease: record the terminal state. */
  settle(how: 'revoked' | 'lost', reason?: Error): void {
    this.transition(how, reason);
  }

  protected override onEnded(): void {
    clearTimeout(this.expiryTimer);
    clearInterval(this.keepAliveTimer);
  }
}
