/**
 * The MetadataStore contract as tests, registered once per implementation
 * (embedded.test.ts, etcd.test.ts) so both are held to the same behaviour.
 *
 * Each test gets a fresh, isolated store from the fixture. Tests run
 * concurrently where the stores are fully separate: the lease tests spend
 * most of their time waiting on TTLs.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LeaseNotFoundError, MetadataClosedError } from '../../src/controlplane/metadata/errors.js';
import {
  keyAbsent,
  unchangedSince,
  type Lease,
  type MetadataStore,
  type WatchEvent,
} from '../../src/controlplane/metadata/store.js';

export interface StoreFixture {
  /** A fresh store that no other test sees, and how to dispose of it after close(). */
  open(): Promise<{ store: MetadataStore; cleanup: () => Promise<void> }>;
}

const b = (s: string) => Buffer.from(s);
const TEST_TIMEOUT_MS = 15_000;

/** Poll `check` until it returns true; fail after `timeoutMs`. */
export async function eventually(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 5000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function describeEvents(events: WatchEvent[]): string[] {
  return events.map(
    (e) =>
      `${e.type} ${e.key}${e.type === 'put' ? '=' + e.value.toString() : ''} @${e.modRevision}`,
  );
}

export interface SuiteOptions {
  /** Why the suite cannot run here (e.g. etcd not installed). */
  skip?: string;
  /**
   * The stores of different tests share one revision counter (one etcd with
   * a key prefix per test): tests then run one at a time, because "each write
   * bumps the revision by exactly one" is only observable without neighbours.
   */
  sharedRevisions?: boolean;
}

export function registerStoreSuite(
  name: string,
  fixture: StoreFixture | (() => StoreFixture),
  options: SuiteOptions = {},
): void {
  const open = () => (typeof fixture === 'function' ? fixture() : fixture).open();

  /** Run `body` with a fresh store, closed and cleaned up whatever happens. */
  const withStore = (body: (store: MetadataStore) => Promise<void>) => async () => {
    const { store, cleanup } = await open();
    try {
      await body(store);
    } finally {
      await store.close();
      await cleanup();
    }
  };

  describe(
    `MetadataStore contract: ${name}`,
    { skip: options.skip, concurrency: !options.sharedRevisions },
    () => {
      it(
        'put and get report revisions, versions and create revisions',
        { timeout: TEST_TIMEOUT_MS },
        withStore(async (store) => {
          assert.equal(await store.get('missing'), undefined);
          const r1 = await store.put('a', b('1'));
          const r2 = await store.put('a', b('2'));
          assert.equal(r2, r1 + 1);
          const kv = await store.get('a');
          assert.ok(kv);
          assert.equal(kv.key, 'a');
          assert.equal(kv.value.toString(), '2');
          assert.equal(kv.createRevision, r1);
          assert.equal(kv.modRevision, r2);
          assert.equal(kv.version, 2);
          assert.equal(kv.lease, undefined);
          assert.equal(await store.currentRevision(), r2);
          // Deleted and re-created: a new life, version and createRevision start over.
          assert.equal(await store.delete('a'), 1);
          const r4 = await store.put('a', b('3'));
          const again = await store.get('a');
          assert.equal(again?.createRevision, r4);
          assert.equal(again?.version, 1);
        }),
      );

      it(
        'revisions increase by one per write; writes that change nothing do not bump them',
        { timeout: TEST_TIMEOUT_MS },
        withStore(async (store) => {
          const start = await store.currentRevision();
          const seen: number[] = [];
          for (let i = 0; i < 5; i++) seen.push(await store.put(`k${i}`, b(String(i))));
          assert.deepEqual(
            seen,
            [1, 2, 3, 4, 5].map((n) => start + n),
          );
          assert.equal(await store.delete('absent'), 0);
          assert.equal(await store.deletePrefix('nothing/'), 0);
          assert.equal(await store.currentRevision(), start + 5);
          const concurrent = await Promise.all(
            Array.from({ length: 20 }, (_, i) => store.put(`c${i}`, b('x'))),
          );
          assert.equal(new Set(concurrent).size, 20, 'each concurrent write has its own revision');
          assert.equal(Math.max(...concurrent), start + 25);
        }),
      );

      it(
        'getPrefix returns exactly the prefix, sorted by key',
        { timeout: TEST_TIMEOUT_MS },
        withStore(async (store) => {
          for (const key of ['p/b', 'p/a', 'p/c/d', 'p0', 'p', 'q/a', 'o/z'])
            await store.put(key, b(key));
          const kvs = await store.getPrefix('p/');
          assert.deepEqual(
            kvs.map((kv) => kv.key),
            ['p/a', 'p/b', 'p/c/d'],
          );
          assert.deepEqual(
            kvs.map((kv) => kv.value.toString()),
            ['p/a', 'p/b', 'p/c/d'],
          );
          assert.deepEqual(
            (await store.getPrefix('')).map((kv) => kv.key),
            ['o/z', 'p', 'p/a', 'p/b', 'p/c/d', 'p0', 'q/a'],
          );
          assert.deepEqual(await store.getPrefix('none/'), []);
        }),
      );

      it(
        'compare-and-swap: of two writers expecting the same revision, exactly one wins',
        { timeout: TEST_TIMEOUT_MS },
        withStore(async (store) => {
          const created = await store.txn({
            compare: [keyAbsent('vol')],
            success: [{ type: 'put', key: 'vol', value: b('v0') }],
          });
          assert.equal(created.succeeded, true);
          const second = await store.txn({
            compare: [keyAbsent('vol')],
            success: [{ type: 'put', key: 'vol', value: b('other') }],
          });
          assert.equal(second.succeeded, false);
          const expected = created.revision;
          const attempts = await Promise.all(
            ['w1', 'w2', 'w3'].map((writer) =>
              store.txn({
                compare: [unchangedSince('vol', expected)],
                success: [{ type: 'put', key: 'vol', value: b(writer) }],
              }),
            ),
          );
          assert.equal(attempts.filter((r) => r.succeeded).length, 1);
          const winner = attempts.find((r) => r.succeeded)!;
          const kv = await store.get('vol');
          assert.equal(kv?.modRevision, winner.revision);
          assert.equal(kv?.version, 2);
        }),
      );

      it(
        'txn compares on version, createRevision and value; the failure branch runs and reports',
        { timeout: TEST_TIMEOUT_MS },
        withStore(async (store) => {
          const rev = await store.put('k', b('hello'));
          const holds = async (compare: Parameters<MetadataStore['txn']>[0]['compare']) =>
            (await store.txn({ compare, success: [] })).succeeded;
          assert.equal(await holds([{ key: 'k', target: 'version', op: '==', value: 1 }]), true);
          assert.equal(await holds([{ key: 'k', target: 'version', op: '>', value: 1 }]), false);
          assert.equal(
            await holds([{ key: 'k', target: 'createRevision', op: '==', value: rev }]),
            true,
          );
          assert.equal(
            await holds([{ key: 'k', target: 'value', op: '==', value: b('hello') }]),
            true,
          );
          assert.equal(
            await holds([{ key: 'k', target: 'value', op: '!=', value: b('hello') }]),
            false,
          );
          assert.equal(
            await holds([{ key: 'k', target: 'value', op: '<', value: b('world') }]),
            true,
          );
          assert.equal(
            await holds([{ key: 'k', target: 'modRevision', op: '<', value: rev + 1 }]),
            true,
          );
          // Absent keys: numbers compare as 0, a value compare never holds.
          assert.equal(await holds([{ key: 'nope', target: 'version', op: '==', value: 0 }]), true);
          assert.equal(
            await holds([{ key: 'nope', target: 'value', op: '==', value: b('') }]),
            false,
          );
          assert.equal(
            await holds([{ key: 'nope', target: 'value', op: '!=', value: b('x') }]),
            false,
          );

          const result = await store.txn({
            compare: [{ key: 'k', target: 'value', op: '==', value: b('other') }],
            success: [{ type: 'put', key: 'k', value: b('never') }],
            failure: [
              { type: 'get', key: 'k' },
              { type: 'put', key: 'seen-failure', value: b('1') },
              { type: 'delete', key: 'absent' },
            ],
          });
          assert.equal(result.succeeded, false);
          assert.equal(result.results.length, 3);
          const [got, put, deleted] = result.results;
          assert.equal(got.type, 'get');
          assert.equal(got.type === 'get' && got.kvs[0].value.toString(), 'hello');
          assert.deepEqual(put, { type: 'put', revision: result.revision });
          assert.deepEqual(deleted, { type: 'delete', deleted: 0 });
          assert.equal((await store.get('k'))?.value.toString(), 'hello');
        }),
      );

      it(
        'txn is atomic: its writes share one revision; a failed compare writes nothing',
        { timeout: TEST_TIMEOUT_MS },
        withStore(async (store) => {
          await store.put('old/1', b('x'));
          await store.put('old/2', b('x'));
          const before = await store.currentRevision();
          const result = await store.txn({
            compare: [keyAbsent('a')],
            success: [
              { type: 'put', key: 'a', value: b('1') },
              { type: 'put', key: 'b', value: b('2') },
              { type: 'delete', key: 'old/', prefix: true },
            ],
          });
          assert.equal(result.succeeded, true);
          assert.equal(result.revision, before + 1);
          assert.deepEqual(result.results[2], { type: 'delete', deleted: 2 });
          assert.equal((await store.get('a'))?.modRevision, before + 1);
          assert.equal((await store.get('b'))?.modRevision, before + 1);
          assert.deepEqual(await store.getPrefix('old/'), []);

          const failed = await store.txn({
            compare: [keyAbsent('a')],
            success: [
              { type: 'put', key: 'c', value: b('3') },
              { type: 'delete', key: 'a' },
            ],
          });
          assert.equal(failed.succeeded, false);
          assert.equal(
            failed.revision,
            before + 1,
            'a failed txn without failure ops does not bump the revision',
          );
          assert.equal(await store.get('c'), undefined);
          assert.ok(await store.get('a'));
          await assert.rejects(
            store.txn({
              compare: [],
              success: [
                { type: 'put', key: 'x', value: b('1') },
                { type: 'put', key: 'x', value: b('2') },
              ],
            }),
            RangeError,
          );
        }),
      );

      it(
        'deletePrefix removes exactly the prefix and counts',
        { timeout: TEST_TIMEOUT_MS },
        withStore(async (store) => {
          for (const key of ['d/1', 'd/2', 'd/3/x', 'd', 'e/1']) await store.put(key, b('x'));
          assert.equal(await store.deletePrefix('d/'), 3);
          assert.deepEqual(
            (await store.getPrefix('')).map((kv) => kv.key),
            ['d', 'e/1'],
          );
          assert.equal(await store.delete('d'), 1);
          assert.equal(await store.delete('d'), 0);
        }),
      );

      it(
        'a lease that is not kept alive expires: lost, and its keys deleted',
        { timeout: TEST_TIMEOUT_MS },
        withStore(async (store) => {
          const granted = Date.now();
          const lease = await store.grantLease(1, { keepAlive: false });
          assert.equal(lease.state, 'alive');
          assert.equal(lease.ttlSeconds, 1);
          const lost = new Promise<Error>((resolve) => lease.once('lost', resolve));
          await store.put('eph/a', b('1'), { lease });
          await store.put('eph/b', b('2'), { lease: lease.id });
          await store.put('durable', b('3'));
          assert.equal((await store.get('eph/a'))?.lease, lease.id);
          assert.ok((await lost) instanceof Error);
          assert.equal(lease.state, 'lost');
          assert.ok(
            Date.now() - granted >= 900,
            `lost ${Date.now() - granted} ms after the grant, before its 1 s TTL`,
          );
          await eventually(
            'leased keys to be deleted',
            async () => (await store.getPrefix('eph/')).length === 0,
            4000,
          );
          assert.ok(await store.get('durable'));
          await assert.rejects(store.put('eph/c', b('x'), { lease }), LeaseNotFoundError);
        }),
      );

      it(
        'keepalive keeps a lease and its keys past the TTL',
        { timeout: TEST_TIMEOUT_MS },
        withStore(async (store) => {
          const lease = await store.grantLease(1);
          let lostEvents = 0;
          lease.on('lost', () => lostEvents++);
          await store.put('held', b('1'), { lease });
          await sleep(2500);
          assert.equal(lease.state, 'alive');
          assert.equal(lostEvents, 0);
          assert.ok(await store.get('held'));
          // A manual renewal works too, and revoke ends it.
          await lease.keepAliveOnce();
          await lease.revoke();
          assert.equal(lease.state, 'revoked');
        }),
      );

      it(
        'revoke deletes the lease keys at once and emits revoked (not lost)',
        { timeout: TEST_TIMEOUT_MS },
        withStore(async (store) => {
          const lease: Lease = await store.grantLease(5);
          const events: string[] = [];
          lease.on('revoked', () => events.push('revoked'));
          lease.on('lost', () => events.push('lost'));
          await store.put('r/1', b('1'), { lease });
          await store.put('r/2', b('2'), { lease });
          await lease.revoke();
          assert.equal(lease.state, 'revoked');
          assert.deepEqual(await store.getPrefix('r/'), []);
          await lease.revoke(); // idempotent
          assert.deepEqual(events, ['revoked']);
          await assert.rejects(store.put('r/3', b('3'), { lease }), LeaseNotFoundError);
          await assert.rejects(lease.keepAliveOnce(), LeaseNotFoundError);
        }),
      );

      it(
        'a watch from a revision replays history, then follows live writes, in order',
        { timeout: TEST_TIMEOUT_MS },
        withStore(async (store) => {
          await store.put('w/a', b('1'));
          const from = await store.put('w/b', b('2'));
          await store.put('other', b('x'));
          await store.put('w/c', b('3'));
          const events: WatchEvent[] = [];
          const watcher = await store.watchPrefix('w/', { fromRevision: from }, (e) =>
            events.push(e),
          );
          const txn = await store.txn({
            compare: [],
            success: [
              { type: 'put', key: 'w/d', value: b('4') },
              { type: 'put', key: 'w/e', value: b('5') },
            ],
          });
          await eventually('4 events', () => events.length >= 4);
          await sleep(50);
          assert.deepEqual(describeEvents(events), [
            `put w/b=2 @${from}`,
            `put w/c=3 @${from + 2}`,
            `put w/d=4 @${txn.revision}`,
            `put w/e=5 @${txn.revision}`,
          ]);
          await watcher.close();
          await store.put('w/f', b('6'));
          await sleep(100);
          assert.equal(events.length, 4, 'no events after close');
        }),
      );

      it(
        'a watch reports deletes, prefix deletes and lease ends with their revisions',
        { timeout: TEST_TIMEOUT_MS },
        withStore(async (store) => {
          const events: WatchEvent[] = [];
          const watcher = await store.watchPrefix('x/', {}, (e) => events.push(e));
          const r1 = await store.put('x/1', b('a'));
          const r2 = await store.put('x/2', b('b'));
          const r3 = await store.delete('x/1').then(() => store.currentRevision());
          const lease = await store.grantLease(5);
          const r4 = await store.put('x/3', b('c'), { lease });
          await lease.revoke();
          await store.deletePrefix('x/');
          await eventually('6 events', () => events.length >= 6);
          await sleep(50);
          const described = describeEvents(events);
          assert.deepEqual(described.slice(0, 5), [
            `put x/1=a @${r1}`,
            `put x/2=b @${r2}`,
            `delete x/1 @${r3}`,
            `put x/3=c @${r4}`,
            `delete x/3 @${r4 + 1}`,
          ]);
          assert.deepEqual(described.slice(5), [`delete x/2 @${r4 + 2}`]);
          assert.equal(events.length, 6);
          assert.ok(events.every((e, i) => i === 0 || e.modRevision >= events[i - 1].modRevision));
          assert.equal(events[2].value.length, 0);
          await watcher.close();
        }),
      );

      it(
        'a watch without fromRevision sees only writes after it is established',
        { timeout: TEST_TIMEOUT_MS },
        withStore(async (store) => {
          await store.put('n/old', b('1'));
          const events: WatchEvent[] = [];
          const watcher = await store.watchPrefix('n/', {}, (e) => events.push(e));
          const rev = await store.put('n/new', b('2'));
          await eventually('1 event', () => events.length >= 1);
          await sleep(50);
          assert.deepEqual(describeEvents(events), [`put n/new=2 @${rev}`]);
          await watcher.close();
        }),
      );

      it(
        'close revokes live leases and refuses later calls',
        { timeout: TEST_TIMEOUT_MS },
        async () => {
          const { store, cleanup } = await open();
          try {
            const lease = await store.grantLease(10);
            await store.put('closing', b('1'), { lease });
            await store.close();
            assert.equal(lease.state, 'revoked');
            await assert.rejects(store.get('closing'), MetadataClosedError);
            await assert.rejects(store.put('k', b('1')), MetadataClosedError);
            await store.close(); // idempotent
          } finally {
            await store.close();
            await cleanup();
          }
        },
      );
    },
  );
}
