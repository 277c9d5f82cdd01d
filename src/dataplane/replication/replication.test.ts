/**
 * Replication through the real data path: a Volume on node A with its local
 * store, shared cache and worker pool, on a ring with peers B and C served by
 * real PeerServers (TBP over loopback, verifying memory backends). Blocks must
 * land on the nodes the ring names; a node outside the ring (D) must read the
 * committed version back from the peers alone; a dead peer costs copies, not
 * data.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { logger } from '../../common/log.js';
import { buildRing, type RingDescription } from '../../model/ring/index.js';
import { hasher } from '../blocks/hash.js';
import { LocalSlotStore } from '../blocks/slot-store.js';
import { BlockCache } from '../cache/block-cache.js';
import { MemoryPeerBackend } from '../../../test/support/memory-peer-backend.js';
import { PeerServer } from '../peer/server.js';
import { DataPool } from '../pool/data-pool.js';
import type { MapRoot } from '../../model/map-root.js';
import { Volume, type VolumeIdentity, type VolumeServices } from '../volume/volume.js';
import { ClusterBlocks } from './cluster-blocks.js';
import { ClusterPlacement } from './placement.js';

const BS = 64 * 1024;
const CLUSTER = 'test-cluster';
const quiet = logger('replication-test');
const identity: VolumeIdentity = {
  id: 7,
  name: 'replicated',
  size: 512 * BS,
  blockSize: BS,
  encrypted: false,
};

interface Peer {
  uuid: string;
  backend: MemoryPeerBackend;
  server: PeerServer;
  address: string;
}

async function startPeer(): Promise<Peer> {
  const uuid = randomUUID();
  const backend = new MemoryPeerBackend({ uuid });
  const server = new PeerServer(backend, { clusterId: CLUSTER, nodeId: uuid, log: quiet });
  const { port } = await server.listen('127.0.0.1', 0);
  return { uuid, backend, server, address: `127.0.0.1:${port}` };
}

interface Node {
  uuid: string;
  store: LocalSlotStore;
  cache: BlockCache;
  pool: DataPool;
  cluster: ClusterBlocks;
  services: VolumeServices;
  committed: { generation: number; root: MapRoot | undefined };
}

async function startNode(
  dir: string,
  uuid: string,
  ring: RingDescription,
  members: { uuid: string; address: string }[],
): Promise<Node> {
  await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 64 * 1024 * 1024 });
  const store = await LocalSlotStore.open(dir);
  const cache = new BlockCache(BS, 8 * 1024 * 1024);
  const pool = new DataPool(
    {
      cache: cache.buffer,
      blockSize: BS,
      records: store.records,
      dataPath: store.dataPath,
      slotsPath: store.slotsPath,
    },
    2,
  );
  const placement = new ClusterPlacement(uuid, { clusterId: CLUSTER, nodeId: uuid });
  placement.update(ring, members);
  const cluster = new ClusterBlocks(placement, await hasher(), quiet);
  const committed = { generation: 0, root: undefined as MapRoot | undefined };
  const services: VolumeServices = {
    store,
    cache,
    pool,
    placement: cluster,
    log: quiet,
    async commit(_identity, generation, root) {
      committed.generation = generation;
      committed.root = root;
    },
  };
  return { uuid, store, cache, pool, cluster, services, committed };
}

async function stopNode(node: Node): Promise<void> {
  await node.cluster.close();
  await node.pool.close();
  await node.store.close();
}

describe('replication through the volume data path', { timeout: 60_000 }, () => {
  let root: string;
  let b: Peer;
  let c: Peer;
  const aUuid = randomUUID();
  let ring: RingDescription;

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'torus-replication-'));
    b = await startPeer();
    c = await startPeer();
    ring = {
      version: 1,
      type: 'ketama',
      replication: 2,
      members: [aUuid, b.uuid, c.uuid].map((uuid) => ({ uuid, weight: 1 << 30 })),
    };
  });
  after(async () => {
    await b.server.close();
    await c.server.close();
    await rm(root, { recursive: true, force: true });
  });

  test("blocks land on the ring's nodes, and a node outside the ring reads the committed version from peers alone", async () => {
    // A's own peer address is never used by A; D sees A as live but unreachable.
    const members = [
      { uuid: aUuid, address: '127.0.0.1:1' },
      { uuid: b.uuid, address: b.address },
      { uuid: c.uuid, address: c.address },
    ];
    const a = await startNode(join(root, 'a'), aUuid, ring, members);
    const volume = await Volume.open(identity, 0, undefined, null, a.services);
    const data = randomBytes(40 * BS);
    await volume.write(0, data, false);
    await volume.flush();
    assert.equal(a.committed.generation, 1);

    // Every data block: stored where the ring says, and only there.
    const built = buildRing(ring);
    for (let index = 0; index < 40; index++) {
      const where = built.placement({ volumeId: identity.id, generation: 1, index }, 2);
      const ref = { volumeId: identity.id, generation: 1, index };
      assert.equal(
        a.store.lookup(identity.id, 1, index) !== undefined,
        where.includes(aUuid),
        `block ${index} on A`,
      );
      assert.equal(
        (await b.backend.hasBlocks([ref]))[0],
        where.includes(b.uuid),
        `block ${index} on B`,
      );
      assert.equal(
        (await c.backend.hasBlocks([ref]))[0],
        where.includes(c.uuid),
        `block ${index} on C`,
      );
    }
    assert.equal(a.cluster.stats.underReplicatedBlocks, 0);
    await volume.close();

    // D: not a ring member, an empty store, A unreachable.
    const dUuid = randomUUID();
    const d = await startNode(join(root, 'd'), dUuid, ring, members);
    const reader = await Volume.open(
      identity,
      a.committed.generation,
      a.committed.root,
      null,
      d.services,
    );
    const back = Buffer.alloc(data.length);
    // Blocks whose copies are on A and one peer come from that peer; no block needs A.
    await reader.read(0, back);
    assert.ok(back.equals(data), 'D reads every block back intact from B and C');
    assert.ok(d.cluster.stats.remoteReads > 0, 'map pages came from peers');
    await reader.close();
    await stopNode(d);
    await stopNode(a);
  });

  test('a peer that is down costs copies, not the write: the commit succeeds and counts them', async () => {
    const down = await startPeer();
    await down.server.close(); // registered as live, but nothing answers
    const members = [
      { uuid: aUuid, address: '127.0.0.1:1' },
      { uuid: b.uuid, address: b.address },
      { uuid: down.uuid, address: down.address },
    ];
    const ring2: RingDescription = {
      ...ring,
      version: 2,
      members: [aUuid, b.uuid, down.uuid].map((uuid) => ({ uuid, weight: 1 << 30 })),
    };
    const a = await startNode(join(root, 'a2'), aUuid, ring2, members);
    const volume = await Volume.open(identity, 0, undefined, null, a.services);
    const data = randomBytes(24 * BS);
    await volume.write(0, data, false);
    await volume.flush();
    assert.equal(a.committed.generation, 1);
    assert.ok(
      a.cluster.stats.underReplicatedBlocks > 0,
      'copies meant for the dead peer are counted as missing',
    );
    assert.ok(a.cluster.stats.failedPeerWrites > 0);
    const back = Buffer.alloc(data.length);
    await volume.read(0, back);
    assert.ok(back.equals(data));
    await volume.close();
    await stopNode(a);
  });

  test('an encrypted volume is sealed once by the writer: peers hold only ciphertext, and a reader with the key opens it', async () => {
    const members = [
      { uuid: aUuid, address: '127.0.0.1:1' },
      { uuid: b.uuid, address: b.address },
      { uuid: c.uuid, address: c.address },
    ];
    const sealedIdentity: VolumeIdentity = { ...identity, id: 8, name: 'sealed', encrypted: true };
    const key = randomBytes(32);
    const a = await startNode(join(root, 'a3'), aUuid, ring, members);
    const volume = await Volume.open(sealedIdentity, 0, undefined, key, a.services);
    const data = Buffer.alloc(8 * BS, 'plaintext that must never reach a peer ');
    await volume.write(0, data, false);
    await volume.flush();
    await volume.close();

    const built = buildRing(ring);
    let onPeers = 0;
    for (let index = 0; index < 8; index++) {
      const ref = { volumeId: sealedIdentity.id, generation: 1, index };
      for (const peer of [b, c]) {
        if (!built.placement(ref, 2).includes(peer.uuid)) continue;
        const block = await peer.backend.getBlock(ref);
        assert.ok(block, `block ${index} on its peer`);
        assert.equal(block.flags & 1, 1, 'stored as sealed');
        assert.equal(Buffer.from(block.data).indexOf('plaintext'), -1, 'no plaintext on the peer');
        onPeers++;
      }
    }
    assert.ok(onPeers > 0);

    const d = await startNode(join(root, 'd3'), randomUUID(), ring, members);
    const reader = await Volume.open(
      sealedIdentity,
      a.committed.generation,
      a.committed.root,
      key,
      d.services,
    );
    const back = Buffer.alloc(data.length);
    await reader.read(0, back);
    assert.ok(back.equals(data), "the reader opens the peers' ciphertext with the volume key");
    await reader.close();
    await stopNode(d);
    await stopNode(a);
  });
});
