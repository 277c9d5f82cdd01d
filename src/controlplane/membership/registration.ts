/**
 * NodeRegistration: keeps `nodes/<uuid>` present while this node is alive.
 *
 * The key is attached to a lease with an explicit TTL (default 5 s) that the
 * store keeps alive every TTL/3. Every `updateIntervalMs` (default 2 s) the
 * value is rewritten with the node's current usage and `lastSeen`. So:
 *   - kill -9, a frozen process or a partition: the lease runs out and the
 *     key disappears within one TTL — peers see the node DOWN;
 *   - stop() (SIGTERM): the lease is revoked and the key goes at once;
 *   - lease lost while the process lives (store unreachable for a TTL): a
 *     new lease is granted and the key written again, retried with a capped
 *     backoff until it works or stop() is called. Logged both ways.
 *
 * Claiming the key: a registration already there from another live process
 * (a data directory copied to a second machine) is refused with
 * ConflictError. One from a dead predecessor on this host — same hostname,
 * and its pid is gone or is ours (pid reuse in containers) — is taken over,
 * so a restart after kill -9 need not wait for the old lease to expire.
 *
 * Events:
 *   'registered' (info: PeerInfo, again: boolean)  the key was (re)written under a new lease
 *   'lost'       (reason: Error)                   the lease was lost; re-registering
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { hostname as osHostname } from 'node:os';
import { ConflictError } from '../../common/errors.js';
import { logger, type Logger } from '../../common/log.js';
import { NODE_FEATURES } from '../../model/node-features.js';
import type { Lease, MetadataStore } from '../metadata/store.js';
import {
  decodePeerInfo,
  encodePeerInfo,
  nodeKey,
  UUID_PATTERN,
  type PeerInfo,
} from './peer-info.js';

export const DEFAULT_REGISTRATION_TTL_SECONDS = 5;
export const DEFAULT_UPDATE_INTERVAL_MS = 2000;
const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 5000;
/** Lost races for the key at one registration (another writer between read and txn). */
const CLAIM_ATTEMPTS = 3;

export interface NodeUsage {
  capacity: number;
  used: number;
}

/** Data this node moves, as list-peers shows it (REB/REP DATA, Balanced). */
export interface NodeRates {
  rebalancing: boolean;
  /** Bytes/s. */
  rebalanceRate: number;
  replicationRate: number;
  /** Bytes left to move, if known. */
  rebalancePending?: number;
}

export interface NodeRegistrationOptions {
  meta: MetadataStore;
  uuid: string;
  /** Where peers reach this node (--peer-address). */
  address: string;
  /** Sampled at every update. */
  usage: () => NodeUsage;
  /** Sampled at every update too; without it the node reports nothing moving. */
  rates?: () => NodeRates;
  version: string;
  ttlSeconds?: number;
  updateIntervalMs?: number;
  log?: Logger;
  /** For tests of the takeover rule; default: this host and process. */
  hostname?: string;
  pid?: number;
}

export type RegistrationState = 'registering' | 'registered' | 'reregistering' | 'stopped';

export class NodeRegistration extends EventEmitter {
  readonly uuid: string;
  /** Random per NodeRegistration: tells our own key from a predecessor's. */
  readonly instance = randomUUID();
  private readonly meta: MetadataStore;
  private readonly ttlSeconds: number;
  private readonly updateIntervalMs: number;
  private readonly log: Logger;
  private readonly hostname: string;
  private readonly pid: number;
  private readonly startedAt = Date.now();
  private lease: Lease | undefined;
  private current: RegistrationState = 'registering';
  private updateTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryDelayMs = RETRY_FIRST_MS;
  private updating: Promise<void> | undefined;
  private updateFailing = false;
  private last: PeerInfo | undefined;

  private constructor(private readonly options: NodeRegistrationOptions) {
    super();
    if (!UUID_PATTERN.test(options.uuid))
      throw new RangeError(`node uuid must be a lower-case uuid, got ${options.uuid}`);
    this.uuid = options.uuid;
    this.meta = options.meta;
    this.ttlSeconds = options.ttlSeconds ?? DEFAULT_REGISTRATION_TTL_SECONDS;
    this.updateIntervalMs = options.updateIntervalMs ?? DEFAULT_UPDATE_INTERVAL_MS;
    this.log = options.log ?? logger('membership');
    this.hostname = options.hostname ?? osHostname();
    this.pid = options.pid ?? process.pid;
  }

  /** Register now; resolves once the key is written. ConflictError if another live node holds this uuid. */
  static async start(options: NodeRegistrationOptions): Promise<NodeRegistration> {
    const registration = new NodeRegistration(options);
    await registration.register(false);
    registration.updateTimer = setInterval(
      () => registration.update(),
      registration.updateIntervalMs,
    ).unref();
    return registration;
  }

  get state(): RegistrationState {
    return this.current;
  }

  get leaseId(): string | undefined {
    return this.lease?.id;
  }

  /** The value last written (or about to be). */
  get info(): PeerInfo | undefined {
    return this.last;
  }

  private sample(): PeerInfo {
    const { capacity, used } = this.options.usage();
    const rates = this.options.rates?.();
    const bytes = (n: number | undefined) => (Number.isFinite(n) ? Math.max(0, Math.round(n!)) : 0);
    return {
      uuid: this.uuid,
      address: this.options.address,
      hostname: this.hostname,
      pid: this.pid,
      instance: this.instance,
      capacity,
      used,
      startedAt: this.startedAt,
      lastSeen: Date.now(),
      rebalancing: rates?.rebalancing ?? false,
      rebalanceRate: bytes(rates?.rebalanceRate),
      replicationRate: bytes(rates?.replicationRate),
      ...(rates?.rebalancePending !== undefined
        ? { rebalancePending: bytes(rates.rebalancePending) }
        : {}),
      version: this.options.version,
      features: [...NODE_FEATURES],
    };
  }

  /** Grant a lease and claim the key under it. On failure the new lease is revoked. */
  private async register(again: boolean): Promise<void> {
    const lease = await this.meta.grantLease(this.ttlSeconds);
    try {
      await this.claim(lease);
    } catch (err) {
      await lease.revoke().catch(() => undefined);
      throw err;
    }
    if (this.current === 'stopped') {
      await lease.revoke().catch(() => undefined);
      return;
    }
    this.lease = lease;
    this.current = 'registered';
    this.retryDelayMs = RETRY_FIRST_MS;
    lease.once('lost', (reason: Error) => this.onLost(lease, reason));
    if (lease.state !== 'alive') this.onLost(lease, new Error('lease ended while registering'));
    this.log.info(
      { uuid: this.uuid, address: this.options.address, lease: lease.id, ttl: lease.ttlSeconds },
      again ? 'registered again' : 'registered',
    );
    this.emit('registered', this.last, again);
  }

  private async claim(lease: Lease): Promise<void> {
    const key = nodeKey(this.uuid);
    for (let attempt = 0; attempt < CLAIM_ATTEMPTS; attempt++) {
      const kv = await this.meta.get(key);
      if (kv) this.checkTakeover(kv);
      this.last = this.sample();
      const result = await this.meta.txn({
        compare: [{ key, target: 'modRevision', op: '==', value: kv?.modRevision ?? 0 }],
        success: [{ type: 'put', key, value: encodePeerInfo(this.last), lease }],
      });
      if (result.succeeded) return;
    }
    throw new ConflictError(
      `registration ${key} kept changing while this node tried to claim it; is another node using uuid ${this.uuid}?`,
    );
  }

  /** Throws ConflictError unless the registration in `kv` is ours or a dead predecessor's on this host. */
  private checkTakeover(kv: { key: string; value: Buffer }): void {
    let other: PeerInfo;
    try {
      other = decodePeerInfo(kv);
    } catch (err) {
      this.log.warn(
        { key: kv.key, err: (err as Error).message },
        'overwriting an unreadable registration of this uuid',
      );
      return;
    }
    if (other.instance === this.instance) return;
    const predecessor =
      other.hostname === this.hostname && (other.pid === this.pid || !processAlive(other.pid));
    if (predecessor) {
      this.log.info(
        { uuid: this.uuid, previousPid: other.pid },
        'taking over the registration left by a previous process of this node',
      );
      return;
    }
    throw new ConflictError(
      `node ${this.uuid} is already registered by pid ${other.pid} on ${other.hostname} (address ${other.address}): ` +
        'two nodes with one data directory (a copy?). Give one of them a fresh --data-dir',
    );
  }

  private onLost(lease: Lease, reason: Error): void {
    if (this.lease !== lease || this.current === 'stopped') return;
    this.lease = undefined;
    this.current = 'reregistering';
    this.log.warn(
      { uuid: this.uuid, lease: lease.id, reason: reason?.message },
      'registration lease lost; registering again',
    );
    this.emit('lost', reason);
    this.scheduleRetry(0);
  }

  private scheduleRetry(delayMs: number): void {
    if (this.current === 'stopped' || this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (this.current === 'stopped') return;
      this.register(true).catch((err: Error) => {
        if (this.current === 'stopped') return;
        const level = err instanceof ConflictError ? 'error' : 'warn';
        this.log[level](
          { uuid: this.uuid, err: err.message, retryInMs: this.retryDelayMs },
          'could not register again; will retry',
        );
        const delay = this.retryDelayMs;
        this.retryDelayMs = Math.min(this.retryDelayMs * 2, RETRY_MAX_MS);
        this.scheduleRetry(delay);
      });
    }, delayMs).unref();
  }

  /** Rewrite the value (usage, lastSeen) under the current lease; skipped while one write is in flight. */
  private update(): void {
    const lease = this.lease;
    if (this.updating || !lease || lease.state !== 'alive' || this.current !== 'registered') return;
    this.last = this.sample();
    this.updating = this.meta
      .put(nodeKey(this.uuid), encodePeerInfo(this.last), { lease })
      .then(
        () => {
          if (this.updateFailing)
            this.log.info({ uuid: this.uuid }, 'registration updates succeed again');
          this.updateFailing = false;
        },
        (err: Error) => {
          // The lease's own keepalive decides liveness; a failed update only
          // makes lastSeen older. Log the first failure of a streak.
          if (!this.updateFailing && this.current === 'registered')
            this.log.warn({ uuid: this.uuid, err: err.message }, 'registration update failed');
          this.updateFailing = true;
        },
      )
      .finally(() => {
        this.updating = undefined;
      });
  }

  /** Write the current usage now, rather than at the next interval. */
  async refresh(): Promise<void> {
    await this.updating;
    this.update();
    await this.updating;
  }

  /** Leave: revoke the lease so the key disappears at once. Idempotent. */
  async stop(): Promise<void> {
    if (this.current === 'stopped') return;
    this.current = 'stopped';
    clearInterval(this.updateTimer);
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    await this.updating;
    const lease = this.lease;
    this.lease = undefined;
    if (!lease) return;
    try {
      await lease.revoke();
      this.log.info({ uuid: this.uuid }, 'left: registration revoked');
    } catch (err) {
      this.log.warn(
        { uuid: this.uuid, err: (err as Error).message },
        `could not revoke the registration; it expires within ${lease.ttlSeconds}s`,
      );
    }
  }
}

/** kill(pid, 0): whether a process with that pid exists on this host (EPERM: exists, not ours). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
