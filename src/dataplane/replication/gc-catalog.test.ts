/**
 * CatalogGcViews against a real Volume's versions (local store, cache, pool):
 * the view references exactly what the committed version's map does, pages
 * included; a new version is picked up (incrementally) and what it replaced
 * is no longer referenced; a version pinned by a reader stays referenced;
 * a map that cannot be loaded yields no view.
 */
import { SingleNodePlacement } from './single-node.js';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { IoError } from '../../common/errors.js';
import type { VolumeRecord } from '../../controlplane/volumes/catalog.js';
import { MAP_PAGE_BIT, refKey, type BlockRef } from '../../model/block-ref.js';
import { LocalSlotStore } from '../blocks/slot-store.js';
import { BlockCache } from '../cache/block-cache.js';
import { quietLogger } from '../../../test/support/peer-helpers.js';
import { DataPool } from '../pool/data-pool.js';
import type { MapRoot } from '../../model/map-root.js';
import { Volume, type VolumeIdentity, type VolumeServices } from '../volume/volume.js';
import { CatalogGcViews } from './gc-catalog.js';
import { references } from './map-index.js';
import { OFF_HASH_HI, OFF_HASH_LO } from '../blocks/record.js';

const BS = 4096; // 256 entries a page: 1024 blocks make a two-level map
const identity: VolumeIdentity = {
  id: 42,
  name: 'gc',
  size: 1024 * BS,
  blockSize: BS,
  encrypted: false,
};

describe('CatalogGcViews', { timeout: 60_000 }, () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'torus-gc-catalog-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test('references exactly the committed map, follows new versions, and gives no view when a page is missing', async () => {
    const dir = join(root, 'node');
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 8192 * BS });
    const store = await LocalSlotStore.open(dir);
    const cache = new BlockCache(BS, 1024 * BS);
    const pool = new DataPool(
      {
        cache: cache.buffer,
        blockSize: BS,
        records: store.records,
        dataPath: store.dataPath,
        slotsPath: store.slotsPath,
      },
      1,
    );
    const committed = { generation: 0, root: undefined as MapRoot | undefined };
    const log = quietLogger();
    const services: VolumeServices = {
      store,
      cache,
      pool,
      log,
      placement: new SingleNodePlacement(),
      async commit(_identity, generation, mapRoot) {
        committed.generation = generation;
        committed.root = mapRoot;
      },
    };
    const record = (): VolumeRecord => ({
      ...identity,
      createdAt: '',
      generation: committed.generation,
      root: committed.root ?? null,
    });
    let remoteAsks = 0;
    const views = new CatalogGcViews(
      {
        store,
        cluster: {
          getBlock: async () => {
            remoteAsks++;
            throw new IoError('EIO', 'no peers here');
          },
        },
      },
      log,
    );
    const volume = await Volume.open(identity, 0, undefined, null, services);
    try {
      // Gen 1: blocks spread over four leaf pages. Gen 2: a few rewritten, one trimmed.
      await volume.write(0, randomBytes(300 * BS), false);
      await volume.write(900 * BS, randomBytes(10 * BS), false);
      await volume.flush();
      const gen1 = new Set(
        [...volume.referencedRefs()].map((r) => refKey(r.volumeId, r.generation, r.index)),
      );
      await volume.write(5 * BS, randomBytes(2 * BS), false);
      await volume.zeroRange(905 * BS, BS, false);
      await volume.flush();
      assert.equal(committed.generation, 2);

      const check = async () => {
        const view = await views.view([record()]);
        assert.ok(view);
        assert.deepEqual(view.volumes.get(identity.id), {
          id: identity.id,
          generation: committed.generation,
        });
        const now = new Set(
          [...volume.referencedRefs()].map((r) => refKey(r.volumeId, r.generation, r.index)),
        );
        for (const [ref, slot] of store.blocks()) {
          const referenced = now.has(refKey(ref.volumeId, ref.generation, ref.index));
          assert.equal(view.isReferenced(ref), referenced, `store block ${JSON.stringify(ref)}`);
          // With the copy's hash (data blocks, pages and the root alike); another hash is another copy.
          const record = store.record(slot);
          const hash = {
            lo: record.getUint32(OFF_HASH_LO, true),
            hi: record.getUint32(OFF_HASH_HI, true),
          };
          assert.equal(
            view.isReferenced(ref, hash),
            referenced,
            `with its hash: ${JSON.stringify(ref)}`,
          );
          assert.equal(
            view.isReferenced(ref, { lo: hash.lo ^ 1, hi: hash.hi }),
            false,
            `with another hash: ${JSON.stringify(ref)}`,
          );
        }
        for (const key of [...gen1, ...now]) {
          const [volumeId, generation, index] = key.split('/').map(Number);
          assert.equal(
            view.isReferenced({ volumeId, generation, index }),
            now.has(key),
            `ref ${key}`,
          );
        }
        return view;
      };
      const view2 = await check();
      assert.ok(
        !view2.isReferenced({ volumeId: identity.id, generation: 1, index: 5 }),
        'rewritten in gen 2',
      );
      assert.ok(
        !view2.isReferenced({ volumeId: identity.id, generation: 1, index: 905 }),
        'trimmed in gen 2',
      );
      assert.ok(
        view2.isReferenced({ volumeId: identity.id, generation: 1, index: 6 + 1 }),
        'kept from gen 1',
      );
      assert.ok(!view2.isReferenced({ volumeId: 43, generation: 1, index: 0 }), 'another volume');

      // Gen 3 touches one leaf: reloaded from the pages it wrote (that leaf and
      // the root) plus the cached rest.
      const gen2 = new Set(
        [...volume.referencedRefs()].map((r) => refKey(r.volumeId, r.generation, r.index)),
      );
      const record2 = record();
      await volume.write(299 * BS, randomBytes(BS), false);
      // What gen 3 supersedes stays in the store, as copies on peers do while a reader pins gen 2.
      const release = store.release.bind(store);
      store.release = () => undefined;
      await volume.flush();
      store.release = release;
      const readBlock = store.readBlock.bind(store);
      let pageReads = 0;
      store.readBlock = (slot, dest) => (pageReads++, readBlock(slot, dest));
      await check();
      store.readBlock = readBlock;
      assert.equal(pageReads, 2, 'the new root and the one leaf it changed');
      assert.equal(remoteAsks, 0, 'every page came from the local store');

      // A node serving gen 2 read-only pins it: everything gen 2 or gen 3
      // references is kept, gen 1's leftovers are not. Pins of other volumes
      // (deleted ones) are ignored.
      const pin = (r: VolumeRecord) => ({
        node: 'reader',
        volume: r.name,
        id: r.id,
        generation: r.generation,
        root: r.root,
        size: r.size,
        blockSize: r.blockSize,
        since: '',
      });
      pageReads = 0;
      store.readBlock = (slot, dest) => (pageReads++, readBlock(slot, dest));
      const pinnedView = await views.view(
        [record()],
        [pin(record2), { ...pin(record2), node: 'another reader' }, pin({ ...record2, id: 43 })],
      );
      store.readBlock = readBlock;
      assert.ok(pinnedView);
      assert.equal(
        pageReads,
        2,
        'the pinned version shares all but its root and the leaf gen 3 changed',
      );
      const gen3 = new Set(
        [...volume.referencedRefs()].map((r) => refKey(r.volumeId, r.generation, r.index)),
      );
      for (const key of [...gen1, ...gen2, ...gen3]) {
        const [volumeId, generation, index] = key.split('/').map(Number);
        assert.equal(
          pinnedView.isReferenced({ volumeId, generation, index }),
          gen2.has(key) || gen3.has(key),
          `ref ${key} with gen 2 pinned`,
        );
      }
      assert.ok(
        pinnedView.isReferenced({ volumeId: identity.id, generation: 1, index: 299 }),
        'rewritten in gen 3, still read through the pinned gen 2',
      );
      assert.ok(
        !(await views.view([record()]))!.isReferenced({
          volumeId: identity.id,
          generation: 1,
          index: 299,
        }),
        'and garbage once unpinned',
      );

      // A page no node holds: no view, rather than one that frees by a partial map.
      const pageRef = [...volume.referencedRefs()].find(
        (r) => r.index >= MAP_PAGE_BIT && r.index !== MAP_PAGE_BIT + 2 ** 40,
      ) as BlockRef;
      assert.ok(pageRef, 'a leaf page');
      await volume.write(600 * BS, randomBytes(BS), false); // touch a leaf (and so the root) in gen 4
      await volume.flush();
      const leaf = [...volume.referencedRefs()].find(
        (r) => r.index >= MAP_PAGE_BIT && r.generation === 4 && r.index < MAP_PAGE_BIT + 2 ** 40,
      )!;
      store.release(leaf);
      assert.equal(await views.view([record()]), undefined);
      assert.ok(remoteAsks > 0, 'asked the peers first');
    } finally {
      await volume.close();
      await pool.close();
      await store.close();
    }
  });

  test('references() with no map, or refs beyond it, is false', () => {
    assert.equal(references(undefined, { volumeId: 1, generation: 1, index: 0 }), false);
  });
});
