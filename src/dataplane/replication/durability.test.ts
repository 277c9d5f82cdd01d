/**
 * The durability rule (durability.ts) against a fake placement: which copies
 * count, what is counted as under-replicated or failed, what a commit syncs
 * and when it must fail. The single node's case is the same rule with no peers.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { IoError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { BlockRef } from '../../model/block-ref.js';
import { NO_PEERS } from './block-placement.js';
import {
  countShortfall,
  notePeerWriteFailures,
  storedAnywhere,
  VersionCopies,
  type BlockCopies,
  type CopyKeeper,
} from './durability.js';
import { SingleNodePlacement } from './single-node.js';

interface FakePlacement extends CopyKeeper {
  synced: string[][];
  pagePeers: string[];
}

/** Replication 3; pages go to `pagePeers`; `failing` peers fail to sync. */
function fakePlacement(
  failing: string[] = [],
  options: { holdsCopies?: boolean; pagePeers?: string[] } = {},
): FakePlacement {
  const placement: FakePlacement = {
    holdsCopies: options.holdsCopies ?? true,
    stats: { underReplicatedBlocks: 0, failedPeerWrites: 0, remoteReads: 0 },
    synced: [],
    pagePeers: options.pagePeers ?? [],
    replicationOf: () => 3,
    putPage: async () => placement.pagePeers.filter((uuid) => !failing.includes(uuid)),
    syncPeers: async (uuids) => {
      const asked = [...uuids].sort();
      placement.synced.push(asked);
      return new Set(asked.filter((uuid) => failing.includes(uuid)));
    },
  };
  return placement;
}

const page: BlockRef = { volumeId: 7, generation: 2, index: 2 ** 52 };
const bytes = new Uint8Array(16);

function storeSpy() {
  const store = {
    syncs: 0,
    async sync() {
      store.syncs++;
    },
  };
  return store;
}

function quietLog(): Logger & { warned: unknown[] } {
  const warned: unknown[] = [];
  return { warned, warn: (obj: unknown) => void warned.push(obj) } as unknown as Logger & {
    warned: unknown[];
  };
}

describe('durability rule', () => {
  test('a block is stored if any copy is: here, or on a peer', () => {
    assert.equal(storedAnywhere(true, NO_PEERS), true);
    assert.equal(storedAnywhere(false, ['b']), true);
    assert.equal(storedAnywhere(false, NO_PEERS), false);
  });

  test("fewer copies than the volume's replication are counted, enough are not", () => {
    const placement = fakePlacement();
    countShortfall(placement, 7, { local: true, peers: ['b', 'c'] });
    assert.equal(placement.stats.underReplicatedBlocks, 0);
    countShortfall(placement, 7, { local: false, peers: ['b', 'c'] });
    countShortfall(placement, 7, { local: true, peers: ['b'] });
    assert.equal(placement.stats.underReplicatedBlocks, 2);
  });

  test('failed peer writes are counted and logged once per round', () => {
    const placement = fakePlacement();
    const log = quietLog();
    notePeerWriteFailures(placement, log, 'vol', []);
    assert.equal(log.warned.length, 0);
    notePeerWriteFailures(placement, log, 'vol', ['b: reset', 'c: timeout']);
    assert.equal(placement.stats.failedPeerWrites, 2);
    assert.equal(log.warned.length, 1);
  });

  test('a single node: the commit syncs the local store and nothing else, and counts nothing', async () => {
    const single = new SingleNodePlacement();
    const store = storeSpy();
    const copies = new VersionCopies(single, 'vol');
    copies.putPage(page, bytes, 1, 2, 0);
    const blocks: [number, BlockCopies][] = [[0, { local: true, peers: NO_PEERS }]];
    countShortfall(single, 7, blocks[0][1]);
    await copies.sync(store, blocks);
    assert.equal(store.syncs, 1);
    assert.deepEqual(single.stats, {
      underReplicatedBlocks: 0,
      failedPeerWrites: 0,
      remoteReads: 0,
    });
  });

  test('every peer holding a block or a page of the version is synced, once', async () => {
    const placement = fakePlacement([], { pagePeers: ['d'] });
    const store = storeSpy();
    const copies = new VersionCopies(placement, 'vol');
    copies.putPage(page, bytes, 1, 2, 0);
    await copies.sync(store, [
      [0, { local: true, peers: ['b', 'c'] }],
      [1, { local: false, peers: ['b'] }],
    ]);
    assert.equal(store.syncs, 1);
    assert.deepEqual(placement.synced, [['b', 'c', 'd']]);
  });

  test('a peer that cannot sync does not count: its blocks lose that copy and are not waited on again', async () => {
    const placement = fakePlacement(['c']);
    const kept: BlockCopies = { local: true, peers: ['b', 'c'] };
    await new VersionCopies(placement, 'vol').sync(storeSpy(), [[0, kept]]);
    assert.deepEqual(kept.peers, ['b']);
    assert.equal(placement.stats.underReplicatedBlocks, 1);
  });

  test('a block whose only copies failed to sync fails the commit', async () => {
    const placement = fakePlacement(['b', 'c']);
    const blocks: [number, BlockCopies][] = [
      [0, { local: true, peers: ['b'] }],
      [5, { local: false, peers: ['b', 'c'] }],
    ];
    await assert.rejects(
      new VersionCopies(placement, 'vol').sync(storeSpy(), blocks),
      (err: unknown) => {
        assert.ok(err instanceof IoError);
        assert.match(err.message, /volume vol: 1 block\(s\) have no durable copy .* first 5/);
        return true;
      },
    );
  });

  test('a store-less client fails the commit when a map page is on no storage node', async () => {
    const placement = fakePlacement(['b'], { holdsCopies: false, pagePeers: ['b'] });
    const copies = new VersionCopies(placement, 'vol');
    copies.putPage(page, bytes, 1, 2, 0);
    const blocks: [number, BlockCopies][] = [[0, { local: false, peers: ['c'] }]];
    await assert.rejects(
      copies.sync(storeSpy(), blocks),
      /a map page of the new version is on no storage node/,
    );
  });

  test('a node that holds copies keeps its own map pages: peers failing them is not fatal', async () => {
    const placement = fakePlacement(['d'], { pagePeers: ['d'] });
    const copies = new VersionCopies(placement, 'vol');
    copies.putPage(page, bytes, 1, 2, 0);
    await copies.sync(storeSpy(), [[0, { local: true, peers: ['b'] }]]);
  });
});
