/**
 * The messages between the main thread and the control-plane thread, and the
 * two rules every message obeys:
 *
 *   - one request message per MetadataStore call, one reply per request
 *     (matched by `id`); notices (lease ended, watch event, watch ended) are
 *     posted by the worker on their own, in the order they happened;
 *   - a Buffer is sent as an exact Uint8Array (see `exact`) and turned back
 *     into a Buffer view on arrival (`asBuffer`): structured clone copies the
 *     whole ArrayBuffer behind a view, and a small Buffer is usually a view
 *     of Node's 8 KiB pool, so a 10-byte value would otherwise cost 8 KiB.
 *
 * Leases cross as their id, errors as WireError (./wire-errors.ts).
 */
import type { EtcdStoreOptions } from '../metadata/etcd/etcd-store.js';
import type { Compare, TxnOpResult } from '../metadata/store.js';
import type { WireError } from './wire-errors.js';

/** What the worker needs to open the real store: EtcdStoreOptions minus the logger, which cannot cross. */
export interface WorkerSetup {
  etcd: Omit<EtcdStoreOptions, 'log'>;
  /** The main thread's log level, so the worker logs at the same one. */
  logLevel?: string;
}

export type WireValue = Uint8Array;

export type WireCompare =
  | Extract<Compare, { target: 'modRevision' | 'createRevision' | 'version' }>
  | { key: string; target: 'value'; op: Compare['op']; value: WireValue };

export type WireTxnOp =
  | { type: 'get'; key: string; prefix?: boolean }
  | { type: 'put'; key: string; value: WireValue; lease?: string }
  | { type: 'delete'; key: string; prefix?: boolean };

export interface WireTxnRequest {
  compare: WireCompare[];
  success: WireTxnOp[];
  failure?: WireTxnOp[];
}

/** main → worker. */
export type Request =
  | { id: number; op: 'get'; key: string }
  | { id: number; op: 'getPrefix'; prefix: string }
  | { id: number; op: 'put'; key: string; value: WireValue; lease: string | undefined }
  | { id: number; op: 'delete'; key: string }
  | { id: number; op: 'deletePrefix'; prefix: string }
  | { id: number; op: 'txn'; request: WireTxnRequest }
  | { id: number; op: 'grantLease'; ttlSeconds: number; keepAlive: boolean }
  | { id: number; op: 'keepAliveOnce'; lease: string }
  | { id: number; op: 'revoke'; lease: string }
  | { id: number; op: 'watch'; watch: number; prefix: string; fromRevision: number | undefined }
  | { id: number; op: 'unwatch'; watch: number }
  | { id: number; op: 'currentRevision' }
  | { id: number; op: 'close' };

export type Op = Request['op'];

export interface WireKeyValue {
  key: string;
  value: WireValue;
  createRevision: number;
  modRevision: number;
  version: number;
  lease?: string;
}

export type WireTxnOpResult =
  Exclude<TxnOpResult, { type: 'get' }> | { type: 'get'; kvs: WireKeyValue[] };

/** What each op's reply carries in `value`. */
export interface ReplyValues {
  get: WireKeyValue | undefined;
  getPrefix: WireKeyValue[];
  put: number;
  delete: number;
  deletePrefix: number;
  txn: { succeeded: boolean; revision: number; results: WireTxnOpResult[] };
  grantLease: { id: string; ttlSeconds: number };
  keepAliveOnce: void;
  revoke: void;
  watch: void;
  unwatch: void;
  currentRevision: number;
  close: void;
}

/** worker → main. */
export type Message =
  | { type: 'reply'; id: number; value: unknown }
  | { type: 'fail'; id: number; error: WireError }
  /** A lease ended in the worker: lost (with the reason) or revoked. */
  | { type: 'lease'; lease: string; state: 'lost' | 'revoked'; error: WireError | undefined }
  | {
      type: 'event';
      watch: number;
      event: 'put' | 'delete';
      key: string;
      value: WireValue;
      modRevision: number;
    }
  /** A watch ended on its own (not by unwatch); the store's onError gets `error`. */
  | { type: 'watchEnd'; watch: number; error: WireError };

/**
 * The bytes of `bytes` in a Uint8Array that spans its whole ArrayBuffer, so
 * structured clone copies only them: `bytes` itself when it already does,
 * else a copy.
 */
export function exact(bytes: Uint8Array): Uint8Array {
  return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength
    ? bytes
    : new Uint8Array(bytes);
}

/** A Buffer view of bytes that arrived over the port (no copy). */
export function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
