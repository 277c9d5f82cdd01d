/**
 * Bit rot on one node's disk, found by the background scrub before any
 * client reads it: three real torusd nodes (replication 2, a scrub pass
 * every 2 s), a volume written and flushed through node 0, then bytes of
 * every block node 1 stores overwritten in its data file behind its back.
 * The scrub finds each bad copy and rewrites it from the replica; reading
 * the volume through node 1 then returns what was written.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Cluster, sha256, until } from './cluster-fixture.js';
import { etcdMissing } from './etcd-server.js';
import { NbdSession } from './nbd-session.js';
import { missing } from './tools.js';
import { runCli } from './torusd-process.js';

const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;
const RECORD = 64;
const SLOT_USED = 0x544f5253;

interface ScrubStats {
  passes: number;
  bad: number;
  repaired: number;
  unrepaired: number;
}

describe(
  'the scrub repairs rotten copies from replicas',
  { skip: etcdMissing() ?? missing('nbdsh'), timeout: 120_000 },
  () => {
    let cluster: Cluster;
    const sessions: NbdSession[] = [];

    before(async () => {
      cluster = await Cluster.start({
        nodes: 3,
        replication: 2,
        size: '64MiB',
        args: ['--scrub-interval', '2', '--lock-linger', '0'],
      });
      const created = await cluster.ctl('volume', 'create-block', 'rot', '16MiB');
      assert.equal(created.code, 0, created.stderr);
    });
    after(async () => {
      await Promise.all(sessions.map((s) => s.kill()));
      await cluster?.stop();
    });

    async function scrubOf(index: number): Promise<ScrubStats> {
      const r = await runCli('torusctl', ['status', '--data-dir', cluster.nodes[index].dataDir]);
      assert.equal(r.code, 0, r.stderr);
      return (JSON.parse(r.stdout) as { scrub: ScrubStats }).scrub;
    }

    test('every damaged copy on node 1 is found and rewritten; node 1 then reads the data intact', async (t) => {
      const data = randomBytes(8 * MiB);
      const writer = await NbdSession.open(cluster.nodes[0].uri('rot'));
      sessions.push(writer);
      assert.deepEqual(await writer.write(0, data), { ok: true });
      assert.deepEqual(await writer.flush(), { ok: true });
      // The FLUSH went to the replicated intent log; the writer's last client
      // leaving commits a version, which puts the block copies on the replicas.
      await writer.close();

      // Node 0 lets go of the lock (--lock-linger 0) once that commit landed.
      await until(
        'node 0 to commit and let go of the volume after its client left',
        async () => {
          const listed = await cluster.ctl('volume', 'list', '-o', 'json');
          const rows = JSON.parse(listed.stdout) as { name: string; lockedBy?: string }[];
          return rows.find((r) => r.name === 'rot')?.lockedBy === undefined ? true : undefined;
        },
        20_000,
        () => cluster.diagnostics(),
      );

      // Every block node 1 stores (its slot records say which), damaged on disk.
      const store = join(cluster.nodes[1].dataDir, 'blocks');
      const slots = await readFile(join(store, 'slots'));
      const used: number[] = [];
      for (let slot = 0; slot * RECORD < slots.length; slot++)
        if (slots.readUInt32LE(slot * RECORD) === SLOT_USED) used.push(slot);
      assert.ok(used.length >= 32, `node 1 holds a share of the copies (${used.length} blocks)`);
      const before = await scrubOf(1);
      const file = await open(join(store, 'data'), 'r+');
      try {
        for (const slot of used)
          await file.write(Buffer.from('bit rot was here'), 0, 16, slot * BLOCK + 512);
      } finally {
        await file.close();
      }

      const after = await until(
        'a scrub pass of node 1 after the damage to find and repair it',
        async () => {
          const now = await scrubOf(1);
          return now.passes >= before.passes + 2 ? now : undefined;
        },
        30_000,
        () => cluster.diagnostics(),
      );
      assert.equal(
        after.bad - before.bad,
        used.length,
        `each damaged copy found once: ${JSON.stringify(after)}`,
      );
      assert.equal(after.repaired - before.repaired, used.length, 'and rewritten from its replica');
      assert.equal(after.unrepaired, 0);
      t.diagnostic(
        `${used.length} copies damaged on node 1; scrub found ${after.bad - before.bad}, repaired ${after.repaired - before.repaired}`,
      );
      assert.match(
        cluster.nodes[1].output(),
        /scrub: stored copy failed its checksum; rewritten from a good copy/,
      );
      for (const other of [0, 2])
        assert.equal((await scrubOf(other)).bad, 0, `node ${other}'s copies are fine`);

      const reader = await NbdSession.open(cluster.nodes[1].uri('rot'));
      sessions.push(reader);
      assert.equal(
        sha256(await reader.read(0, data.length)),
        sha256(data),
        'node 1 reads the volume intact',
      );
      await reader.close();
    });
  },
);
