/**
 * ThreadedMetadataStore: the MetadataStore of a cluster whose etcd client
 * runs on its own thread (./worker.ts), so lease keepalives and watch streams
 * keep going while the main thread is busy serving NBD. See README.md here
 * for the contract; in short, it behaves as EtcdMetadataStore does, plus:
 *
 *   - every call is one message to the worker and one reply; results come
 *     back with Buffers and typed errors as the etcd store gives them;
 *   - a lease here mirrors the worker's: 'lost' and 'revoked' arrive as
 *     notices and are emitted through the same state machine (lease-state.ts);
 *   - if the worker dies, every pending call rejects with
 *     MetadataUnavailableError, every lease is lost, every watch ends through
 *     its onError, the exit is logged, and a new worker is started (at once
 *     if the dead one had run 30 s or more, else after a delay that grows
 *     while workers keep dying young).
 *
 * Deadlines are the worker's (callTimeoutMs per etcd call): a call here has
 * no timer of its own, so a worker that hangs without exiting would hang the
 * calls waiting on it — as a hung main thread did before.
 */
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { logger, type Logger } from '../../common/log.js';
import type { EtcdStoreOptions } from '../metadata/etcd/etcd-store.js';
import {
  LeaseLostError,
  LeaseNotFoundError,
  MetadataClosedError,
  MetadataUnavailableError,
} from '../metadata/errors.js';
import { checkTxn } from '../metadata/keys.js';
import { LeaseStateMachine } from '../metadata/lease-state.js';
import {
  leaseIdOf,
  type GrantLeaseOptions,
  type KeyValue,
  type Lease,
  type LeaseState,
  type MetadataStore,
  type PutOptions,
  type TxnOp,
  type TxnRequest,
  type TxnResult,
  type WatchEvent,
  type WatchOptions,
  type Watcher,
} from '../metadata/store.js';
import {
  asBuffer,
  exact,
  type Message,
  type Op,
  type ReplyValues,
  type Request,
  type WireKeyValue,
  type WireTxnOp,
  type WireTxnRequest,
  type WorkerSetup,
} from './protocol.js';
import { fromWire } from './wire-errors.js';

export type ThreadedStoreOptions = EtcdStoreOptions;

const WORKER_FILE = fileURLToPath(new URL('./worker.js', import.meta.url));
/** A worker that lived this long before dying is restarted at once; younger ones back off. */
const STABLE_AFTER_MS = 30_000;
const RESTART_FIRST_DELAY_MS = 250;
const RESTART_MAX_DELAY_MS = 10_000;
/** close() waits this much beyond the store's own revoke bound before ending the worker anyway. */
const CLOSE_GRACE_MS = 3000;
const DEFAULT_CLOSE_TIMEOUT_MS = 2000;

interface Pending {
  op: Op;
  resolve(value: unknown): void;
  reject(err: Error): void;
}

export class ThreadedMetadataStore implements MetadataStore {
  readonly log: Logger;
  private readonly setup: WorkerSetup;
  private readonly closeTimeoutMs: number;
  private thread: Worker | undefined;
  private startedAt = 0;
  /** Why the last worker died (its uncaught error), for the exit log and the errors. */
  private crash: Error | undefined;
  private restartTimer: NodeJS.Timeout | undefined;
  private restartDelayMs = 0;
  private restarts = 0;
  private lastId = 0;
  private readonly pending = new Map<number, Pending>();
  /** @internal leases and watchers register themselves */
  readonly leases = new Map<string, ThreadedLease>();
  /** @internal */
  readonly watchers = new Map<number, ThreadedWatcher>();
  private lastWatch = 0;
  private closing: Promise<void> | undefined;

  constructor(options: ThreadedStoreOptions) {
    const { log, ...etcd } = options;
    this.log = log ?? logger('metadata');
    this.setup = { etcd, logLevel: this.log.level };
    this.closeTimeoutMs = options.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS;
    this.start();
  }

  // ── the worker ─────────────────────────────────────────────────────────

  private start(): void {
    const thread = new Worker(WORKER_FILE, { workerData: this.setup, name: 'torus control plane' });
    this.thread = thread;
    this.startedAt = Date.now();
    this.crash = undefined;
    thread.on('message', (message: Message) => this.receive(message));
    // An uncaught exception in the worker: 'exit' follows, where it is handled.
    thread.on('error', (err) => {
      if (thread === this.thread) this.crash = err;
    });
    thread.on('exit', (code) => {
      if (thread === this.thread) this.died(code);
    });
  }

  /**
   * The worker exited without being asked to. Everything that depended on it
   * ends the way it would if etcd had become unreachable: calls fail as
   * unavailable (a write's outcome is unknown), leases are lost, watches end.
   */
  private died(code: number): void {
    this.thread = undefined;
    const crash = this.crash;
    const lived = Date.now() - this.startedAt;
    const why = `the control-plane thread exited unexpectedly (exit code ${code}${crash ? `: ${crash.message}` : ''})`;
    this.restartDelayMs =
      lived >= STABLE_AFTER_MS
        ? 0
        : this.restartDelayMs === 0
          ? RESTART_FIRST_DELAY_MS
          : Math.min(this.restartDelayMs * 2, RESTART_MAX_DELAY_MS);
    const restart = !this.closing;
    this.log.error(
      {
        err: crash,
        exitCode: code,
        livedMs: lived,
        pendingCalls: this.pending.size,
        leases: this.leases.size,
        watches: this.watchers.size,
        restartInMs: restart ? this.restartDelayMs : undefined,
      },
      `${why}; pending calls fail, leases are lost, watches end${restart ? '; starting a new one' : ''}`,
    );
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const call of pending)
      call.reject(
        new MetadataUnavailableError(
          `etcd ${call.op}: ${why} before answering; the outcome of a write is unknown`,
          { cause: crash },
        ),
      );
    for (const lease of [...this.leases.values()])
      lease.settle(
        'lost',
        new LeaseLostError(lease.id, `lease ${lease.id}: ${why}; nothing keeps it alive any more`, {
          cause: crash,
        }),
      );
    for (const watcher of [...this.watchers.values()])
      watcher.ended(new MetadataUnavailableError(`watch ended: ${why}`, { cause: crash }));
    if (!restart) return;
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (this.closing) return;
      this.restarts++;
      this.log.info({ restarts: this.restarts }, 'control-plane thread restarted');
      this.start();
    }, this.restartDelayMs).unref();
  }

  /** How many times a dead worker was replaced. */
  get restartCount(): number {
    return this.restarts;
  }

  /** @internal for tests: the current worker, e.g. to terminate it as a crash would. */
  get worker(): Worker | undefined {
    return this.thread;
  }

  private receive(message: Message): void {
    switch (message.type) {
      case 'reply':
      case 'fail': {
        const call = this.pending.get(message.id);
        if (!call) return;
        this.pending.delete(message.id);
        if (message.type === 'fail') call.reject(fromWire(message.error));
        else call.resolve(this.revive(call.op, message.value));
        return;
      }
      case 'lease':
        this.leases
          .get(message.lease)
          ?.settle(message.state, message.error && fromWire(message.error));
        return;
      case 'event':
        this.watchers.get(message.watch)?.deliver({
          type: message.event,
          key: message.key,
          value: asBuffer(message.value),
          modRevision: message.modRevision,
        });
        return;
      case 'watchEnd':
        this.watchers.get(message.watch)?.ended(fromWire(message.error));
        return;
    }
  }

  /**
   * A reply's value as the caller expects it: Buffers in place of the
   * Uint8Arrays that crossed, and for a grant the Lease itself — created here,
   * while handling the reply, so a notice about it that follows finds it.
   */
  private revive(op: Op, value: unknown): unknown {
    switch (op) {
      case 'get':
        return value && reviveKeyValue(value as WireKeyValue);
      case 'getPrefix':
        (value as WireKeyValue[]).forEach(reviveKeyValue);
        return value;
      case 'txn':
        for (const r of (value as ReplyValues['txn']).results)
          if (r.type === 'get') r.kvs.forEach(reviveKeyValue);
        return value;
      case 'grantLease': {
        const { id, ttlSeconds } = value as ReplyValues['grantLease'];
        const lease = new ThreadedLease(this, id, ttlSeconds);
        this.leases.set(id, lease);
        return lease;
      }
      default:
        return value;
    }
  }

  /** One request, one reply. `request.id` is assigned here. */
  private send<T>(request: Request): Promise<T> {
    const thread = this.thread;
    if (!thread) {
      return Promise.reject(
        new MetadataUnavailableError(
          `etcd ${request.op}: the control-plane thread is restarting after it exited (${this.crash?.message ?? 'see the log'}); retry shortly`,
        ),
      );
    }
    request.id = ++this.lastId;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(request.id, {
        op: request.op,
        resolve: resolve as (value: unknown) => void,
        reject,
      });
      try {
        thread.postMessage(request);
      } catch (err) {
        // Something in the request cannot be cloned: a programmer error, nothing was sent.
        this.pending.delete(request.id);
        reject(err as Error);
      }
    });
  }

  private call<T>(request: Request): Promise<T> {
    if (this.closing)
      return Promise.reject(new MetadataClosedError('etcd metadata store is closed'));
    return this.send<T>(request);
  }

  // ── MetadataStore ──────────────────────────────────────────────────────

  get(key: string): Promise<KeyValue | undefined> {
    return this.call({ id: 0, op: 'get', key });
  }

  getPrefix(prefix: string): Promise<KeyValue[]> {
    return this.call({ id: 0, op: 'getPrefix', prefix });
  }

  async put(key: string, value: Buffer, options: PutOptions = {}): Promise<number> {
    checkTxn({ compare: [], success: [{ type: 'put', key, value }] });
    return this.call({
      id: 0,
      op: 'put',
      key,
      value: exact(value),
      lease: leaseIdOf(options.lease),
    });
  }

  delete(key: string): Promise<number> {
    return this.call({ id: 0, op: 'delete', key });
  }

  deletePrefix(prefix: string): Promise<number> {
    return this.call({ id: 0, op: 'deletePrefix', prefix });
  }

  async txn(request: TxnRequest): Promise<TxnResult> {
    checkTxn(request);
    return this.call({ id: 0, op: 'txn', request: wireTxn(request) });
  }

  async grantLease(ttlSeconds: number, options: GrantLeaseOptions = {}): Promise<Lease> {
    return this.call({
      id: 0,
      op: 'grantLease',
      ttlSeconds,
      keepAlive: options.keepAlive !== false,
    });
  }

  async watchPrefix(
    prefix: string,
    options: WatchOptions,
    onEvent: (event: WatchEvent) => void,
  ): Promise<Watcher> {
    if (this.closing) throw new MetadataClosedError('etcd metadata store is closed');
    // Registered before the request: the worker may post events (history
    // replayed from fromRevision) before it answers that the watch is on.
    const watcher = new ThreadedWatcher(this, ++this.lastWatch, onEvent, options.onError);
    this.watchers.set(watcher.id, watcher);
    try {
      await this.send({
        id: 0,
        op: 'watch',
        watch: watcher.id,
        prefix,
        fromRevision: options.fromRevision,
      });
    } catch (err) {
      watcher.discard();
      throw err;
    }
    return watcher;
  }

  currentRevision(): Promise<number> {
    return this.call({ id: 0, op: 'currentRevision' });
  }

  /** @internal for ThreadedLease */
  keepAliveOnce(lease: string): Promise<void> {
    return this.call({ id: 0, op: 'keepAliveOnce', lease });
  }

  /** @internal for ThreadedLease: after close() the worker's close revokes it. */
  async revokeLease(lease: string): Promise<void> {
    if (this.closing) return;
    await this.send({ id: 0, op: 'revoke', lease });
  }

  /** @internal for ThreadedWatcher: nothing to stop when the worker or the store is gone. */
  async unwatch(watch: number): Promise<void> {
    if (this.closing || !this.thread) return;
    await this.send({ id: 0, op: 'unwatch', watch }).catch((err: Error) => {
      if (!(err instanceof MetadataUnavailableError)) throw err;
    });
  }

  // ── lifecycle ──────────────────────────────────────────────────────────

  /**
   * The worker's store revokes live leases (bounded by closeTimeoutMs) and
   * ends its watches; then the worker is terminated. Nothing of ours is left:
   * no thread, port or timer keeps the process alive.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
    const thread = this.thread;
    if (thread) {
      let timer: NodeJS.Timeout | undefined;
      const bound = new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          this.log.warn(
            { afterMs: this.closeTimeoutMs + CLOSE_GRACE_MS },
            'control-plane thread did not finish closing the store; ending it',
          );
          resolve();
        }, this.closeTimeoutMs + CLOSE_GRACE_MS);
      });
      try {
        await Promise.race([this.send({ id: 0, op: 'close' }), bound]);
      } catch (err) {
        this.log.warn(
          { err },
          'closing the etcd store on the control-plane thread failed; ending the thread',
        );
      } finally {
        clearTimeout(timer);
      }
      this.thread = undefined; // its exit is ours, not a crash
      await thread.terminate();
    }
    const closed = new MetadataClosedError(
      'etcd metadata store closed before the control-plane thread answered',
    );
    for (const call of this.pending.values()) call.reject(closed);
    this.pending.clear();
    // The worker's close revoked them and said so; any it could not reach are revoked all the same.
    for (const lease of [...this.leases.values()]) lease.settle('revoked');
    for (const watcher of [...this.watchers.values()]) watcher.discard();
  }
}

function reviveKeyValue(kv: WireKeyValue): KeyValue {
  (kv as unknown as KeyValue).value = asBuffer(kv.value);
  return kv as unknown as KeyValue;
}

function wireOps(ops: TxnOp[]): WireTxnOp[] {
  return ops.map((op) =>
    op.type === 'put'
      ? { type: 'put', key: op.key, value: exact(op.value), lease: leaseIdOf(op.lease) }
      : op,
  );
}

/** The request as it can cross: exact bytes, leases as ids. */
function wireTxn(request: TxnRequest): WireTxnRequest {
  return {
    compare: request.compare.map((c) =>
      c.target === 'value' ? { key: c.key, target: 'value', op: c.op, value: exact(c.value) } : c,
    ),
    success: wireOps(request.success),
    ...(request.failure ? { failure: wireOps(request.failure) } : {}),
  };
}

/** The main thread's view of a lease that lives in the worker. */
export class ThreadedLease extends LeaseStateMachine {
  constructor(
    private readonly store: ThreadedMetadataStore,
    readonly id: string,
    readonly ttlSeconds: number,
  ) {
    super();
    this.transition('alive');
  }

  /** @internal the worker said it ended, the worker died, or the store closed. */
  settle(state: 'lost' | 'revoked', reason?: Error): void {
    if (state === 'lost') {
      if (this.transition('lost', reason ?? new LeaseLostError(this.id, `lease ${this.id} lost`)))
        this.store.log.warn({ lease: this.id, err: reason }, 'lease lost');
    } else {
      this.transition('revoked');
    }
  }

  async keepAliveOnce(): Promise<void> {
    if (this.state !== 'alive') throw new LeaseNotFoundError(this.id);
    await this.store.keepAliveOnce(this.id);
  }

  /**
   * alive → revoked here first and for good (as EtcdLease does), then the
   * worker revokes it in etcd. Its own 'revoked' notice then finds nothing.
   */
  async revoke(): Promise<void> {
    if (!this.transition('revoked')) return;
    await this.store.revokeLease(this.id);
  }

  protected override onEnded(_state: LeaseState): void {
    this.store.leases.delete(this.id);
  }
}

/** The main thread's end of a watch that runs in the worker. */
export class ThreadedWatcher implements Watcher {
  private closed = false;

  constructor(
    private readonly store: ThreadedMetadataStore,
    readonly id: number,
    private readonly onEvent: (event: WatchEvent) => void,
    private readonly onError: ((err: Error) => void) | undefined,
  ) {}

  /** @internal */
  deliver(event: WatchEvent): void {
    if (this.closed) return;
    try {
      this.onEvent(event);
    } catch (err) {
      this.store.log.error({ err, key: event.key }, 'watch callback threw; the watch goes on');
    }
  }

  /** @internal the watch ended on its own (in the worker, or with it). */
  ended(err: Error): void {
    if (this.closed) return;
    this.discard();
    if (this.onError) this.onError(err);
    else this.store.log.error({ err }, 'watch ended');
  }

  /** @internal stop delivering, without telling the worker. */
  discard(): void {
    this.closed = true;
    this.store.watchers.delete(this.id);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.discard();
    await this.store.unwatch(this.id);
  }
}

/**
 * Start the control-plane thread and check that etcd answers (one read under
 * the call deadline), so a wrong endpoint or TLS file fails here — with the
 * same error class as openEtcdMetadataStore — rather than at first use.
 */
export async function openThreadedMetadataStore(
  options: ThreadedStoreOptions,
): Promise<ThreadedMetadataStore> {
  const store = new ThreadedMetadataStore(options);
  try {
    await store.currentRevision();
  } catch (err) {
    await store.close();
    throw err;
  }
  return store;
}
