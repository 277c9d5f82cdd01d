/**
 * Patches in a cluster (in-process, 3 nodes, R = 2): 4 KiB writes into
 * committed blocks are stored as patches on every copy (PUT_PATCHES), not
 * as whole blocks — over the writer's own copy of the base, or over the
 * targets' (each making the entry from its own) — also when written again after a
 * spill; the data reads back through the other
 * nodes (whole blocks with their tree hash, or sub-blocks with GET_RANGE),
 * after a patch over a patch, after GC has let the old versions go (bases
 * held for their patches), and with the writer gone; and random 4 KiB
 * writes, 32 at a time, racing the spills that store their blocks, read
 * back the same through every node.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { RECORD_PATCH } from '../src/dataplane/blocks/record.js';
import { createCluster, settles, type InProcessCluster } from './support/inproc-cluster.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;
const BLOCKS = 24;

/** The offset of the first 4 KiB page where `a` and `b` differ, or -1. */
function firstDifference(a: Buffer, b: Buffer): number {
  for (let at = 0; at < a.length; at += 4 * KiB)
    if (!a.subarray(at, at + 4 * KiB).equals(b.subarray(at, at + 4 * KiB))) return at;
  return -1;
}

describe('in-process cluster: patches between nodes', { timeout: 60_000 }, () => {
  let cluster: InProcessCluster;
  before(async () => {
    cluster = await createCluster(3, { replication: 2, capacityBytes: 256 * MiB });
  });
  after(() => cluster?.close());

  /** Per node index: how many blocks of the volume of `generation` it holds as patches, and in all. */
  async function copiesOf(volumeId: number, generation: number) {
    const counts = new Map<number, { patches: number; all: number }>();
    for (const n of cluster.nodes) {
      const c = { patches: 0, all: 0 };
      for await (const b of n.peers.backend.listBlocks({ volumeId })) {
        if (b.ref.generation !== generation || b.ref.index >= BLOCKS) continue;
        c.all++;
        if (b.flags & RECORD_PATCH) c.patches++;
      }
      counts.set(n.index, c);
    }
    return counts;
  }

  test('a block spilled as a patch and written again is replaced by a patch on every copy', async () => {
    const [writer, second, third] = cluster.nodes;
    // 320 blocks: a 4 KiB write into each fills the 16 MiB caches past the point where they spill.
    const blocks = 320;
    const volume = await writer.node.createVolume('respilled', blocks * BLOCK);
    const expected = randomBytes(blocks * BLOCK);
    await cluster.withExport(third, 'respilled', async (exp) => {
      await exp.write(0, expected, false);
      await exp.flush();
    });
    await cluster.withExport(writer, 'respilled', async (exp) => {
      for (const sub of [3, 11])
        for (let index = 0; index < blocks; index++) {
          const offset = index * BLOCK + sub * 4 * KiB;
          const bytes = randomBytes(4 * KiB);
          bytes.copy(expected, offset);
          await exp.write(offset, bytes, false);
        }
      await exp.flush();
    });
    // Every copy of the newest version that the writer could patch is a patch of the two sub-blocks written.
    const held = new Map<number, { patches: number; all: number }>();
    let newest = 0;
    for (const n of cluster.nodes)
      for await (const b of n.peers.backend.listBlocks({ volumeId: volume.id }))
        if (b.ref.index < blocks) newest = Math.max(newest, b.ref.generation);
    for (const n of cluster.nodes) {
      const c = { patches: 0, all: 0 };
      for await (const b of n.peers.backend.listBlocks({ volumeId: volume.id })) {
        if (b.ref.index >= blocks || b.ref.generation !== newest) continue;
        c.all++;
        if (b.flags & RECORD_PATCH) c.patches++;
      }
      held.set(n.index, c);
    }
    // Blocks spilled as patches and written again: replaced by patches on every copy, whether the
    // writer holds one (a new patch over its base) or not (over the targets' spilled patch).
    const copies = [...held.values()];
    const all = copies.reduce((sum, c) => sum + c.all, 0);
    const patched = copies.reduce((sum, c) => sum + c.patches, 0);
    assert.equal(all, 2 * blocks, `every block has its 2 copies: ${JSON.stringify([...held])}`);
    assert.ok(patched >= all * 0.9, `copies that are patches: ${JSON.stringify([...held])}`);
    const back = Buffer.alloc(expected.length);
    await cluster.withExport(second, 'respilled', (exp) => exp.read(0, back));
    assert.ok(back.equals(expected), 'the data read back through another node differs');
  });

  test('random 4 KiB writes, 32 at a time, racing spills: every write reads back through every node', async () => {
    const [writer, second, third] = cluster.nodes;
    // 384 blocks (24 MiB) over 16 MiB caches: spill rounds run while writes land in the blocks they store.
    const blocks = 384;
    const pages = (blocks * BLOCK) / (4 * KiB);
    await writer.node.createVolume('racing', blocks * BLOCK);
    const expected = randomBytes(blocks * BLOCK);
    await cluster.withExport(third, 'racing', async (exp) => {
      await exp.write(0, expected, false);
      await exp.flush();
    });
    await cluster.withExport(writer, 'racing', async (exp) => {
      const inFlight = new Set<number>();
      let issued = 0;
      const writes = async () => {
        while (issued < 6000) {
          const page = Math.floor(Math.random() * pages);
          if (inFlight.has(page)) continue; // two writes racing on one page have no single expected value
          inFlight.add(page);
          issued++;
          const bytes = randomBytes(4 * KiB);
          bytes.copy(expected, page * 4 * KiB);
          await exp.write(page * 4 * KiB, bytes, false);
          if (issued % 1000 === 0) await exp.flush();
          inFlight.delete(page);
        }
      };
      await Promise.all(Array.from({ length: 32 }, writes));
      await exp.flush();
    });
    for (const n of [second, third, writer]) {
      const back = Buffer.alloc(expected.length);
      await cluster.withExport(n, 'racing', (exp) => exp.read(0, back));
      const bad = firstDifference(back, expected);
      assert.equal(bad, -1, `node ${n.index} reads other bytes at ${bad}`);
    }
  });

  test('a block spilled whole, then written in part before the FLUSH: completed and stored whole, no patch sent for targets to refuse', async () => {
    const [writer, second] = cluster.nodes;
    // 320 blocks over a 16 MiB cache: most are spilled whole (this version's) before the 4 KiB writes.
    const blocks = 320;
    await writer.node.createVolume('whole-first', blocks * BLOCK);
    const expected = randomBytes(blocks * BLOCK);
    const refusedBefore = writer.node.status().replication!.workers.patchCopiesRefused;
    await cluster.withExport(writer, 'whole-first', async (exp) => {
      await exp.write(0, expected, false);
      for (let index = 0; index < blocks; index++) {
        const bytes = randomBytes(4 * KiB);
        bytes.copy(expected, index * BLOCK + 5 * 4 * KiB);
        await exp.write(index * BLOCK + 5 * 4 * KiB, bytes, false);
      }
      await exp.flush();
    });
    assert.equal(
      writer.node.status().replication!.workers.patchCopiesRefused - refusedBefore,
      0,
      'patch copies refused',
    );
    const back = Buffer.alloc(expected.length);
    await cluster.withExport(second, 'whole-first', (exp) => exp.read(0, back));
    assert.equal(firstDifference(back, expected), -1);
  });

  test('4 KiB writes travel as patches and read back everywhere', async () => {
    const [writer, second, third] = cluster.nodes;
    const volume = await writer.node.createVolume('patched', 4 * MiB);
    const expected = randomBytes(BLOCKS * BLOCK);
    // Written through another node: the writer's cache holds none of it, so its 4 KiB writes are partial blocks.
    await cluster.withExport(third, 'patched', async (exp) => {
      await exp.write(0, expected, false);
      await exp.flush();
    });

    /** The newest generation any node holds a data block of. */
    const newest = async () => {
      let generation = 0;
      for (const n of cluster.nodes)
        for await (const b of n.peers.backend.listBlocks({ volumeId: volume.id }))
          if (b.ref.index < BLOCKS) generation = Math.max(generation, b.ref.generation);
      return generation;
    };
    /** One 4 KiB write into every block, at sub-block `at(index)`; committed. Its generation. */
    const round = async (through: typeof writer, at: (index: number) => number) => {
      const before = await newest();
      await cluster.withExport(through, 'patched', async (exp) => {
        for (let index = 0; index < BLOCKS; index++) {
          const offset = index * BLOCK + at(index) * 4 * KiB;
          const bytes = randomBytes(4 * KiB);
          bytes.copy(expected, offset);
          await exp.write(offset, bytes, false);
        }
        await exp.flush();
      });
      const generation = await newest();
      assert.ok(generation > before, 'the round committed a new version');
      return generation;
    };
    const readThrough = async (n: typeof writer, what: string) => {
      const back = Buffer.alloc(expected.length);
      await cluster.withExport(n, 'patched', (exp) => exp.read(0, back));
      assert.ok(
        back.equals(expected),
        `${what}: the data read back through node ${n.index} differs`,
      );
    };

    const g2 = await round(writer, (index) => index % 16);
    const copies = await copiesOf(volume.id, g2);
    // Every copy, the writer's (over its own copy of the base) and the others' (over theirs, its
    // entry made by each of them from the sums the writer sent), is a patch.
    const patches = [...copies.values()].reduce((sum, c) => sum + c.patches, 0);
    assert.equal(patches, 2 * BLOCKS, `copies: ${JSON.stringify([...copies])}`);
    const total = [...copies.values()].reduce((sum, c) => sum + c.all, 0);
    assert.equal(total, 2 * BLOCKS, 'every block of the version has its 2 copies');
    await readThrough(second, 'after one round');

    // A patch over a patch (the same base, the older patch's sub-block kept), written through the writer again.
    const g3 = await round(writer, (index) => (index + 5) % 16);
    await readThrough(third, 'after a patch over a patch');

    // GC lets the old versions go; their blocks stay held as the patches' bases.
    await settles(async () => {
      for (const n of cluster.nodes)
        for await (const b of n.peers.backend.listBlocks({ volumeId: volume.id }))
          if (b.ref.index < BLOCKS && b.ref.generation < g3)
            return `node ${n.index} still lists generation ${b.ref.generation}`;
      return undefined;
    });
    await readThrough(second, 'after GC');

    // The writer gone: every block still has a copy, a patch over a held base or whole.
    await cluster.stopNode(writer);
    await readThrough(third, 'without the writer');
  });
});
