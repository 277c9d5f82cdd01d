/**
 * Placement in an in-process cluster (test/support/inproc-cluster.ts): the
 * blocks a node writes land on exactly the R nodes the ring names, and read
 * back whole through a node that holds none or only some of them.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { createCluster, type InProcessCluster } from './support/inproc-cluster.js';

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

    const holders = new Map<string, number[]>();
    for (const [index, keys] of await cluster.holdings()) {
      for (const key of keys) holders.set(key, [...(holders.get(key) ?? []), index]);
    }
    const ofVolume = [...holders.keys()].filter((key) => key.startsWith(`${volume.id}/`));
    // 2 MiB of 64 KiB blocks, plus the map's pages.
    assert.ok(ofVolume.length >= 32, `only ${ofVolume.length} blocks of the volume are stored anywhere`);
    const uuidOf = new Map(cluster.nodes.map((n) => [n.index, n.uuid]));
    for (const key of ofVolume) {
      const index = Number(key.split('/')[2]);
      const expected = (await cluster.placementOf(volume.id, index, 2)).sort();
      const actual = holders.get(key)!.map((i) => uuidOf.get(i)!).sort();
      assert.deepEqual(actual, expected, `block ${key}`);
    }

    const back = Buffer.alloc(data.length);
    await cluster.withExport(reader, 'placed', (exp) => exp.read(MiB, back));
    assert.ok(back.equals(data), 'the data read back through another node differs');
  });
});
