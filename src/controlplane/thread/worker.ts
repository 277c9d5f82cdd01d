/**
 * The control-plane thread: owns the real EtcdMetadataStore, so its gRPC
 * channels, lease keepalive timers and watch streams run on this thread's
 * event loop, not on the main thread that serves NBD.
 *
 * It answers each request from the main thread (./protocol.ts) with one
 * reply, and posts notices on its own: a lease ended, a watch event, a watch
 * ended. If opening the store fails (a bad endpoint, an unreadable TLS file)
 * every request is answered with that error, so the main thread sees it at
 * its first call, as it would have seen it from the constructor.
 *
 * Started and ended by ThreadedMetadataStore (./threaded-store.ts) only.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { logger } from '../../common/log.js';
import { LeaseNotFoundError } from '../metadata/errors.js';
import { EtcdMetadataStore } from '../metadata/etcd/etcd-store.js';
import type { KeyValue, Lease, TxnOp, TxnRequest, Watcher } from '../metadata/store.js';
import {
  asBuffer,
  exact,
  type Message,
  type ReplyValues,
  type Request,
  type WireKeyValue,
  type WireTxnOp,
  type WireTxnRequest,
  type WorkerSetup,
} from './protocol.js';
import { toWire } from './wire-errors.js';

const port = parentPort;
if (!port) throw new Error('controlplane/thread/worker.js runs only as a worker thread');

const setup = workerData as WorkerSetup;
const base = logger('metadata').child({ thread: 'control-plane' });
const log = setup.logLevel ? base.child({}, { level: setup.logLevel }) : base;

let store: EtcdMetadataStore | undefined;
let openError: unknown;
try {
  store = new EtcdMetadataStore({ ...setup.etcd, log });
} catch (err) {
  openError = err;
}

const leases = new Map<string, Lease>();
const watchers = new Map<number, Watcher>();

const post = (message: Message) => port.postMessage(message);

function wireKeyValue(kv: KeyValue): WireKeyValue {
  (kv as unknown as WireKeyValue).value = exact(kv.value);
  return kv as unknown as WireKeyValue;
}

function bufferOps(ops: WireTxnOp[] | undefined): TxnOp[] | undefined {
  if (ops)
    for (const op of ops)
      if (op.type === 'put') (op as unknown as TxnOp & { type: 'put' }).value = asBuffer(op.value);
  return ops as TxnOp[] | undefined;
}

/** The request arrived as this thread's own copy: its byte fields become Buffers in place. */
function bufferTxn(request: WireTxnRequest): TxnRequest {
  for (const c of request.compare)
    if (c.target === 'value') (c as { value: Uint8Array }).value = asBuffer(c.value);
  bufferOps(request.success);
  bufferOps(request.failure);
  return request as TxnRequest;
}

/** Follow a lease granted here: its end is posted once, then it is forgotten. */
function follow(lease: Lease): void {
  leases.set(lease.id, lease);
  const ended = (state: 'lost' | 'revoked', reason?: Error) => {
    leases.delete(lease.id);
    post({
      type: 'lease',
      lease: lease.id,
      state,
      error: reason === undefined ? undefined : toWire(reason),
    });
  };
  lease.once('lost', (reason: Error) => ended('lost', reason));
  lease.once('revoked', () => ended('revoked'));
}

async function handle(store: EtcdMetadataStore, req: Request): Promise<ReplyValues[Request['op']]> {
  switch (req.op) {
    case 'get': {
      const kv = await store.get(req.key);
      return kv && wireKeyValue(kv);
    }
    case 'getPrefix':
      return (await store.getPrefix(req.prefix)).map(wireKeyValue);
    case 'put':
      return store.put(
        req.key,
        asBuffer(req.value),
        req.lease === undefined ? {} : { lease: req.lease },
      );
    case 'delete':
      return store.delete(req.key);
    case 'deletePrefix':
      return store.deletePrefix(req.prefix);
    case 'txn': {
      const result = await store.txn(bufferTxn(req.request));
      for (const r of result.results) if (r.type === 'get') r.kvs.forEach(wireKeyValue);
      return result as unknown as ReplyValues['txn'];
    }
    case 'grantLease': {
      const lease = await store.grantLease(req.ttlSeconds, { keepAlive: req.keepAlive });
      follow(lease);
      return { id: lease.id, ttlSeconds: lease.ttlSeconds };
    }
    case 'keepAliveOnce': {
      const lease = leases.get(req.lease);
      if (!lease) throw new LeaseNotFoundError(req.lease);
      return lease.keepAliveOnce();
    }
    case 'revoke':
      // Unknown here means it already ended (its notice is on the way): nothing to do.
      return leases.get(req.lease)?.revoke();
    case 'watch': {
      const w = req.watch;
      const watcher = await store.watchPrefix(
        req.prefix,
        {
          fromRevision: req.fromRevision,
          onError: (err) => {
            watchers.delete(w);
            post({ type: 'watchEnd', watch: w, error: toWire(err) });
          },
        },
        (e) =>
          post({
            type: 'event',
            watch: w,
            event: e.type,
            key: e.key,
            value: exact(e.value),
            modRevision: e.modRevision,
          }),
      );
      watchers.set(w, watcher);
      return undefined;
    }
    case 'unwatch': {
      const watcher = watchers.get(req.watch);
      watchers.delete(req.watch);
      return watcher?.close();
    }
    case 'currentRevision':
      return store.currentRevision();
    case 'close':
      // Revokes every live lease (each posts its 'revoked' before this reply) and ends the watches.
      await store.close();
      watchers.clear();
      return undefined;
  }
}

port.on('message', (req: Request) => {
  const answer = store ? handle(store, req) : Promise.reject(openError);
  answer.then(
    (value) => post({ type: 'reply', id: req.id, value }),
    (err: unknown) => post({ type: 'fail', id: req.id, error: toWire(err) }),
  );
});
