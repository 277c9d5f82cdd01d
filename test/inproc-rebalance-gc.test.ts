/**
 * Rebalance and GC in an in-process cluster (test/support/inproc-cluster.ts):
 * a node that joins the ring receives its share while surplus copies go;
 * overwrites leave one version's worth of copies, not one per overwrite; a
 * deleted volume's blocks are freed on every node.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { createCluster, settles, type InProcessCluster } from './support/inproc-cluster.js';

const MiB = 1024 * 1024;
/** Each node's block count for volume `id`, and the node indexes holding each of its blocks. */
async function copiesOf(cluster: InProcessCluster, id: number) {
  const perNode = new Map<number, number>();
  const holders = new Map<string, number[]>();
  for (const [index, keys] of await cluster.holdings()) {
    let count = 0;
    for (const key of keys) {
      if (!key.startsWith(`${id}/`)) continue;
      count++;
      holders.set(key, [...(holders.get(key) ?? []), index]);
    }
    perNode.set(index, count);
  }
  const total = [...perNode.values()].reduce((sum, n) => sum + n, 0);
  return {
    perNode,
    holders,
    total,
    shown: [...perNode].map(([i, n]) => `node ${i}: ${n}`).join(', '),
  };
}

async function writeAndFlush(
  cluster: InProcessCluster,
  volume: string,
  data: Buffer,
): Promise<void> {
  await cluster.withExport(cluster.nodes[0], volume, async (exp) => {
    await exp.write(0, data, false);
    await exp.flush();
  });
}

describe('in-process cluster: rebalance after a node joins', { timeout: 60_000 }, () => {
  let cluster: InProcessCluster;
  before(async () => {
    cluster = await createCluster(2, { replication: 2 });
  });
  after(() => cluster?.close());

  test('the new node receives its share and every block ends on exactly the 2 nodes the ring names', async () => {
    const { id } = await cluster.nodes[0].node.createVolume('moving', 8 * MiB);
    const data = randomBytes(4 * MiB);
    await writeAndFlush(cluster, 'moving', data);
    const before = await copiesOf(cluster, id);
    assert.equal(
      before.perNode.get(0),
      before.perNode.get(1),
      `two nodes, replication 2: both hold everything (${before.shown})`,
    );

    await cluster.addNode();
    await cluster.converged();
    const uuidOf = new Map(cluster.nodes.map((n) => [n.index, n.uuid]));
    await settles(async () => {
      const now = await copiesOf(cluster, id);
      if (!(now.perNode.get(2)! > 0)) return `the new node holds nothing (${now.shown})`;
      for (const [key, at] of now.holders) {
        const expected = (await cluster.placementOf(id, Number(key.split('/')[2]), 2)).sort();
        const actual = at.map((i) => uuidOf.get(i)!).sort();
        if (actual.join() !== expected.join()) {
          return `block ${key} is on ${actual.join(' ')}, the ring says ${expected.join(' ')} (${now.shown})`;
        }
      }
      return undefined;
    });
    const after = await copiesOf(cluster, id);
    assert.equal(after.total, before.total, `still 2 copies of every block (${after.shown})`);

    const back = Buffer.alloc(data.length);
    await cluster.withExport(cluster.nodes[2], 'moving', (exp) => exp.read(0, back));
    assert.ok(back.equals(data), 'the data read back through the new node differs');
  });
});

describe('in-process cluster: GC', { timeout: 60_000 }, () => {
  let cluster: InProcessCluster;
  before(async () => {
    cluster = await createCluster(3, { replication: 2 });
  });
  after(() => cluster?.close());

  test('overwriting a volume three times leaves one version of copies; deleting it frees them on every node', async () => {
    const { id } = await cluster.nodes[0].node.createVolume('churn', 8 * MiB);
    await writeAndFlush(cluster, 'churn', randomBytes(2 * MiB));
    const once = await copiesOf(cluster, id);
    assert.ok(once.total > 0);

    for (let round = 0; round < 3; round++)
      await writeAndFlush(cluster, 'churn', randomBytes(2 * MiB));
    const piled = await copiesOf(cluster, id);
    assert.ok(
      piled.total > once.total * 1.5,
      `overwrites store new copies first (${piled.shown}; ${once.total} after one write)`,
    );
    // The superseded generations go: what is left is the newest version, 2 copies a block, no more than after one
    // write (its map may differ by a page).
    await settles(async () => {
      const now = await copiesOf(cluster, id);
      if (now.total > once.total)
        return `${now.total} copies stored, ${once.total} after one write (${now.shown})`;
      const odd = [...now.holders].find(([, at]) => at.length !== 2);
      return odd ? `block ${odd[0]} has ${odd[1].length} copies (${now.shown})` : undefined;
    });

    await cluster.nodes[0].node.deleteVolume('churn');
    await settles(async () => {
      const now = await copiesOf(cluster, id);
      return now.total === 0
        ? undefined
        : `the deleted volume still has ${now.total} copies (${now.shown})`;
    });
  });
});
