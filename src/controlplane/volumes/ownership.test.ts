/**
 * Volume ownership against both metadata stores: a node takes a volume for
 * writing (lock and a reserved generation) or read-only (a pin, naming the
 * writer); its commits are fenced by the lock; a commit whose reply was lost
 * is recognised, also after the store was away (waited for, never taken as a
 * failure); a lost lock is won back only if nobody wrote meanwhile; a
 * lock this very process had given up on is removed.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CommitOutcomeUnknownError } from '../../common/errors.js';
import { quietLogger } from '../../../test/support/peer-helpers.js';
import {
  acquireVolumeLock,
  FencedError,
  localHolder,
  readVolumeLock,
  volumeLockKey,
  type VolumeLock,
} from '../locks/index.js';
import { testStores, withStore } from '../../../test/support/test-stores.js';
import type { MetadataStore } from '../metadata/store.js';
import { VolumeCatalog } from './catalog.js';
import { VolumeOwnership, type LockRecovery, type VolumeOwnershipOptions } from './ownership.js';
import { listReadPins } from './read-pins.js';

const root = (n: number) => ({ generation: n, hashLo: n, hashHi: n });
const log = quietLogger();

async function catalogWith(meta: MetadataStore, name: string): Promise<VolumeCatalog> {
  const catalog = new VolumeCatalog(meta);
  await catalog.create({ name, size: 1 << 20, blockSize: 64 * 1024, encrypted: false });
  await catalog.commitVersion(await catalog.get(name), 1, root(1));
  return catalog;
}

/** The catalog's commits land but fail as if their reply was lost; returns the real commit. */
function loseCommitReplies(catalog: VolumeCatalog): VolumeCatalog['commitVersionHolding'] {
  const commitVersion = catalog.commitVersionHolding.bind(catalog);
  catalog.commitVersionHolding = async (...args) => {
    await commitVersion(...args);
    throw new Error('the reply was lost');
  };
  return commitVersion;
}

type Options = Partial<VolumeOwnershipOptions>;

function ownership(
  meta: MetadataStore,
  catalog: VolumeCatalog,
  node: string,
  options: Options = {},
): VolumeOwnership {
  return new VolumeOwnership(meta, catalog, {
    node,
    ttlSeconds: 5,
    retryMs: 60_000,
    log,
    ...options,
  });
}

/** An ownership whose lost locks are retried at once, and a promise of how the first recovery ended. */
function recovering(
  meta: MetadataStore,
  catalog: VolumeCatalog,
  node: string,
  gate: Promise<void> = Promise.resolve(),
) {
  let told!: (outcome: LockRecovery) => void;
  const outcome = new Promise<LockRecovery>((resolve) => (told = resolve));
  const owner = ownership(meta, catalog, node, {
    retryMs: 20,
    serialize: async (_name, fn) => {
      await gate;
      return fn();
    },
    onRecovery: (_name, how) => told(how),
  });
  return { owner, outcome };
}

/** Take the lock away from whoever holds it, as an operator (or a lapsed lease) would. */
async function dropLock(meta: MetadataStore, name: string): Promise<void> {
  await meta.delete(volumeLockKey(name));
}

for (const kind of testStores()) {
  describe(`volume ownership: ${kind.name}`, { skip: kind.skip, concurrency: true }, () => {
    it(
      'the first taker writes, with a reserved generation; the next reads a pinned version, naming the writer',
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        const catalog = await catalogWith(meta, 'vol');
        const a = ownership(meta, catalog, 'node-a');
        const b = ownership(meta, catalog, 'node-b');
        const writer = await a.take('vol');
        assert.equal(writer?.readOnly, undefined);
        assert.equal(
          writer?.versioned.record.generation,
          2,
          'one generation up from the last commit',
        );
        assert.equal(
          (await catalog.get('vol')).record.generation,
          2,
          'and that reservation is committed',
        );
        assert.ok(a.writes('vol') && a.writing('vol'));
        assert.equal(await a.writtenElsewhere('vol'), undefined, 'its own lock is no other writer');

        const reader = await b.take('vol');
        assert.match(
          reader?.readOnly ?? '',
          /^written by node node-a \(host .*, pid \d+\) \(lock epoch 1\)$/,
        );
        assert.equal(b.readOnlyReason('vol'), reader?.readOnly);
        assert.equal(await b.writtenElsewhere('vol'), reader?.readOnly);
        assert.equal(b.writes('vol'), false);
        assert.deepEqual(
          (await listReadPins(meta)).map((p) => [p.node, p.generation]),
          [['node-b', 2]],
        );

        await b.release('vol');
        assert.deepEqual(await listReadPins(meta), [], 'the pin goes on release');
        await a.release('vol');
        assert.equal(await readVolumeLock(meta, 'vol'), undefined, 'and so does the lock');
        assert.equal(await a.take('absent'), undefined, 'no such volume');
      }),
    );

    it(
      'commits go on top of the last one; after the lock is lost they are fenced',
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        const catalog = await catalogWith(meta, 'vol');
        const a = ownership(meta, catalog, 'node-a');
        await a.take('vol');
        await a.commit('vol', 3, root(3));
        await a.commit('vol', 4, root(4));
        assert.equal((await catalog.get('vol')).record.generation, 4);
        await dropLock(meta, 'vol');
        await assert.rejects(a.commit('vol', 5, root(5)), FencedError);
        assert.equal(
          (await catalog.get('vol')).record.generation,
          4,
          'nothing of the refused commit landed',
        );
        await a.releaseAll();
      }),
    );

    it(
      'a commit whose reply was lost but which landed is recognised as ours',
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        const catalog = await catalogWith(meta, 'vol');
        const a = ownership(meta, catalog, 'node-a');
        await a.take('vol');
        const commitVersion = loseCommitReplies(catalog);
        await a.commit('vol', 3, root(3));
        catalog.commitVersionHolding = async () => {
          throw new Error('etcd is away');
        };
        await assert.rejects(
          a.commit('vol', 4, root(4)),
          /etcd is away/,
          'one that did not land still fails',
        );
        catalog.commitVersionHolding = commitVersion;
        await a.commit('vol', 4, root(4));
        assert.equal(
          (await catalog.get('vol')).record.generation,
          4,
          'later commits go on top of the recognised one',
        );
        await a.releaseAll();
      }),
    );

    it(
      'a commit whose reply was lost while the store stays away is waited out, never counted as failed',
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        const catalog = await catalogWith(meta, 'vol');
        const a = ownership(meta, catalog, 'node-a');
        await a.take('vol');
        const commitVersion = loseCommitReplies(catalog);
        const get = catalog.get.bind(catalog);
        let away = true;
        catalog.get = async (name) => {
          if (away) throw new Error('etcd is away');
          return get(name);
        };
        // Counted as failed, version 3 would be made again with other pages
        // under the same generation, over those the landed one references.
        let settled = false;
        const committing = a.commit('vol', 3, root(3)).finally(() => (settled = true));
        await sleep(500);
        assert.equal(settled, false, 'the commit waits while the store is away');
        away = false;
        await committing;
        catalog.commitVersionHolding = commitVersion;
        await a.commit('vol', 4, root(4));
        assert.equal((await catalog.get('vol')).record.generation, 4);

        // The node stops before the store answers: the outcome is unknown, and said so.
        catalog.commitVersionHolding = async () => {
          throw new Error('the reply was lost');
        };
        away = true;
        const unknown = a.commit('vol', 5, root(5));
        await sleep(300);
        a.stopRecovering();
        await assert.rejects(unknown, CommitOutcomeUnknownError);
        away = false;
        await a.releaseAll();
      }),
    );

    it(
      'a lost lock is won back when nobody wrote meanwhile, and commits resume',
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        const catalog = await catalogWith(meta, 'vol');
        const { owner: a, outcome } = recovering(meta, catalog, 'node-a');
        await a.take('vol');
        await dropLock(meta, 'vol');
        assert.equal(await outcome, 'resumed');
        assert.ok(a.writing('vol'));
        assert.equal((await readVolumeLock(meta, 'vol'))?.epoch, 2, 'a new epoch');
        await a.commit('vol', 3, root(3));
        assert.equal((await catalog.get('vol')).record.generation, 3);
        await a.releaseAll();
      }),
    );

    it(
      'a lost lock is not resumed when another writer committed meanwhile: fenced for good',
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        const catalog = await catalogWith(meta, 'vol');
        let open!: () => void;
        const { owner: a, outcome } = recovering(
          meta,
          catalog,
          'node-a',
          new Promise((resolve) => (open = resolve)),
        );
        const b = ownership(meta, catalog, 'node-b');
        await a.take('vol');
        await dropLock(meta, 'vol');
        // B writes (its reserving commit) and lets go before A tries again.
        const taken = await b.take('vol');
        assert.equal(taken?.readOnly, undefined);
        await b.release('vol');
        open();
        assert.equal(await outcome, 'fenced');
        assert.equal(a.writing('vol'), false);
        assert.equal(
          await readVolumeLock(meta, 'vol'),
          undefined,
          'the lock taken to look is given back',
        );
        await assert.rejects(a.commit('vol', 4, root(4)), FencedError);
        await a.releaseAll();
      }),
    );

    it(
      "a lock this very process had given up on is removed and taken afresh; another process's is not",
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        const catalog = await catalogWith(meta, 'vol');
        const stale: VolumeLock = await acquireVolumeLock(meta, 'vol', {
          holder: localHolder('node-a'),
          ttlSeconds: 5,
        });
        const a = ownership(meta, catalog, 'node-a');
        const taken = await a.take('vol');
        assert.equal(taken?.readOnly, undefined, 'written here');
        if (stale.state === 'held') await once(stale, 'lost'); // its watch tells it a moment later
        assert.equal(stale.state, 'lost');
        assert.equal((await readVolumeLock(meta, 'vol'))?.epoch, 2);
        await a.releaseAll();
        await stale.release();

        const elsewhere = await acquireVolumeLock(meta, 'vol', {
          holder: { ...localHolder('node-a'), pid: process.pid + 1 },
          ttlSeconds: 5,
        });
        const again = ownership(meta, catalog, 'node-a');
        assert.match(
          (await again.take('vol'))?.readOnly ?? '',
          /lock epoch 3/,
          'same node id, another process: read-only',
        );
        await again.releaseAll();
        await elsewhere.release();
      }),
    );

    it(
      'a single node adopts a version and commits unfenced on top of it',
      { timeout: 10_000 },
      withStore(kind, async (meta) => {
        const catalog = await catalogWith(meta, 'vol');
        const single = new VolumeOwnership(meta, catalog, { log });
        single.adopt('vol', await catalog.get('vol'));
        await single.commit('vol', 2, root(2));
        assert.equal((await catalog.get('vol')).record.generation, 2);
        await assert.rejects(single.take('vol'), TypeError, 'no locks without a node id');
        await assert.rejects(single.commit('other', 1, null), /volume "other" was deleted/);
      }),
    );
  });
}
