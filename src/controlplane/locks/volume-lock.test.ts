/**
 * Volume write locks, against both metadata stores (embedded and a real
 * etcd): refusal naming the holder, lapse with the lease, fencing of a
 * writer that lost its lock, racing acquirers, harmless releases.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { InvariantError } from '../../common/assert.js';
import { ConflictError, NotFoundError } from '../../common/errors.js';
import { LeaseNotFoundError } from '../metadata/errors.js';
import type { MetadataStore } from '../metadata/store.js';
import { VolumeCatalog } from '../volumes/catalog.js';
import {
  acquireVolumeLock,
  FencedError,
  fenceCompares,
  listVolumeLocks,
  localHolder,
  readVolumeLock,
  VolumeLockedError,
  VolumeLockLostError,
  type AcquireVolumeLockOptions,
  type VolumeLock,
} from './index.js';
import { testStores, withStore } from '../../../test/support/test-stores.js';

const A = localHolder('node-a-6f1c', '10.0.0.1:10809');
const B = { node: 'node-b-93d2', hostname: 'storage-b', pid: 4242, address: '10.0.0.2:10809' };
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function createVolume(meta: MetadataStore, name: string): Promise<VolumeCatalog> {
  const catalog = new VolumeCatalog(meta);
  await catalog.create({ name, size: 1 << 20, blockSize: 64 * 1024, encrypted: false });
  return catalog;
}

/**
 * Acquire, retrying while the old holder's key is still there: etcd deletes
 * an expired lease's keys a little after the TTL, on its own schedule.
 */
async function acquireWhenFree(
  meta: MetadataStore,
  volume: string,
  options: AcquireVolumeLockOptions,
  timeoutMs = 5000,
): Promise<VolumeLock> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await acquireVolumeLock(meta, volume, options);
    } catch (err) {
      if (!(err instanceof VolumeLockedError) || Date.now() > deadline) throw err;
      await sleep(50);
    }
  }
}

for (const kind of testStores()) {
  describe(`volume write lock: ${kind.name}`, { skip: kind.skip, concurrency: true }, () => {
    it(
      'a second writer is refused at once, naming the holder; after release the next holder has a higher epoch',
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        await createVolume(meta, 'vol');
        const a = await acquireVolumeLock(meta, 'vol', { holder: A, ttlSeconds: 10 });
        assert.equal(a.state, 'held');
        assert.equal(a.epoch, 1);
        assert.deepEqual(a.holder, A);

        const started = Date.now();
        await assert.rejects(
          acquireVolumeLock(meta, 'vol', { holder: B, ttlSeconds: 10 }),
          (err: Error) => {
            assert.ok(err instanceof VolumeLockedError, `${err.name}: ${err.message}`);
            assert.ok(err instanceof ConflictError);
            for (const part of [A.node, A.hostname, `pid ${A.pid}`, A.address!, 'epoch 1', '"vol"'])
              assert.ok(err.message.includes(part), `"${part}" missing from: ${err.message}`);
            assert.deepEqual(err.lock.holder, A);
            assert.equal(err.lock.epoch, 1);
            return true;
          },
        );
        assert.ok(
          Date.now() - started < 1000,
          `refused after ${Date.now() - started} ms: it must not wait for the lock`,
        );

        const info = await readVolumeLock(meta, 'vol');
        assert.deepEqual(
          info && {
            holder: info.holder,
            epoch: info.epoch,
            lease: info.lease,
            revision: info.revision,
          },
          { holder: A, epoch: 1, lease: a.lease.id, revision: a.revision },
        );
        assert.deepEqual([...(await listVolumeLocks(meta)).keys()], ['vol']);

        await a.release();
        assert.equal(a.state, 'released');
        assert.equal(a.lease.state, 'revoked', 'a lock that granted its own lease revokes it');
        assert.equal(await readVolumeLock(meta, 'vol'), undefined);

        const b = await acquireVolumeLock(meta, 'vol', { holder: B, ttlSeconds: 10 });
        assert.equal(b.epoch, 2);
        assert.deepEqual((await readVolumeLock(meta, 'vol'))?.holder, B);
        await b.release();
      }),
    );

    it(
      "a dead writer's lock lapses with its lease: the old lock emits 'lost', the next holder gets a higher epoch",
      { timeout: 15_000 },
      withStore(kind, async (meta) => {
        await createVolume(meta, 'vol');
        const lease = await meta.grantLease(1, { keepAlive: false }); // a writer that stopped renewing
        const a = await acquireVolumeLock(meta, 'vol', { holder: A, lease });
        const lost = once(a, 'lost') as Promise<[Error]>;
        const [reason] = await lost;
        assert.ok(reason instanceof VolumeLockLostError, String(reason));
        assert.match(reason.message, /"vol" \(epoch 1\) lost/);
        assert.equal(a.state, 'lost');
        assert.equal(a.lostReason, reason);

        const b = await acquireWhenFree(meta, 'vol', { holder: B, ttlSeconds: 10 });
        assert.ok(b.epoch > a.epoch, `epoch ${b.epoch} after ${a.epoch}`);
        assert.equal((await readVolumeLock(meta, 'vol'))?.epoch, b.epoch);
        await b.release();
      }),
    );

    it(
      'fencing: a writer whose lease lapsed cannot commit, even holding the latest record; nothing of it is written',
      { timeout: 15_000 },
      withStore(kind, async (meta) => {
        const catalog = await createVolume(meta, 'vol');
        // 3 s: A's first commit must land before the lease lapses, on a loaded machine too.
        const lease = await meta.grantLease(3, { keepAlive: false });
        const a = await acquireVolumeLock(meta, 'vol', { holder: A, lease });
        // A commits while it holds the lock.
        const a1 = await catalog.commitVersion(
          await catalog.get('vol'),
          1,
          { generation: 1, hashLo: 11, hashHi: 11 },
          a,
        );
        await once(a, 'lost');

        const b = await acquireWhenFree(meta, 'vol', { holder: B, ttlSeconds: 10 });
        assert.ok(b.epoch > a.epoch);
        // A's record is still the latest: the record's CAS alone would let it through.
        const latest = await catalog.get('vol');
        assert.equal(latest.modRevision, a1.modRevision);

        // The store refuses A's fence (a writer that does not know it lost its lock)...
        await assert.rejects(
          catalog.commitVersion(a1, 2, { generation: 2, hashLo: 22, hashHi: 22 }, a.fence),
          (err: Error) => {
            assert.ok(err instanceof FencedError, `${err.name}: ${err.message}`);
            assert.ok(err instanceof ConflictError);
            assert.equal(err.epoch, a.epoch);
            assert.equal(err.current?.epoch, b.epoch);
            assert.ok(err.message.includes(B.node), err.message);
            return true;
          },
        );
        // ...and A's lock object refuses before asking, since it knows.
        await assert.rejects(
          catalog.commitVersion(a1, 2, { generation: 2, hashLo: 22, hashHi: 22 }, a),
          FencedError,
        );
        assert.deepEqual(
          await catalog.get('vol'),
          latest,
          'nothing of the refused commits was written',
        );

        // B reads after acquiring, commits; A stays fenced even with B's record.
        const b1 = await catalog.commitVersion(
          await catalog.get('vol'),
          2,
          { generation: 2, hashLo: 33, hashHi: 33 },
          b,
        );
        await assert.rejects(
          catalog.commitVersion(b1, 3, { generation: 3, hashLo: 44, hashHi: 44 }, a.fence),
          FencedError,
        );
        const final = await catalog.get('vol');
        assert.deepEqual(
          [final.record.generation, final.record.root],
          [2, { generation: 2, hashLo: 33, hashHi: 33 }],
        );
        assert.equal(final.modRevision, b1.modRevision);
        await a.release(); // harmless
        assert.equal(b.state, 'held');
        await b.release();
      }),
    );

    it(
      'ten racing acquirers: exactly one wins; the others are told who, and consume no epoch',
      { timeout: 15_000 },
      withStore(kind, async (meta) => {
        await createVolume(meta, 'vol');
        const holders = Array.from({ length: 10 }, (_, i) => ({
          node: `racer-${i}`,
          hostname: 'racer',
          pid: 1000 + i,
        }));
        const results = await Promise.allSettled(
          holders.map((holder) => acquireVolumeLock(meta, 'vol', { holder, ttlSeconds: 10 })),
        );
        const winners = results
          .filter((r): r is PromiseFulfilledResult<VolumeLock> => r.status === 'fulfilled')
          .map((r) => r.value);
        assert.equal(winners.length, 1, `${winners.length} winners`);
        const [winner] = winners;
        assert.equal(winner.epoch, 1);
        for (const r of results) {
          if (r.status === 'fulfilled') continue;
          assert.ok(r.reason instanceof VolumeLockedError, String(r.reason));
          assert.equal(r.reason.lock.holder.node, winner.holder.node);
        }
        await winner.release();
        const next = await acquireVolumeLock(meta, 'vol', { holder: A, ttlSeconds: 10 });
        assert.equal(next.epoch, 2);
        await next.release();
      }),
    );

    it(
      "release is harmless from a lock that was lost or taken over, repeated, and never touches the new holder's key",
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        await createVolume(meta, 'vol');
        const a = await acquireVolumeLock(meta, 'vol', { holder: A, ttlSeconds: 10 });
        const lost = once(a, 'lost') as Promise<[Error]>;
        await meta.delete(a.key); // an operator breaks the lock
        const [reason] = await lost;
        assert.match(reason.message, /deleted/);

        const b = await acquireVolumeLock(meta, 'vol', { holder: B, ttlSeconds: 10 });
        let bLost = 0;
        b.on('lost', () => bLost++);
        await a.release();
        await a.release();
        assert.equal(a.state, 'released');
        const info = await readVolumeLock(meta, 'vol');
        assert.deepEqual(
          info && [info.epoch, info.revision, info.holder.node],
          [b.epoch, b.revision, B.node],
          "B's key is untouched",
        );
        await sleep(200);
        assert.equal(b.state, 'held');
        await b.release();
        await b.release();
        assert.equal(bLost, 0, "release() emits no 'lost'");
        assert.equal(await readVolumeLock(meta, 'vol'), undefined);
      }),
    );

    it(
      'many locks on one node lease: release keeps the lease; its end loses every lock still held',
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        const nodeLease = await meta.grantLease(5);
        const names = Array.from({ length: 12 }, (_, i) => `v${i}`);
        for (const name of names) await createVolume(meta, name);
        const locks = await Promise.all(
          names.map((name) => acquireVolumeLock(meta, name, { holder: A, lease: nodeLease })),
        );
        assert.ok(
          nodeLease.listenerCount('lost') <= 1,
          `${nodeLease.listenerCount('lost')} 'lost' listeners on the shared lease`,
        );
        await locks[0].release();
        assert.equal(nodeLease.state, 'alive', "release() leaves a caller's lease alive");
        assert.equal(await readVolumeLock(meta, 'v0'), undefined);
        const lostAll = Promise.all(locks.slice(1).map((lock) => once(lock, 'lost')));
        await nodeLease.revoke();
        await lostAll;
        assert.ok(locks.slice(1).every((lock) => lock.state === 'lost'));
        assert.match(locks[1].lostReason!.message, /revoked/);
        assert.equal((await listVolumeLocks(meta)).size, 0);
        await Promise.all(locks.map((lock) => lock.release()));
      }),
    );

    it(
      'a lock is not disturbed by the lock of a volume whose name extends its own',
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        await createVolume(meta, 'a');
        await createVolume(meta, 'ab');
        const a = await acquireVolumeLock(meta, 'a', { holder: A, ttlSeconds: 10 });
        const ab = await acquireVolumeLock(meta, 'ab', { holder: B, ttlSeconds: 10 });
        await ab.release();
        await sleep(200);
        assert.equal(a.state, 'held');
        await a.release();
      }),
    );

    it(
      'refuses a missing volume, a lease that is not alive, and ambiguous options',
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        await assert.rejects(
          acquireVolumeLock(meta, 'nope', { holder: A, ttlSeconds: 5 }),
          NotFoundError,
        );
        await createVolume(meta, 'vol');
        const lease = await meta.grantLease(5);
        await lease.revoke();
        await assert.rejects(
          acquireVolumeLock(meta, 'vol', { holder: A, lease }),
          LeaseNotFoundError,
        );
        await assert.rejects(
          acquireVolumeLock(meta, 'vol', { holder: A } as AcquireVolumeLockOptions),
          TypeError,
        );
        await assert.rejects(
          acquireVolumeLock(meta, 'vol', { holder: { ...A, node: '' }, ttlSeconds: 5 }),
          RangeError,
        );
        assert.equal(await readVolumeLock(meta, 'vol'), undefined, 'no refusal left a lock behind');
      }),
    );

    it('closing the store loses a held lock', { timeout: 10_000 }, async () => {
      const meta = await kind.open();
      await createVolume(meta, 'vol');
      const a = await acquireVolumeLock(meta, 'vol', { holder: A, ttlSeconds: 10 });
      const lost = once(a, 'lost');
      await meta.close();
      await lost;
      assert.equal(a.state, 'lost');
      await a.release(); // harmless on a closed store
    });

    it(
      'an epoch counter that went back is caught: a lock never repeats an epoch; a fence of revision 0 is refused',
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        await createVolume(meta, 'vol');
        const first = await acquireVolumeLock(meta, 'vol', { holder: A, ttlSeconds: 10 });
        assert.equal(first.epoch, 1);
        await first.release();
        await meta.delete('epochs/volumes/vol'); // never done by the lock module: the counter is never deleted
        await assert.rejects(
          acquireVolumeLock(meta, 'vol', { holder: A, ttlSeconds: 10 }),
          (err: unknown) => {
            return err instanceof InvariantError && /lock epoch 1 is not above 1/.test(err.message);
          },
        );
        assert.throws(() => fenceCompares({ ...first.fence, revision: 0 }), InvariantError);
      }),
    );
  });
}
