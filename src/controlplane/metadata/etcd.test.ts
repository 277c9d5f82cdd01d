import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { UsageError } from '../../common/errors.js';
import { logger } from '../../common/log.js';
import { etcdMissing, startEtcd, type EtcdServer } from '../../../test/etcd-server.js';
import { isRetryable, MetadataUnavailableError } from './errors.js';
import { openEtcdMetadataStore, parseEndpoints, type EtcdStoreOptions } from './etcd/index.js';
import type { WatchEvent } from './store.js';
import { eventually, registerStoreSuite } from '../../../test/support/store-suite.js';
import { childScript } from '../../../test/support/child-scripts.js';

const quiet = logger('metadata').child({}, { level: 'error' });
const skip = etcdMissing();
const b = (s: string) => Buffer.from(s);

let shared: EtcdServer | undefined;
let nextPrefix = 0;
/** Each test its own key space in the shared etcd. */
const uniquePrefix = () => `/torus-test-${process.pid}-${nextPrefix++}/`;

before(async () => {
  if (!skip) shared = await startEtcd();
});
after(async () => {
  await shared?.stop();
});

const open = (endpoint: string, options: Partial<EtcdStoreOptions> = {}) =>
  openEtcdMetadataStore({
    endpoints: endpoint,
    prefix: uniquePrefix(),
    callTimeoutMs: 2000,
    log: quiet,
    ...options,
  });

registerStoreSuite(
  'etcd',
  {
    async open() {
      const store = await open(shared!.endpoint);
      return { store, cleanup: async () => undefined };
    },
  },
  { skip, sharedRevisions: true },
);

describe('endpoint parsing', () => {
  it('accepts host:port, URLs and comma lists; refuses what etcd3 cannot dial', () => {
    assert.deepEqual(parseEndpoints('127.0.0.1:2379'), { hosts: ['127.0.0.1:2379'], https: false });
    assert.deepEqual(parseEndpoints('http://127.0.0.1:2379'), {
      hosts: ['127.0.0.1:2379'],
      https: false,
    });
    assert.deepEqual(parseEndpoints(' http://a:2379/, http://b:2380 '), {
      hosts: ['a:2379', 'b:2380'],
      https: false,
    });
    assert.deepEqual(parseEndpoints(['https://a:2379', 'https://b:2379']), {
      hosts: ['a:2379', 'b:2379'],
      https: true,
    });
    assert.throws(() => parseEndpoints(''), UsageError);
    assert.throws(() => parseEndpoints('etcd-host'), /no port/);
    assert.throws(() => parseEndpoints('http://a:1,https://b:2'), /mix/);
  });

  it('https without a CA file is refused with a message saying what is needed', async () => {
    await assert.rejects(openEtcdMetadataStore({ endpoints: 'https://a:2379' }), /CA certificate/);
  });
});

describe('etcd metadata store: faults', { skip, concurrency: true }, () => {
  it(
    'a frozen etcd makes calls fail within the deadline, loses the lease, and recovers on thaw',
    { timeout: 20_000 },
    async (t) => {
      const etcd = await startEtcd();
      // If the test times out, finally never runs: do not leave etcd stopped.
      t.signal.addEventListener('abort', () => void etcd.stop());
      const store = await open(etcd.endpoint, { callTimeoutMs: 500 });
      try {
        await store.put('before', b('1'));
        const lease = await store.grantLease(1);
        const lost = new Promise<Error>((resolve) => lease.once('lost', resolve));
        const events: WatchEvent[] = [];
        const watcher = await store.watchPrefix('', {}, (e) => events.push(e));

        etcd.freeze();
        for (const call of [
          () => store.get('before'),
          () => store.put('during', b('2')),
          () => store.getPrefix(''),
        ]) {
          const started = Date.now();
          await assert.rejects(call(), (err: Error) => {
            assert.ok(err instanceof MetadataUnavailableError, `${err.name}: ${err.message}`);
            assert.equal(isRetryable(err), true);
            return true;
          });
          const took = Date.now() - started;
          assert.ok(took < 1500, `failed after ${took} ms, deadline 500 ms`);
        }
        // The 1 s TTL ran out during the three calls above, or soon after.
        const lostWithin = await Promise.race([
          lost.then(() => true),
          new Promise<boolean>((resolve) => setTimeout(resolve, 3000, false)),
        ]);
        assert.ok(lostWithin, `lease still ${lease.state} 3 s after the calls failed`);
        assert.equal(lease.state, 'lost');

        etcd.thaw();
        // Recovery: no circuit breaker holding calls back once etcd answers.
        let value: string | undefined;
        await eventually(
          'etcd to answer again',
          async () => {
            value = await store.get('before').then(
              (kv) => kv?.value.toString(),
              () => undefined,
            );
            return value !== undefined;
          },
          5000,
        );
        assert.equal(value, '1');
        // The watch made it through the freeze and still delivers.
        const rev = await store.put('after', b('3'));
        await eventually('the watch to see the write after the thaw', () =>
          events.some((e) => e.key === 'after' && e.modRevision === rev),
        );
        await watcher.close();
      } finally {
        etcd.thaw();
        await store.close();
        await etcd.stop();
      }
    },
  );

  it(
    'opening against an unreachable endpoint fails fast with a retryable error',
    { timeout: 10_000 },
    async () => {
      const started = Date.now();
      await assert.rejects(open('127.0.0.1:1', { callTimeoutMs: 500 }), MetadataUnavailableError);
      assert.ok(Date.now() - started < 3000);
    },
  );

  it(
    'close() revokes live leases and leaves nothing holding the process open',
    { timeout: 15_000 },
    async () => {
      const prefix = uniquePrefix();
      const child = spawn(
        process.execPath,
        [childScript('etcd-close-exit'), shared!.endpoint, prefix],
        {
          stdio: ['ignore', 'pipe', 'pipe'],
          env: { ...process.env, TORUS_LOG_LEVEL: 'error' },
        },
      );
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const started = Date.now();
      const code = await new Promise<number | null>((resolve) => {
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        child.once('exit', (c) => {
          clearTimeout(timer);
          resolve(c);
        });
      });
      assert.equal(code, 0, `child did not exit by itself (code ${code}): ${stdout} ${stderr}`);
      assert.match(stdout, /closed revoked/);
      assert.ok(Date.now() - started < 8000);
      const store = await open(shared!.endpoint, { prefix });
      assert.equal(
        await store.get('leased'),
        undefined,
        'the lease was revoked, not left to expire',
      );
      await store.close();
    },
  );

  it('keeps its key space under the prefix', { timeout: 10_000 }, async () => {
    const a = await open(shared!.endpoint, { prefix: '/tenant-a/' });
    const c = await open(shared!.endpoint, { prefix: '/tenant-b/' });
    try {
      await a.deletePrefix('');
      await c.deletePrefix('');
      await a.put('k', b('a'));
      await c.put('k', b('b'));
      assert.deepEqual(
        (await a.getPrefix('')).map((kv) => [kv.key, kv.value.toString()]),
        [['k', 'a']],
      );
      assert.equal(await c.deletePrefix(''), 1);
      assert.equal((await a.get('k'))?.value.toString(), 'a');
    } finally {
      await a.close();
      await c.close();
    }
  });
});
