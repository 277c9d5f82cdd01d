/**
 * The Rebalancer on node A: a real LocalSlotStore (in a temp dir) served by
 * its DiskPeerBackend, peers as verifying in-memory backends (some behind a
 * failing layer), a real ring and placement. A ring change must move blocks
 * to the node that joined and drop A's surplus copies only once every target
 * holds them; garbage must be freed and nothing else; a failing peer costs
 * counted failures, never a copy; the rate limit must bound copies.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { RingDescription } from '../../model/ring/index.js';
import { hasher } from '../blocks/hash.js';
import { MAP_PAGE_BIT, type BlockRef } from '../../model/block-ref.js';
import { LocalSlotStore } from '../blocks/slot-store.js';
import type { PeerBlockStore, WireBlock } from '../peer/backend.js';
import { MemoryPeerBackend } from '../../../test/support/memory-peer-backend.js';
import { blockBytes, makeBlock, quietLogger } from '../../../test/support/peer-helpers.js';
import { DiskPeerBackend } from './disk-backend.js';
import { gcViewOf, type GcView } from './gc-view.js';
import { ClusterPlacement } from './placement.js';
import { Rebalancer, type RebalancerOptions } from './rebalance.js';

const BS = 4096;
const log = quietLogger();

/** A peer store that fails the ops named in `failing` (as a dead or refusing peer would). */
class Flaky implements PeerBlockStore {
  failing = new Set<string>();
  puts = 0;
  constructor(readonly inner: PeerBlockStore) {}
  private check(op: string): void {
    if (this.failing.has(op)) throw new Error(`injected ${op} failure`);
  }
  async putBlocks(blocks: readonly WireBlock[]): Promise<void> {
    this.check('put');
    this.puts += blocks.length;
    return this.inner.putBlocks(blocks);
  }
  async getBlock(ref: BlockRef) {
    this.check('get');
    return this.inner.getBlock(ref);
  }
  async hasBlocks(refs: readonly BlockRef[], hashes?: Uint32Array) {
    this.check('has');
    return this.inner.hasBlocks(refs, hashes);
  }
  async deleteBlocks(refs: readonly BlockRef[]) {
    this.check('delete');
    return this.inner.deleteBlocks(refs);
  }
  async sync() {
    this.check('sync');
    return this.inner.sync();
  }
}

interface Cluster {
  a: string;
  local: DiskPeerBackend;
  store: LocalSlotStore;
  peers: Map<string, { backend: MemoryPeerBackend; flaky: Flaky }>;
  placement: ClusterPlacement;
  ring(members: string[], version: number): RingDescription;
  setRing(members: string[], version: number): void;
  rebalancer(options?: Partial<RebalancerOptions>): Rebalancer;
  close(): Promise<void>;
}

const sorted = (uuids: string[]) => [...uuids].sort();

describe('Rebalancer', { timeout: 60_000 }, () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'torus-rebalance-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  /** Node A with an empty store and `peerCount` memory peers; the ring starts as A and the first peer. */
  async function cluster(name: string, peerCount: number): Promise<Cluster> {
    const dir = join(root, name);
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 4096 * BS });
    const store = await LocalSlotStore.open(dir);
    const a = randomUUID();
    const local = new DiskPeerBackend(store, a, log, await hasher());
    const peers = new Map<string, { backend: MemoryPeerBackend; flaky: Flaky }>();
    for (let i = 0; i < peerCount; i++) {
      const uuid = randomUUID();
      const backend = new MemoryPeerBackend({ uuid });
      peers.set(uuid, { backend, flaky: new Flaky(backend) });
    }
    const placement = new ClusterPlacement(a, { clusterId: 'test', nodeId: a });
    const nodes = [a, ...peers.keys()].map((uuid, i) => ({
      uuid,
      address: `127.0.0.1:${40000 + i}`,
    }));
    const rebalancers: Rebalancer[] = [];
    const c: Cluster = {
      a,
      local,
      store,
      peers,
      placement,
      ring: (members, version) => ({
        version,
        type: 'ketama',
        replication: 2,
        members: members.map((uuid) => ({ uuid, weight: 1 << 30 })),
      }),
      setRing: (members, version) => placement.update(c.ring(members, version), nodes),
      rebalancer(options = {}) {
        const r = new Rebalancer({
          placement,
          peerStore: (peer) => peers.get(peer.uuid)!.flaky,
          local,
          log,
          intervalMs: 0,
          settleMs: 0,
          chunkBlocks: 32,
          rateBytesPerSecond: 1024 ** 3,
          ...options,
        });
        rebalancers.push(r);
        return r;
      },
      async close() {
        for (const r of rebalancers) await r.close();
        await local.close();
        await store.close();
      },
    };
    return c;
  }

  /** Put blocks on A (and on `also`), as replication under the old ring left them. */
  async function seed(c: Cluster, refs: BlockRef[], also: string[] = []): Promise<void> {
    for (const [i, ref] of refs.entries()) {
      const block = await makeBlock(
        ref,
        blockBytes(i + ref.volumeId * 1000 + ref.generation * 100, BS),
      );
      await c.local.putBlocks([block]);
      for (const uuid of also) await c.peers.get(uuid)!.backend.putBlocks([block]);
    }
  }

  const holds = (c: Cluster, ref: BlockRef) =>
    c.store.lookup(ref.volumeId, ref.generation, ref.index) !== undefined;
  const peerHolds = async (c: Cluster, uuid: string, ref: BlockRef) =>
    (await c.peers.get(uuid)!.backend.hasBlocks([ref]))[0];

  async function runOnce(r: Rebalancer): Promise<void> {
    r.start();
    await r.idle();
  }

  test('a node joins: A copies the blocks the ring now gives it and drops its copies the ring no longer wants', async () => {
    const c = await cluster('join', 2);
    const [b, n] = [...c.peers.keys()];
    c.setRing([c.a, b], 1);
    const refs = Array.from({ length: 120 }, (_, index) => ({ volumeId: 7, generation: 1, index }));
    refs.push({ volumeId: 7, generation: 1, index: MAP_PAGE_BIT }); // the root map page moves like any block
    await seed(c, refs, [b]);
    const view = gcViewOf([{ id: 7, generation: 1, refs }]);

    c.setRing([c.a, b, n], 2); // N joins
    const expectOnN = refs.filter((ref) =>
      c.placement
        .writeTargets(ref.volumeId, ref.index)
        .remote.some((at) => c.placement.peers[at].uuid === n),
    );
    const expectOffA = refs.filter(
      (ref) => !c.placement.writeTargets(ref.volumeId, ref.index).local,
    );
    assert.ok(
      expectOnN.length > 10 && expectOffA.length > 10,
      'the join moves a fair share of blocks (ring sanity)',
    );

    const r = c.rebalancer({ gcView: async () => view });
    await runOnce(r);

    for (const ref of refs) {
      const targets = c.placement.writeTargets(ref.volumeId, ref.index);
      const remote = sorted(targets.remote.map((at) => c.placement.peers[at].uuid));
      assert.equal(holds(c, ref), targets.local, `A holds ${ref.index} iff it is a target`);
      for (const uuid of remote)
        assert.ok(
          await peerHolds(c, uuid, ref),
          `target ${uuid === n ? 'N' : 'B'} holds ${ref.index}`,
        );
    }
    assert.equal(r.stats.copied, expectOnN.length, 'one copy per block N is a new target of');
    assert.equal(r.stats.dropped, expectOffA.length);
    assert.equal(r.stats.failed, 0);
    assert.equal(r.stats.garbageFreed, 0);
    assert.equal(r.stats.pendingBlocks, 0);
    assert.equal(r.rebalancing, false, 'balanced after a clean run');
    assert.equal(r.stats.copiedBytes, expectOnN.length * BS);

    // A second run finds nothing to do.
    const copied = r.stats.copied;
    await runOnce(r);
    assert.equal(r.stats.copied, copied);
    assert.equal(r.stats.last?.dropped, 0);
    await c.close();
  });

  test("a target's stale copy (the same ref, other bytes) is not a copy: ours goes over it before ours is dropped", async () => {
    const c = await cluster('stale', 2);
    const [b, n] = [...c.peers.keys()];
    c.setRing([c.a, b], 1);
    const refs = Array.from({ length: 60 }, (_, index) => ({ volumeId: 8, generation: 1, index }));
    await seed(c, refs, [b]);
    const good = new Map<number, { hashLo: number; hashHi: number }>();
    for (const ref of refs) good.set(ref.index, (await c.local.getBlock(ref))!);
    // N holds an older write of every block under the same refs (a spill its version replaced).
    for (const ref of refs)
      await c.peers
        .get(n)!
        .backend.putBlocks([await makeBlock(ref, blockBytes(ref.index + 5000, BS))]);
    c.setRing([c.a, b, n], 2); // N joins
    const onN = refs.filter((ref) =>
      c.placement
        .writeTargets(ref.volumeId, ref.index)
        .remote.some((at) => c.placement.peers[at].uuid === n),
    );
    assert.ok(onN.length > 5, 'the join gives N a share (ring sanity)');
    const r = c.rebalancer({ gcView: async () => gcViewOf([{ id: 8, generation: 1, refs }]) });
    await runOnce(r);
    for (const ref of onN) {
      const held = await c.peers.get(n)!.backend.getBlock(ref);
      const want = good.get(ref.index)!;
      assert.ok(
        held && held.hashLo === want.hashLo && held.hashHi === want.hashHi,
        `N holds the committed bytes of ${ref.index}`,
      );
    }
    assert.equal(r.stats.copied, onN.length, 'each stale copy replaced');
    assert.equal(r.stats.failed, 0);
    await c.close();
  });

  test('a node leaves the ring: A keeps what it is still a target of and re-copies to the next node', async () => {
    const c = await cluster('leave', 2);
    const [b, d] = [...c.peers.keys()];
    c.setRing([c.a, b, d], 1);
    const refs = Array.from({ length: 80 }, (_, index) => ({ volumeId: 3, generation: 2, index }));
    // Every block on A (as if A wrote them all and kept its copies), and on its ring-1 targets.
    await seed(c, refs);
    for (const ref of refs) {
      for (const at of c.placement.writeTargets(ref.volumeId, ref.index).remote) {
        const uuid = c.placement.peers[at].uuid;
        await c.peers.get(uuid)!.backend.putBlocks([(await c.local.getBlock(ref))!]);
      }
    }
    const lackingB = refs.filter(
      (ref) =>
        !c.placement
          .writeTargets(ref.volumeId, ref.index)
          .remote.some((at) => c.placement.peers[at].uuid === b),
    );
    c.setRing([c.a, b], 2); // D removed: every block's targets are A and B
    const r = c.rebalancer({ gcView: async () => gcViewOf([{ id: 3, generation: 2, refs }]) });
    await runOnce(r);
    for (const ref of refs) {
      assert.ok(holds(c, ref), 'A is a target of everything now');
      assert.ok(await peerHolds(c, b, ref), 'so is B');
    }
    assert.ok(lackingB.length > 0);
    assert.equal(
      r.stats.copied,
      lackingB.length,
      'B gets a copy of each block D held in its place',
    );
    assert.equal(r.stats.dropped, 0);
    assert.equal(r.stats.failed, 0);
    await c.close();
  });

  test('garbage is freed: deleted volumes and superseded blocks; blocks in flight and of volumes created meanwhile stay', async () => {
    const c = await cluster('gc', 1);
    const [b] = [...c.peers.keys()];
    c.setRing([c.a, b], 1);
    const v7 = (generation: number, index: number) => ({ volumeId: 7, generation, index });
    const current = [v7(2, 0), v7(1, 1), v7(2, MAP_PAGE_BIT)];
    const superseded = [v7(1, 0), v7(1, MAP_PAGE_BIT), v7(2, 5)];
    const inFlight = [v7(3, 0), v7(3, 2)];
    const deleted = [
      { volumeId: 8, generation: 4, index: 0 },
      { volumeId: 8, generation: 4, index: 1 },
    ];
    await seed(c, [...current, ...superseded, ...inFlight, ...deleted], [b]);
    const createdMeanwhile = { volumeId: 2, generation: 1, index: 0 };
    const r = c.rebalancer({
      async gcView(): Promise<GcView> {
        // Volume 2 is created (and written) after the listing started: its id is unlisted.
        await seed(c, [createdMeanwhile], [b]);
        return gcViewOf([{ id: 7, generation: 2, refs: current }]);
      },
    });
    await runOnce(r);
    for (const ref of [...current, ...inFlight, createdMeanwhile])
      assert.ok(holds(c, ref), `kept ${JSON.stringify(ref)}`);
    for (const ref of [...superseded, ...deleted])
      assert.ok(!holds(c, ref), `freed ${JSON.stringify(ref)}`);
    assert.equal(r.stats.garbageFreed, superseded.length + deleted.length);
    assert.ok(
      await peerHolds(c, b, superseded[0]),
      'no deletes go to peers: each node frees its own',
    );
    await c.close();
  });

  test('a block in flight is not copied: its writer may spill the same ref again; once committed it is', async () => {
    const c = await cluster('inflight', 1);
    const [b] = [...c.peers.keys()];
    c.setRing([c.a, b], 2);
    const v3 = (generation: number, index: number) => ({ volumeId: 3, generation, index });
    const committed = [v3(1, 0), v3(1, 1)];
    const inFlight = [v3(2, 2), v3(2, 3)];
    await seed(c, [...committed, ...inFlight]); // on this node only
    let view = gcViewOf([{ id: 3, generation: 1, refs: committed }]);
    const r = c.rebalancer({ gcView: async () => view });
    await runOnce(r);
    for (const ref of committed) assert.ok(await peerHolds(c, b, ref), `copied ${ref.index}`);
    for (const ref of inFlight) assert.ok(!(await peerHolds(c, b, ref)), `not copied ${ref.index}`);
    assert.equal(r.stats.pendingBlocks, 0, "blocks in flight are their writer's, not left to move");
    view = gcViewOf([{ id: 3, generation: 2, refs: [...committed, ...inFlight] }]);
    await runOnce(r);
    for (const ref of inFlight)
      assert.ok(await peerHolds(c, b, ref), `copied once committed ${ref.index}`);
    await c.close();
  });

  test('no GC view (a volume could not be loaded): copies are still made, nothing is freed or dropped', async () => {
    const c = await cluster('noview', 2);
    const [b, n] = [...c.peers.keys()];
    c.setRing([c.a, b], 1);
    const refs = Array.from({ length: 60 }, (_, index) => ({ volumeId: 5, generation: 1, index }));
    await seed(c, [...refs, { volumeId: 99, generation: 1, index: 0 }], [b]);
    c.setRing([c.a, b, n], 2);
    const r = c.rebalancer({ gcView: async () => undefined });
    await runOnce(r);
    assert.equal(c.store.usedSlots, refs.length + 1, 'every local block kept');
    assert.ok(r.stats.copied > 0);
    assert.equal(r.stats.dropped + r.stats.garbageFreed, 0);
    assert.equal(r.stats.runsWithoutGc, 1);
    assert.ok(
      r.stats.pendingBlocks > 0 && r.rebalancing,
      'surplus copies kept count as still to move',
    );
    await c.close();
  });

  test('a failing peer: failures are counted and no copy it should hold is dropped', async () => {
    const c = await cluster('failing', 2);
    const [b, n] = [...c.peers.keys()];
    c.setRing([c.a, b], 1);
    const refs = Array.from({ length: 100 }, (_, index) => ({ volumeId: 4, generation: 1, index }));
    await seed(c, refs, [b]);
    const view = gcViewOf([{ id: 4, generation: 1, refs }]);
    c.setRing([c.a, b, n], 2);
    const onN = refs.filter((ref) =>
      c.placement
        .writeTargets(ref.volumeId, ref.index)
        .remote.some((at) => c.placement.peers[at].uuid === n),
    );
    const r = c.rebalancer({ gcView: async () => view });

    // N refuses every PUT.
    c.peers.get(n)!.flaky.failing = new Set(['put']);
    await runOnce(r);
    assert.equal(r.stats.failed, onN.length, 'one failure per copy N should have taken');
    assert.equal(r.stats.dropped, 0);
    assert.equal(c.store.usedSlots, refs.length, 'A dropped nothing');
    assert.equal(r.stats.pendingBlocks, onN.length);
    assert.ok(r.rebalancing);

    // N stores but cannot sync: its copies do not count, still nothing dropped.
    c.peers.get(n)!.flaky.failing = new Set(['sync']);
    await runOnce(r);
    assert.equal(r.stats.dropped, 0);
    assert.equal(c.store.usedSlots, refs.length);

    // B stops answering HAS: nothing whose targets include B is dropped either.
    c.peers.get(n)!.flaky.failing = new Set();
    c.peers.get(b)!.flaky.failing = new Set(['has']);
    const before = r.stats.failed;
    await runOnce(r);
    assert.ok(r.stats.failed > before);
    const droppable = refs.filter((ref) => {
      const t = c.placement.writeTargets(ref.volumeId, ref.index);
      return !t.local && !t.remote.some((at) => c.placement.peers[at].uuid === b);
    });
    assert.equal(
      r.stats.dropped,
      droppable.length,
      'only blocks whose targets all answered (none: B is a target of every block A is not)',
    );

    // Healed: the next run finishes the move.
    c.peers.get(b)!.flaky.failing = new Set();
    await runOnce(r);
    for (const ref of refs)
      assert.equal(holds(c, ref), c.placement.writeTargets(ref.volumeId, ref.index).local);
    assert.equal(r.stats.pendingBlocks, 0);
    await c.close();
  });

  test('the rate limit bounds copies per second, and close() ends a throttled run promptly', async () => {
    const c = await cluster('rate', 1);
    const [n] = [...c.peers.keys()];
    c.setRing([c.a], 1);
    const refs = Array.from({ length: 400 }, (_, index) => ({ volumeId: 6, generation: 1, index }));
    await seed(c, refs);
    c.setRing([c.a, n], 2); // every block needs a copy on N
    const rate = 32 * BS; // 32 blocks a second; the burst is one copy batch (16 blocks)
    const r = c.rebalancer({
      gcView: async () => gcViewOf([{ id: 6, generation: 1, refs }]),
      rateBytesPerSecond: rate,
    });
    const started = performance.now();
    r.start();
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const seconds = (performance.now() - started) / 1000;
    const copied = c.peers.get(n)!.flaky.puts;
    // Upper bound only (a slow machine copies less, never more): burst + rate × time + one batch in flight.
    assert.ok(
      copied <= 16 + 32 * seconds + 16,
      `${copied} copies in ${seconds.toFixed(2)} s at 32 blocks/s`,
    );
    assert.ok(copied > 0, 'it makes progress');
    assert.ok(r.stats.running && r.rebalancing);
    assert.ok(r.rate() >= 0);
    const closing = performance.now();
    await r.close();
    assert.ok(performance.now() - closing < 5000, 'close() does not wait out the throttle');
    assert.ok(
      c.peers.get(n)!.flaky.puts < refs.length,
      'the run stopped before copying everything',
    );
    await c.close();
  });
});
