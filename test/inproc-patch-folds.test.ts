/**
 * Patches folded in a cluster (in-process, 3 nodes, R = 2): once a
 * writer's volume is quiet, the patches its 4 KiB writes left in its own
 * store are rewritten as whole blocks — a new version, its blocks whole on
 * every copy — and the data reads back the same through every node. Blocks
 * the writer holds no copy of stay patches on their targets (the fold
 * looks in the writer's store only).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { RECORD_PATCH } from '../src/dataplane/blocks/record.js';
import { createCluster, type InProcessCluster } from './support/inproc-cluster.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;
const SUB = 4 * KiB;

describe('in-process cluster: patches folded once quiet', { timeout: 60_000 }, () => {
  let cluster: InProcessCluster;
  before(async () => {
    cluster = await createCluster(3, {
      replication: 2,
      capacityBytes: 256 * MiB,
      foldQuietMs: 300,
    });
  });
  after(() => cluster?.close());

  test("a quiet writer's patches become whole blocks on every copy, and read back through every node", async () => {
    const [writer, second, third] = cluster.nodes;
    const blocks = 48;
    const volume = await writer.node.createVolume('folded', blocks * BLOCK);
    const expected = randomBytes(blocks * BLOCK);
    // Written through another node: the writer's cache holds none of it, so its 4 KiB writes are partial blocks.
    await cluster.withExport(third, 'folded', async (exp) => {
      await exp.write(0, expected, false);
      await exp.flush();
    });
    /** The copies of the volume's newest version on every node: how many, and how many are patches. */
    const newestCopies = async () => {
      const copies: { generation: number; index: number; patch: boolean }[] = [];
      for (const n of cluster.nodes)
        for await (const b of n.peers.backend.listBlocks({ volumeId: volume.id }))
          if (b.ref.index < blocks)
            copies.push({
              generation: b.ref.generation,
              index: b.ref.index,
              patch: (b.flags & RECORD_PATCH) !== 0,
            });
      const newest = new Map<number, number>();
      for (const c of copies) newest.set(c.index, Math.max(newest.get(c.index) ?? 0, c.generation));
      return copies.filter((c) => c.generation === newest.get(c.index));
    };
    const writerPatches = () => writer.node.store.patchSlots;
    await cluster.withExport(writer, 'folded', async (exp) => {
      for (let index = 0; index < blocks; index++) {
        const offset = index * BLOCK + (index % 16) * SUB;
        const bytes = randomBytes(SUB);
        bytes.copy(expected, offset);
        await exp.write(offset, bytes, false);
      }
      await exp.flush();
      const patched = (await newestCopies()).filter((c) => c.patch).length;
      assert.ok(patched >= blocks, `the 4 KiB writes left patches (${patched} copies)`);
      assert.ok(writerPatches() > 0, "some in the writer's own store");
      // No request for 300 ms: the writer folds what it holds.
      const deadline = Date.now() + 20_000;
      while (writerPatches() > 0 && Date.now() < deadline) await sleep(100);
      assert.equal(writerPatches(), 0, "the writer's patches are folded");
    });
    const copies = await newestCopies();
    const folded = new Set(copies.filter((c) => !c.patch).map((c) => c.index));
    assert.ok(
      folded.size >= blocks / 2,
      `about 2/3 of the blocks are whole again (${folded.size})`,
    );
    for (const c of copies)
      if (folded.has(c.index)) assert.equal(c.patch, false, `block ${c.index}: every copy whole`);
    for (const n of [second, third, writer]) {
      const back = Buffer.alloc(expected.length);
      await cluster.withExport(n, 'folded', (exp) => exp.read(0, back));
      assert.ok(back.equals(expected), `node ${n.index} reads the same bytes`);
    }
  });
});
