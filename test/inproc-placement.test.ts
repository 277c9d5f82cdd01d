/**
 * Placement in an in-process cluster (test/support/inproc-cluster.ts): the
 * blocks a node writes land on exactly the R nodes the ring names, and read
 * back whole through a node that holds none or only some of them.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { createCluster, settles, type InProcessCluster } from './support/inproc-cluster.js';

const MiB = 1024 * 1024;

describe('in-process cluster: placement', { timeout: 30_000 }, () => {
  let cluster: InProcessCluster;
  before(async () => {
    cluster = await createCluster(3, { replication: 2 });
  });
  after(() => cluster?.close());

  test('every block written through one node is on exactly the 2 ring nodes placement names', async () => {
    const [writer, reader] = cluster.nodes;
    const volume = await writer.node.createVolume('placed', 8 * MiB);
    const data = randomBytes(2 * MiB);
    await cluster.withExport(writer, 'placed', async (exp) => {
      assert.equal(exp.readOnly, false);
      await exp.write(MiB, data, false);
      await exp.flush();
    });

    // FLUSH answered: every block has its 2 copies somewhere. A copy may have gone to a spare (a target slow to
    // answer on a loaded machine); rebalance then moves it, so where they belong is checked as it settles.
    const uuidOf = new Map(cluster.nodes.map((n) => [n.index, n.uuid]));
    const misplaced = async (): Promise<string | undefined> => {
      const holders = new Map<string, number[]>();
      for (const [index, keys] of await cluster.holdings()) {
        for (const key of keys)
          if (key.startsWith(`${volume.id}/`))
            holders.set(key, [...(holders.get(key) ?? []), index]);
      }
      // 2 MiB of 64 KiB blocks, plus the map's pages.
      if (holders.size < 32) return `only ${holders.size} blocks of the volume are stored anywhere`;
      for (const [key, at] of holders)
        if (at.length < 2) return `block ${key} has ${at.length} copy after FLUSH`;
      for (const [key, at] of holders) {
        const expected = (
          await cluster.placementOf(volume.id, Number(key.split('/')[2]), 2)
        ).sort();
        const actual = at.map((i) => uuidOf.get(i)!).sort();
        if (actual.join() !== expected.join())
          return `block ${key} is on ${actual.join(' ')}, the ring says ${expected.join(' ')}`;
      }
      return undefined;
    };
    const first = await misplaced();
    assert.ok(first === undefined || !/after FLUSH|stored anywhere/.test(first), first);
    await settles(misplaced);

    const back = Buffer.alloc(data.length);
    await cluster.withExport(reader, 'placed', (exp) => exp.read(MiB, back));
    assert.ok(back.equals(data), 'the data read back through another node differs');
  });

  test('a block spilled twice in one version, the second time not on the writer: the writer keeps no copy of the first', async () => {
    const [writer, filler] = cluster.nodes;
    // 320 blocks over the writer's 16 MiB cache: each pass spills most of them before the FLUSH commits.
    const blocks = 320;
    const BLOCK = 64 * 1024;
    const volume = await writer.node.createVolume('respill', blocks * BLOCK);
    await cluster.withExport(filler, 'respill', async (exp) => {
      await exp.write(0, randomBytes(blocks * BLOCK), false);
      await exp.flush();
    });
    // The writer's store nearly full: the first pass's spills of some blocks are kept on it, the
    // second pass's go to other nodes only (a full node's copies go to the next node on the ring).
    const { store } = writer.node;
    const taken: number[] = [];
    while (store.freeSlots > 40) taken.push(store.allocate());
    const expected = Buffer.alloc(blocks * BLOCK);
    try {
      await cluster.withExport(writer, 'respill', async (exp) => {
        for (let pass = 0; pass < 2; pass++) {
          randomBytes(blocks * BLOCK).copy(expected);
          for (let index = 0; index < blocks; index++)
            await exp.write(
              index * BLOCK,
              expected.subarray(index * BLOCK, (index + 1) * BLOCK),
              false,
            );
        }
        await exp.flush();
      });
    } finally {
      for (const slot of taken) store.unallocate(slot);
    }
    // Every copy a node holds of the newest version is what was written last: at once on the
    // writer (it let its first copy go), after a GC run on the others (a copy with a hash the
    // committed version does not reference is superseded).
    let newest = 0;
    for (const n of cluster.nodes)
      for await (const b of n.peers.backend.listBlocks({ volumeId: volume.id }))
        if (b.ref.index < blocks) newest = Math.max(newest, b.ref.generation);
    const staleOn = async (nodes: typeof cluster.nodes) => {
      const stale: string[] = [];
      for (const n of nodes)
        for await (const b of n.peers.backend.listBlocks({ volumeId: volume.id })) {
          if (b.ref.index >= blocks || b.ref.generation !== newest) continue;
          const held = await n.peers.backend.getBlock(b.ref);
          const want = expected.subarray(b.ref.index * BLOCK, (b.ref.index + 1) * BLOCK);
          if (held && !Buffer.from(held.data).equals(want))
            stale.push(`node ${n.index} block ${b.ref.index}`);
        }
      return stale;
    };
    assert.deepEqual(await staleOn([writer]), [], 'the writer kept its first copies');
    await settles(async () => {
      const stale = await staleOn(cluster.nodes);
      return stale.length > 0
        ? `${stale.length} stale copies: ${stale.slice(0, 4).join(', ')}`
        : undefined;
    });
  });
});
