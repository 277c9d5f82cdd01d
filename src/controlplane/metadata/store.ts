/**
 * MetadataStore: the cluster's small, strongly consistent key-value store.
 *
 * Shaped after etcd's v3 API so that the two implementations — etcd/ for a
 * cluster and embedded/ for a single node — are interchangeable and tested by
 * one suite (test/support/store-suite.ts):
 *
 *   - string keys (compared as UTF-8 bytes), Buffer values;
 *   - one global revision counter that every write bumps by exactly one, no
 *     matter how many keys it touches; a write that changes nothing (deleting
 *     an absent key, a txn whose ops are all no-ops) does not bump it;
 *   - per key: createRevision, modRevision and version (puts since creation);
 *     modRevision 0 means "absent", so `modRevision == 0` is "does not exist";
 *   - txn: compares, then success or failure ops, applied atomically;
 *   - leases that delete their keys when they end; watches in revision order.
 *
 * What "acknowledged" means for durability differs per implementation; see
 * README.md in this folder.
 */
import type { EventEmitter } from 'node:events';

export interface KeyValue {
  key: string;
  value: Buffer;
  /** Revision of the write that created the key (since it was last absent). */
  createRevision: number;
  /** Revision of the last write to the key. */
  modRevision: number;
  /** Number of puts since creation: 1 after the first put. */
  version: number;
  /** Id of the lease the key is attached to, if any. */
  lease?: string;
}

export type CompareOp = '==' | '!=' | '<' | '>';

/**
 * One condition of a txn. Numeric targets on an absent key compare against 0;
 * a 'value' compare on an absent key is always false (etcd's rule: there is
 * no way to tell a missing value from an empty one otherwise).
 */
export type Compare =
  | {
      key: string;
      target: 'modRevision' | 'createRevision' | 'version';
      op: CompareOp;
      value: number;
    }
  | { key: string; target: 'value'; op: CompareOp; value: Buffer };

/** `prefix: true` makes get/delete act on every key starting with `key`. */
export type TxnOp =
  | { type: 'get'; key: string; prefix?: boolean }
  | { type: 'put'; key: string; value: Buffer; lease?: Lease | string }
  | { type: 'delete'; key: string; prefix?: boolean };

export type TxnOpResult =
  | { type: 'get'; kvs: KeyValue[] }
  | { type: 'put'; revision: number }
  | { type: 'delete'; deleted: number };

export interface TxnRequest {
  compare: Compare[];
  success: TxnOp[];
  failure?: TxnOp[];
}

export interface TxnResult {
  /** Whether every compare held (and so `success` ran rather than `failure`). */
  succeeded: boolean;
  /** The store's revision after the txn: the txn's own if it wrote anything. */
  revision: number;
  /** One result per op of the branch that ran, in order. */
  results: TxnOpResult[];
}

export interface PutOptions {
  /** Attach the key to a lease: the key is deleted when the lease ends. */
  lease?: Lease | string;
}

/**
 * A lease's life, as an explicit state machine:
 *
 *   pending ──granted──▶ alive ──keepalive failed / TTL ran out──▶ lost
 *                          └──────────revoke() or store close()──▶ revoked
 *
 * `pending` lasts only while the grant is in flight (grantLease resolves with
 * an alive lease or rejects). `lost` and `revoked` are terminal. A lost lease
 * may still exist on the server for up to its TTL, but nobody may act as its
 * holder any more; its keys are (or soon will be) deleted.
 */
export type LeaseState = 'pending' | 'alive' | 'lost' | 'revoked';

/**
 * Events:
 *   'lost'    (error: Error)  alive → lost; emitted once.
 *   'revoked' ()              alive → revoked; emitted once.
 */
export interface Lease extends EventEmitter {
  /** etcd lease ids are int64: a decimal string, never a JS number. */
  readonly id: string;
  /** The TTL the server granted, which may differ from the one asked for. */
  readonly ttlSeconds: number;
  readonly state: LeaseState;
  /** Renew once now (also for leases granted with keepAlive: false). */
  keepAliveOnce(): Promise<void>;
  /** End the lease now; its keys are deleted. Idempotent; a no-op once lost. */
  revoke(): Promise<void>;
}

export interface GrantLeaseOptions {
  /**
   * Keep the lease alive automatically (every TTL/3) until revoked or lost.
   * Default true. With false the lease ends TTL seconds after the last
   * keepAliveOnce(), which is what tests of expiry use.
   */
  keepAlive?: boolean;
}

export interface WatchEvent {
  type: 'put' | 'delete';
  key: string;
  /** The new value for 'put'; empty for 'delete'. */
  value: Buffer;
  /** The revision of the write (for 'delete', the revision that deleted it). */
  modRevision: number;
}

export interface WatchOptions {
  /**
   * Deliver events from this revision on (inclusive), replaying history.
   * Default: only writes after the watch is established. Fails with
   * MetadataCompactedError when that history is no longer kept.
   */
  fromRevision?: number;
  /**
   * Called when the watch ends on its own, not by close(): e.g. etcd
   * compacted the history it needed while it was reconnecting. Default: log.
   */
  onError?: (err: Error) => void;
}

export interface Watcher {
  /** Stop delivering events. Idempotent. */
  close(): Promise<void>;
}

export interface MetadataStore {
  get(key: string): Promise<KeyValue | undefined>;
  /** Every key starting with `prefix`, sorted by key (UTF-8 byte order). */
  getPrefix(prefix: string): Promise<KeyValue[]>;
  /** Returns the revision of the write. */
  put(key: string, value: Buffer, options?: PutOptions): Promise<number>;
  /** Returns how many keys were deleted (0 or 1). */
  delete(key: string): Promise<number>;
  /** Returns how many keys were deleted. */
  deletePrefix(prefix: string): Promise<number>;
  txn(request: TxnRequest): Promise<TxnResult>;
  grantLease(ttlSeconds: number, options?: GrantLeaseOptions): Promise<Lease>;
  /**
   * Calls `onEvent` for every put/delete under `prefix`, in revision order,
   * each exactly once. Resolves once the watch is established: any write
   * that completes after that is seen.
   */
  watchPrefix(
    prefix: string,
    options: WatchOptions,
    onEvent: (event: WatchEvent) => void,
  ): Promise<Watcher>;
  currentRevision(): Promise<number>;
  /** Revokes live leases, ends watches, releases every resource. Idempotent. */
  close(): Promise<void>;
}

/** Compare that holds when `key` does not exist. */
export function keyAbsent(key: string): Compare {
  return { key, target: 'modRevision', op: '==', value: 0 };
}

/** Compare that holds when `key` exists. */
export function keyPresent(key: string): Compare {
  return { key, target: 'modRevision', op: '>', value: 0 };
}

/** Compare that holds when `key` was last written at `modRevision` (0: absent). */
export function unchangedSince(key: string, modRevision: number): Compare {
  return { key, target: 'modRevision', op: '==', value: modRevision };
}

export function leaseIdOf(lease: Lease | string | undefined): string | undefined {
  if (lease === undefined) return undefined;
  return typeof lease === 'string' ? lease : lease.id;
}
