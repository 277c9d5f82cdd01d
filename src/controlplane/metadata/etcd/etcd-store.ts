/**
 * EtcdMetadataStore: the MetadataStore of a cluster, over etcd v3 through the
 * etcd3 package's raw gRPC clients (kv, leaseClient, watchClient).
 *
 * Why not etcd3's high-level helpers — measured with etcd3 1.1.2 against
 * etcd 3.4:
 *   - unary calls carry no deadline by default: a `get` hung for as long as
 *     etcd was frozen. Here every call gets one (callTimeoutMs), backed by our
 *     own timer in case a call stalls before gRPC applies it, and expiry
 *     becomes a retryable MetadataUnavailableError.
 *   - its default fault handling retries every "recoverable" error three
 *     times (a retried txn can report failure for a write it already made)
 *     and opens a 5 s circuit breaker after three failures, so a store that
 *     recovered still refused calls. Both are replaced by pass-throughs:
 *     callers see one attempt and decide (isRetryable) themselves.
 *   - its Lease keeps a keepalive timer that holds the process open after
 *     close(). Leases here (etcd-lease.ts) own every timer and stream and
 *     release them on any terminal state.
 *
 * Every key is stored under `prefix` (default "/torus/"), so one etcd can
 * serve other tenants or several Torus clusters.
 */
import type { CallOptions } from '@grpc/grpc-js';
import {
  Etcd3,
  type IKeyValue,
  type IOptions,
  type IRequestOp,
  type ICompare,
  type ITxnResponse,
} from 'etcd3';
import { logger, type Logger } from '../../../common/log.js';
import { MetadataClosedError } from '../errors.js';
import { checkTxn, prefixRangeEnd } from '../keys.js';
import {
  leaseIdOf,
  type Compare,
  type GrantLeaseOptions,
  type KeyValue,
  type Lease,
  type MetadataStore,
  type PutOptions,
  type TxnOp,
  type TxnOpResult,
  type TxnRequest,
  type TxnResult,
  type WatchEvent,
  type WatchOptions,
  type Watcher,
} from '../store.js';
import { CallTimedOutError, toMetadataError } from './convert.js';
import { loadTlsCredentials, parseEndpoints, type EtcdTlsFiles } from './endpoints.js';
import { EtcdLease } from './etcd-lease.js';
import { EtcdWatcher } from './etcd-watcher.js';
import { ownedCopy } from '../../../common/owned-copy.js';

/**
 * grpc-js gives the endpoint's host as the TLS server name even when it is
 * an IP address (etcd certificates often name 127.0.0.1 or a pod IP), and
 * Node then warns, on stderr, once per process (DEP0123). The server's
 * certificate is checked against its IP SANs all the same; the warning only
 * alarms operators, so that one warning is dropped. Installed where the etcd
 * client is loaded: the main thread of torusctl, the control-plane thread of
 * torusd.
 */
const emitWarning = process.emitWarning;
process.emitWarning = function (warning: string | Error, ...rest: unknown[]): void {
  const options = rest[0];
  const code =
    typeof options === 'object' && options !== null
      ? (options as { code?: unknown }).code
      : rest[1];
  if (code === 'DEP0123') return;
  (emitWarning as (...args: unknown[]) => void).call(process, warning, ...rest);
} as typeof process.emitWarning;

export interface EtcdStoreOptions {
  /** `127.0.0.1:2379`, `http://a:2379,http://b:2379`, or an array of those. */
  endpoints: string | readonly string[];
  /** Key space prefix; default "/torus/". */
  prefix?: string;
  /** Deadline of each unary call; default 5000 ms. */
  callTimeoutMs?: number;
  /** Bound on revoking leases during close(); default 2000 ms. */
  closeTimeoutMs?: number;
  tls?: EtcdTlsFiles;
  auth?: { username: string; password: string };
  log?: Logger;
}

const DEFAULT_PREFIX = '/torus/';
const DEFAULT_CALL_TIMEOUT_MS = 5000;
const DEFAULT_CLOSE_TIMEOUT_MS = 2000;
/** Keys per page of a prefix read; pages share one revision, so the result is one snapshot. */
const PAGE_SIZE = 1000;

type FaultHandling = NonNullable<IOptions['faultHandling']>;
type Policy = NonNullable<FaultHandling['global']>;

/**
 * A policy that runs the call once. etcd3 only ever calls `execute` on its
 * policies; the cast stands in for cockatiel's noop, which is not ours to import.
 */
const runOnce = {
  execute: <T>(fn: (context: { signal: AbortSignal }) => PromiseLike<T> | T) =>
    Promise.resolve().then(() => fn({ signal: new AbortController().signal })),
} as unknown as Policy;

export class EtcdMetadataStore implements MetadataStore {
  /** @internal shared with leases and watchers */
  readonly client: Etcd3;
  readonly prefix: string;
  readonly callTimeoutMs: number;
  private readonly closeTimeoutMs: number;
  private readonly prefixBytes: Buffer;
  private readonly leases = new Set<EtcdLease>();
  private readonly watchers = new Set<EtcdWatcher>();
  private closing: Promise<void> | undefined;

  constructor(
    options: EtcdStoreOptions,
    readonly log: Logger = options.log ?? logger('metadata'),
  ) {
    const { hosts, https } = parseEndpoints(options.endpoints);
    this.prefix = options.prefix ?? DEFAULT_PREFIX;
    this.prefixBytes = Buffer.from(this.prefix);
    this.callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.closeTimeoutMs = options.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS;
    const credentials = loadTlsCredentials(options.tls, https);
    this.client = new Etcd3({
      hosts,
      ...(credentials ? { credentials } : {}),
      ...(options.auth
        ? {
            auth: {
              ...options.auth,
              callOptions: () => ({ deadline: Date.now() + this.callTimeoutMs }),
            },
          }
        : {}),
      dialTimeout: this.callTimeoutMs,
      faultHandling: { global: runOnce, host: () => runOnce },
    });
  }

  // ── key mapping ────────────────────────────────────────────────────────

  /** @internal */
  keyBytes(key: string): Buffer {
    return Buffer.concat([this.prefixBytes, Buffer.from(key)]);
  }

  /** @internal */
  keyOf(raw: Buffer): string {
    return raw.subarray(this.prefixBytes.length).toString();
  }

  private toKeyValue(raw: IKeyValue): KeyValue {
    const kv: KeyValue = {
      key: this.keyOf(raw.key),
      // A subarray of the whole gRPC response: a value kept would keep it all.
      value: ownedCopy(raw.value),
      createRevision: Number(raw.create_revision),
      modRevision: Number(raw.mod_revision),
      version: Number(raw.version),
    };
    if (raw.lease && raw.lease !== '0') kv.lease = String(raw.lease);
    return kv;
  }

  /**
   * Run one unary call under a deadline. gRPC enforces `deadline`; the timer
   * (a little later) catches a call stuck before it reached gRPC, e.g. in
   * connection setup. Errors leave here converted.
   * @internal
   */
  async call<T>(
    what: string,
    run: (options: CallOptions) => Promise<T>,
    leaseId?: string,
    timeoutMs = this.callTimeoutMs,
  ): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const stuck = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new CallTimedOutError(`no answer within ${timeoutMs} ms`)),
        timeoutMs + 250,
      );
    });
    try {
      return await Promise.race([run({ deadline: Date.now() + timeoutMs }), stuck]);
    } catch (err) {
      throw toMetadataError(err, what, leaseId);
    } finally {
      clearTimeout(timer);
    }
  }

  private checkOpen(): void {
    if (this.closing) throw new MetadataClosedError('etcd metadata store is closed');
  }

  // ── reads ──────────────────────────────────────────────────────────────

  async get(key: string): Promise<KeyValue | undefined> {
    this.checkOpen();
    const res = await this.call('get', (o) => this.client.kv.range({ key: this.keyBytes(key) }, o));
    return res.kvs.length > 0 ? this.toKeyValue(res.kvs[0]) : undefined;
  }

  async getPrefix(prefix: string): Promise<KeyValue[]> {
    this.checkOpen();
    const start = this.keyBytes(prefix);
    const end = prefixRangeEnd(start);
    const out: KeyValue[] = [];
    let from = start;
    let revision: string | undefined;
    for (;;) {
      const res = await this.call('getPrefix', (o) =>
        this.client.kv.range(
          { key: from, range_end: end, limit: PAGE_SIZE, ...(revision ? { revision } : {}) },
          o,
        ),
      );
      revision ??= res.header.revision;
      for (const raw of res.kvs) out.push(this.toKeyValue(raw));
      if (!res.more || res.kvs.length === 0) return out;
      from = Buffer.concat([res.kvs[res.kvs.length - 1].key, Buffer.from([0])]);
    }
  }

  async currentRevision(): Promise<number> {
    this.checkOpen();
    const res = await this.call('currentRevision', (o) =>
      this.client.kv.range({ key: this.prefixBytes, limit: 1, keys_only: true }, o),
    );
    return Number(res.header.revision);
  }

  // ── writes ─────────────────────────────────────────────────────────────

  async put(key: string, value: Buffer, options: PutOptions = {}): Promise<number> {
    checkTxn({ compare: [], success: [{ type: 'put', key, value }] });
    this.checkOpen();
    const lease = leaseIdOf(options.lease);
    const res = await this.call(
      'put',
      (o) => this.client.kv.put({ key: this.keyBytes(key), value, ...(lease ? { lease } : {}) }, o),
      lease,
    );
    return Number(res.header.revision);
  }

  async delete(key: string): Promise<number> {
    this.checkOpen();
    const res = await this.call('delete', (o) =>
      this.client.kv.deleteRange({ key: this.keyBytes(key) }, o),
    );
    return Number(res.deleted);
  }

  async deletePrefix(prefix: string): Promise<number> {
    this.checkOpen();
    const start = this.keyBytes(prefix);
    const res = await this.call('deletePrefix', (o) =>
      this.client.kv.deleteRange({ key: start, range_end: prefixRangeEnd(start) }, o),
    );
    return Number(res.deleted);
  }

  async txn(request: TxnRequest): Promise<TxnResult> {
    checkTxn(request);
    this.checkOpen();
    const leaseOf = (ops: TxnOp[]) =>
      ops
        .map((op) => (op.type === 'put' ? leaseIdOf(op.lease) : undefined))
        .find((id) => id !== undefined);
    const res: ITxnResponse = await this.call(
      'txn',
      (o) =>
        this.client.kv.txn(
          {
            compare: request.compare.map((c) => this.toCompare(c)),
            success: request.success.map((op) => this.toRequestOp(op)),
            failure: (request.failure ?? []).map((op) => this.toRequestOp(op)),
          },
          o,
        ),
      leaseOf([...request.success, ...(request.failure ?? [])]),
    );
    const ran = res.succeeded ? request.success : (request.failure ?? []);
    const revision = Number(res.header.revision);
    const results = ran.map((op, i): TxnOpResult => {
      const response = res.responses[i];
      switch (op.type) {
        case 'get':
          return {
            type: 'get',
            kvs: response.response_range.kvs.map((raw) => this.toKeyValue(raw)),
          };
        case 'put':
          return { type: 'put', revision };
        case 'delete':
          return { type: 'delete', deleted: Number(response.response_delete_range.deleted) };
      }
    });
    return { succeeded: res.succeeded, revision, results };
  }

  private toCompare(c: Compare): ICompare {
    const result = ({ '==': 'Equal', '!=': 'NotEqual', '<': 'Less', '>': 'Greater' } as const)[
      c.op
    ];
    const key = this.keyBytes(c.key);
    switch (c.target) {
      case 'modRevision':
        return { key, result, target: 'Mod', mod_revision: c.value };
      case 'createRevision':
        return { key, result, target: 'Create', create_revision: c.value };
      case 'version':
        return { key, result, target: 'Version', version: c.value };
      case 'value':
        return { key, result, target: 'Value', value: c.value };
    }
  }

  private toRequestOp(op: TxnOp): IRequestOp {
    const key = this.keyBytes(op.key);
    switch (op.type) {
      case 'get':
        return { request_range: { key, ...(op.prefix ? { range_end: prefixRangeEnd(key) } : {}) } };
      case 'put': {
        const lease = leaseIdOf(op.lease);
        return { request_put: { key, value: op.value, ...(lease ? { lease } : {}) } };
      }
      case 'delete':
        return {
          request_delete_range: { key, ...(op.prefix ? { range_end: prefixRangeEnd(key) } : {}) },
        };
    }
  }

  // ── leases and watches ─────────────────────────────────────────────────

  async grantLease(ttlSeconds: number, options: GrantLeaseOptions = {}): Promise<Lease> {
    this.checkOpen();
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1)
      throw new RangeError(`lease TTL must be a whole number of seconds ≥ 1, got ${ttlSeconds}`);
    const lease = new EtcdLease(this, options.keepAlive !== false, () => this.leases.delete(lease));
    await lease.grant(ttlSeconds);
    this.leases.add(lease);
    return lease;
  }

  async watchPrefix(
    prefix: string,
    options: WatchOptions,
    onEvent: (event: WatchEvent) => void,
  ): Promise<Watcher> {
    this.checkOpen();
    const from = options.fromRevision;
    if (from !== undefined && (!Number.isSafeInteger(from) || from < 1))
      throw new RangeError(`fromRevision must be a revision ≥ 1, got ${from}`);
    const start = this.keyBytes(prefix);
    const watcher = new EtcdWatcher(
      this,
      start,
      prefixRangeEnd(start),
      from,
      onEvent,
      options.onError,
      () => this.watchers.delete(watcher),
    );
    this.watchers.add(watcher);
    try {
      await watcher.start();
    } catch (err) {
      await watcher.close();
      throw err;
    }
    return watcher;
  }

  // ── lifecycle ──────────────────────────────────────────────────────────

  /**
   * Revoke live leases (bounded by closeTimeoutMs: if etcd is unreachable
   * their keys expire with the TTL instead), end watches, close gRPC
   * channels. No timer or stream of ours survives, so the process can exit.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    const revokes = [...this.leases].map((lease) =>
      lease
        .revokeWithin(this.closeTimeoutMs)
        .catch((err) =>
          this.log.warn(
            { err, lease: lease.id },
            'could not revoke lease on close; its keys expire with its TTL',
          ),
        ),
    );
    await Promise.all(revokes);
    await Promise.all([...this.watchers].map((w) => w.close()));
    this.client.close();
  }

  get isClosing(): boolean {
    return this.closing !== undefined;
  }
}
