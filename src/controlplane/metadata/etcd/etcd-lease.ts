/**
 * An etcd lease with its own keepalive loop (see Lease in ../store.ts for the
 * states).
 *
 * Timing contract:
 *   - keepalives go out every TTL/3 on one bidirectional stream;
 *   - `confirmedUntil` is the send time of the last acknowledged keepalive
 *     (or of the grant) plus the TTL: etcd renewed the lease no earlier than
 *     that send, so until then the lease is certainly alive;
 *   - when `confirmedUntil` passes without a newer acknowledgement the lease
 *     is lost, whatever the reason (etcd frozen, partitioned, slow). etcd may
 *     keep it a little longer, but we can no longer prove it, so we stop
 *     acting as its holder — that is the safe side;
 *   - an answer with TTL 0 means etcd already dropped it: lost at once.
 * A broken stream is reopened (after 250 ms) while `confirmedUntil` lasts.
 */
import type { IDuplexStream, ILeaseKeepAliveRequest, ILeaseKeepAliveResponse } from 'etcd3';
import { LeaseLostError, LeaseNotFoundError } from '../errors.js';
import { LeaseStateMachine } from '../lease-state.js';
import { CallTimedOutError, toMetadataError } from './convert.js';
import type { EtcdMetadataStore } from './etcd-store.js';

type KeepAliveStream = IDuplexStream<ILeaseKeepAliveRequest, ILeaseKeepAliveResponse>;

const STREAM_RETRY_MS = 250;

export class EtcdLease extends LeaseStateMachine {
  id = '';
  ttlSeconds = 0;
  private confirmedUntil = 0;
  private expiryTimer: NodeJS.Timeout | undefined;
  private keepAliveTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private stream: KeepAliveStream | undefined;
  /** Send times of keepalives awaiting an answer; etcd answers a stream in order. */
  private inFlight: number[] = [];

  constructor(
    private readonly store: EtcdMetadataStore,
    private readonly autoKeepAlive: boolean,
    private readonly forget: () => void,
  ) {
    super();
  }

  /** pending → alive. The TTL is always given explicitly; the granted one is kept. */
  async grant(ttlSeconds: number): Promise<void> {
    const sentAt = Date.now();
    const res = await this.store.call('leaseGrant', (o) =>
      this.store.client.leaseClient.leaseGrant({ TTL: ttlSeconds }, o),
    );
    if (res.error) throw new Error(`etcd refused lease grant: ${res.error}`);
    this.id = String(res.ID);
    this.ttlSeconds = Number(res.TTL);
    this.transition('alive');
    this.confirm(sentAt);
    if (this.autoKeepAlive) {
      this.keepAliveTimer = setInterval(() => this.sendKeepAlive(), (this.ttlSeconds * 1000) / 3);
      this.openStream();
    }
  }

  /** Extend `confirmedUntil` after etcd acknowledged a renewal sent at `sentAt`. */
  private confirm(sentAt: number): void {
    const until = sentAt + this.ttlSeconds * 1000;
    if (until <= this.confirmedUntil) return;
    this.confirmedUntil = until;
    this.armExpiryTimer();
  }

  private armExpiryTimer(): void {
    clearTimeout(this.expiryTimer);
    this.expiryTimer = setTimeout(
      () => this.checkExpiry(),
      Math.max(0, this.confirmedUntil - Date.now()),
    );
  }

  private checkExpiry(): void {
    if (this.ended) return;
    // Timers run on libuv's monotonic millisecond clock, Date.now() on the
    // wall clock: the timer can fire a millisecond before confirmedUntil by
    // Date.now(). Re-arm rather than return, or the lease is never declared
    // lost (seen: a frozen etcd left a lease 'alive' for 15 s, 1 run in 6).
    if (Date.now() < this.confirmedUntil) return this.armExpiryTimer();
    this.lose(
      new LeaseLostError(
        this.id,
        `lease ${this.id}: no keepalive acknowledged by etcd within its ${this.ttlSeconds}s TTL`,
      ),
    );
  }

  private lose(reason: Error): void {
    if (this.transition('lost', reason))
      this.store.log.warn({ lease: this.id, err: reason }, 'lease lost');
  }

  private openStream(): void {
    if (this.ended) return;
    this.store.client.leaseClient.leaseKeepAlive().then(
      (stream) => {
        if (this.ended) return closeStream(stream);
        this.stream = stream;
        this.inFlight = [];
        stream.on('data', (res) => {
          if (stream !== this.stream) return;
          const sentAt = this.inFlight.shift();
          if (res.TTL === '0' || Number(res.TTL) <= 0) {
            this.lose(new LeaseLostError(this.id, `lease ${this.id}: etcd reports it expired`));
          } else if (sentAt !== undefined) {
            this.confirm(sentAt);
          }
        });
        const broken = (err?: Error) => {
          if (stream !== this.stream) return;
          this.dropStream();
          this.store.log.debug({ lease: this.id, err }, 'lease keepalive stream broke; reopening');
          this.retryLater();
        };
        stream.on('error', broken);
        stream.on('end', () => broken());
        this.sendKeepAlive();
      },
      (err: unknown) => {
        this.store.log.debug({ lease: this.id, err }, 'could not open lease keepalive stream');
        this.retryLater();
      },
    );
  }

  private retryLater(): void {
    if (this.ended || this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.openStream();
    }, STREAM_RETRY_MS);
  }

  private sendKeepAlive(): void {
    if (!this.stream || this.ended) return;
    this.inFlight.push(Date.now());
    try {
      this.stream.write({ ID: this.id });
    } catch (err) {
      this.dropStream();
      this.retryLater();
    }
  }

  private dropStream(): void {
    const stream = this.stream;
    this.stream = undefined;
    this.inFlight = [];
    if (stream) closeStream(stream);
  }

  /** One renewal on a short-lived stream, bounded by the call timeout. */
  async keepAliveOnce(): Promise<void> {
    if (this.state !== 'alive') throw new LeaseNotFoundError(this.id);
    const sentAt = Date.now();
    const res = await this.store.call(
      'leaseKeepAlive',
      async (o) => {
        const stream = await this.store.client.leaseClient.leaseKeepAlive();
        let timer: NodeJS.Timeout | undefined;
        try {
          return await new Promise<ILeaseKeepAliveResponse>((resolve, reject) => {
            // Streams take no deadline; this timer is the call's, so the stream is closed either way.
            timer = setTimeout(
              () => reject(new CallTimedOutError('no keepalive answer before the deadline')),
              Math.max(0, Number(o.deadline) - Date.now()),
            );
            stream.on('data', resolve);
            stream.on('error', reject);
            stream.on('end', () => reject(new Error('keepalive stream ended before an answer')));
            stream.write({ ID: this.id });
          });
        } finally {
          clearTimeout(timer);
          closeStream(stream);
        }
      },
      this.id,
    );
    if (res.TTL === '0' || Number(res.TTL) <= 0) {
      const err = new LeaseNotFoundError(this.id);
      this.lose(
        new LeaseLostError(this.id, `lease ${this.id}: etcd reports it expired`, { cause: err }),
      );
      throw err;
    }
    this.confirm(sentAt);
  }

  /**
   * alive → revoked, then ask etcd to drop the lease and its keys. The state
   * changes first and for good: even if etcd cannot be reached (the call
   * then throws MetadataUnavailableError), no keepalive is sent any more and
   * the keys go when the TTL runs out.
   */
  async revoke(): Promise<void> {
    await this.revokeWithin(this.store.callTimeoutMs);
  }

  /** @internal revoke with a bound of its own (close() uses a shorter one). */
  async revokeWithin(timeoutMs: number): Promise<void> {
    if (!this.transition('revoked')) return;
    try {
      await this.store.call(
        'leaseRevoke',
        (o) => this.store.client.leaseClient.leaseRevoke({ ID: this.id }, o),
        this.id,
        timeoutMs,
      );
    } catch (err) {
      const converted = toMetadataError(err, 'leaseRevoke', this.id);
      if (converted instanceof LeaseNotFoundError) return; // already gone: that is what we wanted
      throw converted;
    }
  }

  protected override onEnded(): void {
    clearTimeout(this.expiryTimer);
    clearInterval(this.keepAliveTimer);
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.dropStream();
    this.forget();
  }
}

/**
 * end() before cancel(): etcd3 marks the host failed — closing every channel
 * to it — when a stream that is still writable errors, and cancel() raises
 * CANCELLED as an error. Ending first makes our own teardown harmless.
 */
export function closeStream(stream: {
  end(): void;
  cancel(): void;
  on(event: 'error', fn: (err: Error) => void): unknown;
}): void {
  stream.on('error', () => undefined);
  try {
    stream.end();
    stream.cancel();
  } catch {
    // already closed
  }
}
