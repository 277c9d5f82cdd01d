/**
 * VolumeCatalog commits and deletes under volume write locks, against both
 * metadata stores: fenced commits land only while their lock holds, unfenced
 * ones only while nobody holds it, a locked volume is not deleted, and a
 * refused write leaves nothing behind.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { InvariantError } from '../../common/assert.js';
import { ConflictError, UsageError } from '../../common/errors.js';
import {
  acquireVolumeLock,
  assertVolumeUnlocked,
  FencedError,
  readVolumeLock,
  VolumeLockedError,
  type LockHolder,
} from '../locks/index.js';
import { testStores, withStore } from '../../../test/support/test-stores.js';
import type { MetadataStore } from '../metadata/store.js';
import { VolumeCatalog } from './catalog.js';

const A: LockHolder = {
  node: 'node-a-6f1c',
  hostname: 'storage-a',
  pid: 101,
  address: '10.0.0.1:10809',
};
const B: LockHolder = { node: 'node-b-93d2', hostname: 'storage-b', pid: 202 };
const root = (n: number) => ({ generation: n, hashLo: n, hashHi: n });

async function catalogWith(meta: MetadataStore, ...names: string[]): Promise<VolumeCatalog> {
  const catalog = new VolumeCatalog(meta);
  for (const name of names)
    await catalog.create({ name, size: 1 << 20, blockSize: 64 * 1024, encrypted: false });
  return catalog;
}

for (const kind of testStores()) {
  describe(
    `volume catalog under write locks: ${kind.name}`,
    { skip: kind.skip, concurrency: true },
    () => {
      it(
        'a bad block size is never stored: the settings are written once, for good',
        { timeout: 10_000 },
        withStore(kind, async (meta) => {
          const catalog = new VolumeCatalog(meta);
          const createdAt = new Date(0).toISOString();
          for (const blockSize of [3, 2048, 48 * 1024, 2 ** 40])
            await assert.rejects(
              catalog.initSettings({ blockSize, createdAt }),
              (err: Error) =>
                err instanceof UsageError && /block size: .*power of two/.test(err.message),
            );
          assert.equal(await catalog.settings(), undefined, 'nothing stored');
          assert.equal(
            (await catalog.initSettings({ blockSize: 4096, createdAt })).blockSize,
            4096,
          );
        }),
      );

      it(
        'ids are handed out in order and never twice, skipping ids a catalog from before the counter took',
        { timeout: 10_000 },
        withStore(kind, async (meta) => {
          const catalog = new VolumeCatalog(meta);
          const fields = (name: string) => ({
            name,
            size: 1 << 20,
            blockSize: 64 * 1024,
            encrypted: false,
          });
          // A volume of the old scheme, whose id was random: here, the next one the counter would give.
          await meta.put('volume-ids/2', Buffer.from('legacy'));
          assert.equal((await catalog.create(fields('one'))).id, 1);
          assert.equal((await catalog.create(fields('two'))).id, 3, 'id 2 is taken: skipped');
          await catalog.remove('two');
          assert.equal(
            (await catalog.create(fields('two'))).id,
            4,
            "a deleted volume's id is not reused, even for its name",
          );
          const racing = await Promise.all(
            ['a', 'b', 'c', 'd'].map((n) => catalog.create(fields(n))),
          );
          assert.deepEqual(
            racing.map((r) => r.id).sort((x, y) => x - y),
            [5, 6, 7, 8],
            'racing creates get distinct ids',
          );
          await assert.rejects(catalog.create(fields('one')), ConflictError);
        }),
      );

      it(
        'commits without a fence while unlocked (as before); refused naming the holder while locked',
        { timeout: 10_000 },
        withStore(kind, async (meta) => {
          const catalog = await catalogWith(meta, 'vol');
          const v1 = await catalog.commitVersion(await catalog.get('vol'), 1, root(1));
          assert.equal(v1.record.generation, 1);
          const lock = await acquireVolumeLock(meta, 'vol', { holder: A, ttlSeconds: 10 });
          await assert.rejects(catalog.commitVersion(v1, 2, root(2)), (err: Error) => {
            assert.ok(err instanceof VolumeLockedError, `${err.name}: ${err.message}`);
            assert.match(
              err.message,
              /node-a-6f1c .*storage-a.*pid 101.*10\.0\.0\.1:10809.*version 2 not committed/,
            );
            return true;
          });
          assert.deepEqual(await catalog.get('vol'), v1);
          await lock.release();
          assert.equal((await catalog.commitVersion(v1, 2, root(2))).record.generation, 2);
        }),
      );

      it(
        'a fenced commit lands while its lock holds; once released, the store refuses it and nothing is written',
        { timeout: 10_000 },
        withStore(kind, async (meta) => {
          const catalog = await catalogWith(meta, 'vol');
          const lock = await acquireVolumeLock(meta, 'vol', { holder: A, ttlSeconds: 10 });
          const fence = lock.fence;
          const v1 = await catalog.commitVersion(await catalog.get('vol'), 1, root(1), fence);
          const v2 = await catalog.commitVersion(v1, 2, root(2), lock);
          await lock.release();
          // Released and nobody else holds it: still refused, the key is gone.
          await assert.rejects(catalog.commitVersion(v2, 3, root(3), fence), (err: Error) => {
            assert.ok(err instanceof FencedError, `${err.name}: ${err.message}`);
            assert.equal(err.current, undefined);
            assert.match(
              err.message,
              /epoch 1 is no longer held \(nobody holds it now\); version 3 not committed/,
            );
            return true;
          });
          await assert.rejects(catalog.commitVersion(v2, 3, root(3), lock), /the lock is released/);
          assert.deepEqual(await catalog.get('vol'), v2);
        }),
      );

      it(
        'a record moved under a held lock is a ConflictError, not FencedError',
        { timeout: 10_000 },
        withStore(kind, async (meta) => {
          const catalog = await catalogWith(meta, 'vol');
          const lock = await acquireVolumeLock(meta, 'vol', { holder: A, ttlSeconds: 10 });
          const v0 = await catalog.get('vol');
          await catalog.commitVersion(v0, 1, root(1), lock);
          await assert.rejects(catalog.commitVersion(v0, 1, root(9), lock), (err: Error) => {
            assert.ok(
              err instanceof ConflictError &&
                !(err instanceof FencedError) &&
                !(err instanceof VolumeLockedError),
              `${err.name}: ${err.message}`,
            );
            assert.match(err.message, /changed by another writer/);
            return true;
          });
          await lock.release();
        }),
      );

      it(
        'a fence is bound to its volume: using it on another is a programming error',
        { timeout: 10_000 },
        withStore(kind, async (meta) => {
          const catalog = await catalogWith(meta, 'one', 'two');
          const lock = await acquireVolumeLock(meta, 'one', { holder: A, ttlSeconds: 10 });
          await assert.rejects(
            catalog.commitVersion(await catalog.get('two'), 1, root(1), lock),
            RangeError,
          );
          await assert.rejects(catalog.remove('two', { fence: lock }), RangeError);
          assert.equal((await catalog.get('two')).record.generation, 0);
          await lock.release();
        }),
      );

      it(
        'delete is refused while locked, naming the holder; its holder may delete with its fence; after release anyone may',
        { timeout: 10_000 },
        withStore(kind, async (meta) => {
          const catalog = await catalogWith(meta, 'held', 'free');
          const held = await acquireVolumeLock(meta, 'held', { holder: A, ttlSeconds: 10 });
          await assert.rejects(
            assertVolumeUnlocked(meta, 'held'),
            (err: Error) => err instanceof VolumeLockedError && err.message.includes(A.node),
          );
          await assert.rejects(catalog.remove('held'), (err: Error) => {
            assert.ok(err instanceof VolumeLockedError, `${err.name}: ${err.message}`);
            assert.match(
              err.message,
              /"held" is locked for writing by node node-a-6f1c .*not deleted/,
            );
            return true;
          });
          assert.ok(await catalog.get('held'), 'still there');

          // The holder deletes its own volume: record and lock go together.
          const lost = once(held, 'lost');
          await catalog.remove('held', { fence: held });
          await lost;
          assert.equal(await readVolumeLock(meta, 'held'), undefined);
          await assert.rejects(catalog.get('held'));
          await held.release();

          await assertVolumeUnlocked(meta, 'free');
          await catalog.remove('free');
          assert.deepEqual(await catalog.list(), []);
        }),
      );

      it(
        "a stale writer's fence cannot delete; a deleted volume cannot be locked; epochs go on when the name is reused",
        { timeout: 15_000 },
        withStore(kind, async (meta) => {
          const catalog = await catalogWith(meta, 'vol');
          const lease = await meta.grantLease(1, { keepAlive: false });
          const a = await acquireVolumeLock(meta, 'vol', { holder: A, lease });
          await once(a, 'lost');
          let b;
          for (const deadline = Date.now() + 5000; ;) {
            try {
              b = await acquireVolumeLock(meta, 'vol', { holder: B, ttlSeconds: 10 });
              break;
            } catch (err) {
              if (!(err instanceof VolumeLockedError) || Date.now() > deadline) throw err;
              await new Promise((resolve) => setTimeout(resolve, 50));
            }
          }
          await assert.rejects(
            catalog.remove('vol', { fence: a.fence }),
            (err: Error) => err instanceof FencedError && err.current?.epoch === b.epoch,
          );
          assert.ok(await catalog.get('vol'));
          await b.release();

          await catalog.remove('vol');
          await assert.rejects(
            acquireVolumeLock(meta, 'vol', { holder: A, ttlSeconds: 5 }),
            /no volume named "vol"/,
          );
          await catalogWith(meta, 'vol');
          const c = await acquireVolumeLock(meta, 'vol', { holder: A, ttlSeconds: 5 });
          assert.ok(
            c.epoch > b.epoch,
            `epoch ${c.epoch} after ${b.epoch}: a reused name never repeats an epoch`,
          );
          await c.release();
        }),
      );

      it(
        'a commit whose generation is not above the committed one is a programming error',
        { timeout: 10_000 },
        withStore(kind, async (meta) => {
          const catalog = await catalogWith(meta, 'vol');
          const v1 = await catalog.commitVersion(await catalog.get('vol'), 1, root(1));
          const broken = (pattern: RegExp) => (err: unknown) =>
            err instanceof InvariantError && pattern.test(err.message);
          await assert.rejects(
            catalog.commitVersion(v1, 1, root(1)),
            broken(/generation 1 is not above the committed 1/),
          );
          await assert.rejects(
            catalog.commitVersion(v1, 0, null),
            broken(/generation 0 is not above/),
          );
          assert.deepEqual(await catalog.get('vol'), v1, 'nothing was written');
          assert.equal((await catalog.commitVersion(v1, 2, root(2))).record.generation, 2);
        }),
      );
    },
  );
}
