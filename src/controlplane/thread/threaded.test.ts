import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { types } from 'node:util';
import { pino } from 'pino';
import { etcdMissing, startEtcd, type EtcdServer } from '../../../test/etcd-server.js';
import {
  ChecksumError,
  ConflictError,
  IoError,
  StoreFullError,
  UsageError,
} from '../../common/errors.js';
import { logger } from '../../common/log.js';
import {
  isRetryable,
  LeaseLostError,
  LeaseNotFoundError,
  MetadataClosedError,
  MetadataCompactedError,
  MetadataUnavailableError,
} from '../metadata/errors.js';
import { openEtcdMetadataStore } from '../metadata/etcd/index.js';
import { eventually, registerStoreSuite } from '../../../test/support/store-suite.js';
import { childScript } from '../../../test/support/child-scripts.js';
import type { WatchEvent } from '../metadata/store.js';
import { openThreadedMetadataStore, type ThreadedStoreOptions } from './threaded-store.js';
import { fromWire, toWire } from './wire-errors.js';

const quiet = logger('metadata').child({}, { level: 'error' });
const skip = etcdMissing();
const b = (s: string) => Buffer.from(s);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let shared: EtcdServer | undefined;
let nextPrefix = 0;
const uniquePrefix = () => `/torus-thread-test-${process.pid}-${nextPrefix++}/`;

before(async () => {
  if (!skip) shared = await startEtcd();
});
after(async () => {
  await shared?.stop();
});

const open = (endpoint: string, options: Partial<ThreadedStoreOptions> = {}) =>
  openThreadedMetadataStore({
    endpoints: endpoint,
    prefix: uniquePrefix(),
    callTimeoutMs: 2000,
    log: quiet,
    ...options,
  });

/** Nothing else runs on this thread meanwhile: no timer, no I/O callback, no message. */
function blockMainThread(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    // busy
  }
}

registerStoreSuite(
  'threaded (etcd on the control-plane thread)',
  {
    async open() {
      const store = await open(shared!.endpoint);
      return { store, cleanup: async () => undefined };
    },
  },
  { skip, sharedRevisions: true },
);

describe('errors across the thread boundary', () => {
  it('keep their class, name, message, stack, fields and cause', () => {
    class WeirdError extends Error {
      override name = 'WeirdError';
      readonly detail = 42;
    }
    const cases: Error[] = [
      new MetadataUnavailableError('etcd get failed: 14 UNAVAILABLE', {
        cause: new Error('connect ECONNREFUSED'),
      }),
      new MetadataClosedError('closed'),
      new MetadataCompactedError(5, 9),
      new LeaseNotFoundError('7587869001'),
      new LeaseLostError('7587869001', 'no keepalive acknowledged'),
      new ChecksumError('vol', 3, 'bad block'),
      new StoreFullError('no free slot'),
      new ConflictError('lost the race'),
      new UsageError('no endpoints'),
      new RangeError('txn writes "x" more than once'),
      new TypeError('value must be a Buffer'),
      new WeirdError('unknown here'),
      new Error('plain'),
    ];
    for (const err of cases) {
      // structuredClone: what postMessage does to it.
      const back = fromWire(structuredClone(toWire(err)));
      const expectedClass = err instanceof WeirdError ? Error : err.constructor;
      assert.equal(Object.getPrototypeOf(back), expectedClass.prototype, err.name);
      assert.ok(types.isNativeError(back), `${err.name} is a real Error`);
      assert.equal(back.name, err.name);
      assert.equal(back.message, err.message);
      assert.equal(back.stack, err.stack);
      assert.deepEqual({ ...back }, { ...err }, `${err.name}: own fields`);
      assert.equal(isRetryable(back), isRetryable(err));
      assert.equal(String(back), String(err));
    }
    const unavailable = fromWire(structuredClone(toWire(cases[0])));
    assert.ok(unavailable instanceof MetadataUnavailableError && unavailable.retryable);
    assert.ok(
      unavailable.cause instanceof Error && unavailable.cause.message === 'connect ECONNREFUSED',
    );
    const compacted = fromWire(structuredClone(toWire(cases[2])));
    assert.ok(
      compacted instanceof MetadataCompactedError &&
        compacted.requestedRevision === 5 &&
        compacted.compactRevision === 9,
    );
    const lease = fromWire(structuredClone(toWire(cases[3])));
    assert.ok(lease instanceof LeaseNotFoundError && lease.leaseId === '7587869001');
    const io = fromWire(structuredClone(toWire(cases[5])));
    assert.ok(
      io instanceof ChecksumError && io instanceof IoError && io.errno === 'EIO' && io.block === 3,
    );
    // Whatever is thrown, something sensible arrives.
    assert.equal(fromWire(structuredClone(toWire('a string'))).message, 'a string');
  });
});

describe('threaded metadata store', { skip }, () => {
  it('hands Buffers back, as the etcd store does', { timeout: 10_000 }, async () => {
    const store = await open(shared!.endpoint);
    try {
      const events: WatchEvent[] = [];
      const watcher = await store.watchPrefix('v/', {}, (e) => events.push(e));
      await store.put('v/1', b('one')); // a view of Node's shared pool
      await store.txn({
        compare: [{ key: 'v/1', target: 'value', op: '==', value: b('one') }],
        success: [{ type: 'put', key: 'v/2', value: Buffer.alloc(3, 7) }],
      });
      const kv = await store.get('v/1');
      assert.ok(kv && Buffer.isBuffer(kv.value) && kv.value.equals(b('one')));
      const kvs = await store.getPrefix('v/');
      assert.deepEqual(
        kvs.map((k) => Buffer.isBuffer(k.value)),
        [true, true],
      );
      assert.ok(kvs[1].value.equals(Buffer.alloc(3, 7)));
      const got = await store.txn({
        compare: [],
        success: [{ type: 'get', key: 'v/', prefix: true }],
      });
      const result = got.results[0];
      assert.ok(result.type === 'get' && result.kvs.every((k) => Buffer.isBuffer(k.value)));
      await eventually('2 events', () => events.length >= 2);
      assert.ok(events.every((e) => Buffer.isBuffer(e.value)));
      assert.equal(events[0].value.toString(), 'one');
      await watcher.close();
    } finally {
      await store.close();
    }
  });

  it(
    "opening fails with the etcd store's own errors: unreachable, bad TLS settings",
    { timeout: 10_000 },
    async () => {
      const started = Date.now();
      await assert.rejects(
        open('127.0.0.1:1', { callTimeoutMs: 500 }),
        (err: Error) => err instanceof MetadataUnavailableError && isRetryable(err),
      );
      assert.ok(Date.now() - started < 3000);
      await assert.rejects(
        open('https://127.0.0.1:1'),
        (err: Error) => err instanceof UsageError && /CA certificate/.test(err.message),
      );
    },
  );

  it(
    'keeps a lease alive while the main thread is blocked for 1.5x its TTL',
    { timeout: 20_000 },
    async () => {
      const prefix = uniquePrefix();
      const store = await open(shared!.endpoint, { prefix });
      const observer = await openEtcdMetadataStore({
        endpoints: shared!.endpoint,
        prefix,
        callTimeoutMs: 2000,
        log: quiet,
      });
      try {
        const lease = await store.grantLease(2);
        let lost = 0;
        lease.on('lost', () => lost++);
        await store.put('held', b('1'), { lease });
        const blockedMs = lease.ttlSeconds * 1500;
        blockMainThread(blockedMs);
        // Read etcd directly: the key is still there, under the same lease.
        const kv = await observer.get('held');
        assert.equal(
          kv?.lease,
          lease.id,
          `the leased key is gone from etcd after the main thread was blocked ${blockedMs} ms`,
        );
        // A 'lost' posted while we were blocked would arrive before this reply.
        await store.currentRevision();
        assert.equal(lease.state, 'alive');
        assert.equal(lost, 0);
        await lease.keepAliveOnce(); // etcd still knows it: no LeaseNotFoundError
        await lease.revoke();
      } finally {
        await store.close();
        await observer.close();
      }
    },
  );

  it(
    '(the control) the same block loses the lease of an etcd store on the main thread',
    { timeout: 20_000 },
    async () => {
      const direct = await openEtcdMetadataStore({
        endpoints: shared!.endpoint,
        prefix: uniquePrefix(),
        callTimeoutMs: 2000,
        log: quiet,
      });
      try {
        const lease = await direct.grantLease(2);
        const lost = new Promise<Error>((resolve) => lease.once('lost', resolve));
        await direct.put('held', b('1'), { lease });
        blockMainThread(lease.ttlSeconds * 1500);
        assert.ok((await lost) instanceof LeaseLostError);
        await eventually(
          'etcd to drop the leased key',
          async () => (await direct.get('held')) === undefined,
          5000,
        );
      } finally {
        await direct.close();
      }
    },
  );

  it(
    'when the worker dies: pending calls reject, leases are lost, watches end, it is logged, and a new worker takes over',
    { timeout: 30_000 },
    async () => {
      const etcd = await startEtcd();
      const records: { level: number; msg: string; exitCode?: number }[] = [];
      const log = pino(
        { level: 'info' },
        { write: (line: string) => void records.push(JSON.parse(line)) },
      );
      const store = await openThreadedMetadataStore({
        endpoints: etcd.endpoint,
        prefix: uniquePrefix(),
        callTimeoutMs: 5000,
        log,
      });
      try {
        const lease = await store.grantLease(10);
        await store.put('held', b('1'), { lease });
        const lost = new Promise<Error>((resolve) => lease.once('lost', resolve));
        const watchErrors: Error[] = [];
        await store.watchPrefix('', { onError: (err) => watchErrors.push(err) }, () => undefined);

        etcd.freeze(); // so the calls below are certainly still waiting in the worker
        const calls = Promise.allSettled([
          store.get('held'),
          store.put('k', b('2')),
          store.getPrefix(''),
          lease.keepAliveOnce(),
        ]);
        await sleep(200);
        await store.worker!.terminate(); // from outside the store: to it, a crash

        const results = await calls;
        for (const r of results) {
          assert.equal(r.status, 'rejected');
          const err = (r as PromiseRejectedResult).reason as Error;
          assert.ok(err instanceof MetadataUnavailableError, `${err.name}: ${err.message}`);
          assert.ok(isRetryable(err));
          assert.match(err.message, /control-plane thread exited unexpectedly/);
        }
        const reason = await lost;
        assert.ok(reason instanceof LeaseLostError);
        assert.match(reason.message, /control-plane thread exited/);
        assert.equal(lease.state, 'lost');
        await eventually('the watch to end', () => watchErrors.length === 1);
        assert.ok(watchErrors[0] instanceof MetadataUnavailableError);
        const logged = records.find(
          (r) => r.level === 50 && /control-plane thread exited unexpectedly/.test(r.msg),
        );
        assert.ok(logged, `no error logged: ${JSON.stringify(records)}`);
        assert.equal(logged.exitCode, 1);

        etcd.thaw();
        await eventually(
          'a new worker to answer',
          () =>
            store.put('after', b('3')).then(
              () => true,
              () => false,
            ),
          10_000,
        );
        assert.equal(store.restartCount, 1);
        const again = await store.grantLease(5);
        assert.equal(again.state, 'alive');
        assert.equal((await store.get('after'))?.value.toString(), '3');
        await assert.rejects(lease.keepAliveOnce(), LeaseNotFoundError);
        await store.close();
        assert.equal(again.state, 'revoked');
      } finally {
        etcd.thaw();
        await store.close();
        await etcd.stop();
      }
    },
  );

  it(
    'close() revokes leases, ends the thread and leaves nothing holding the process open',
    { timeout: 15_000 },
    async () => {
      const prefix = uniquePrefix();
      const child = spawn(
        process.execPath,
        [childScript('threaded-close-exit'), shared!.endpoint, prefix],
        {
          stdio: ['ignore', 'pipe', 'pipe'],
          env: { ...process.env, TORUS_LOG_LEVEL: 'error' },
        },
      );
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const code = await new Promise<number | null>((resolve) => {
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        child.once('exit', (c) => {
          clearTimeout(timer);
          resolve(c);
        });
      });
      assert.equal(code, 0, `child did not exit by itself (code ${code}): ${stdout} ${stderr}`);
      assert.match(stdout, /closed revoked events 1/);
      const store = await open(shared!.endpoint, { prefix });
      try {
        assert.equal(
          await store.get('leased'),
          undefined,
          'the lease was revoked, not left to expire',
        );
      } finally {
        await store.close();
      }
    },
  );
});
