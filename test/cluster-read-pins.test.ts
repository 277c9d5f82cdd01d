/**
 * A node serving a volume read-only keeps the version its client opened,
 * while another node writes and commits new versions and every node's GC
 * runs: the reader reads that version intact, and once its client is gone
 * the blocks only it needed are freed. Real etcd, three real torusd nodes
 * (replication 2, a GC run every second), real NBD clients (libnbd).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { MAX_LOGGED_BYTES_PER_FLUSH } from '../src/dataplane/intent-log/volume-intents.js';
import { Cluster, sha256 } from './cluster-fixture.js';
import { etcdMissing } from './etcd-server.js';
import { NbdSession } from './nbd-session.js';
import { missing } from './tools.js';
import { runCli } from './torusd-process.js';

const MiB = 1024 * 1024;
/**
 * More than a FLUSH logs (MAX_LOGGED_BYTES_PER_FLUSH): each FLUSH of DATA
 * commits a version, which is what this test needs to pile up.
 */
const DATA = 12 * MiB;

interface NodeGc {
  used: number;
  garbageFreed: number;
}

describe(
  'a read-only reader keeps its version through GC',
  { skip: etcdMissing() ?? missing('nbdsh'), timeout: 180_000 },
  () => {
    let cluster: Cluster;
    const sessions: NbdSession[] = [];

    before(async () => {
      cluster = await Cluster.start({
        nodes: 3,
        replication: 2,
        size: '128MiB',
        args: ['--rebalance-interval', '1', '--lock-linger', '0'],
      });
      const created = await cluster.ctl('volume', 'create-block', 'pinned', '32MiB');
      assert.equal(created.code, 0, created.stderr);
    });
    after(async () => {
      await Promise.all(sessions.map((s) => s.kill()));
      await cluster?.stop();
    });

    async function gcState(): Promise<NodeGc[]> {
      return Promise.all(
        cluster.nodes.map(async (n) => {
          const r = await runCli('torusctl', ['status', '--data-dir', n.dataDir]);
          assert.equal(r.code, 0, r.stderr);
          const status = JSON.parse(r.stdout) as {
            used: number;
            replication: { rebalance: { garbageFreed: number } };
          };
          return { used: status.used, garbageFreed: status.replication.rebalance.garbageFreed };
        }),
      );
    }
    const total = (states: NodeGc[], field: keyof NodeGc) =>
      states.reduce((sum, s) => sum + s[field], 0);

    test('the reader reads its version after three newer commits and GC runs; its blocks go once it lets go', async () => {
      assert.ok(DATA > MAX_LOGGED_BYTES_PER_FLUSH, 'each FLUSH commits (see DATA)');
      const [writerNode, readerNode] = cluster.nodes;
      const writer = await NbdSession.open(writerNode.uri('pinned'));
      sessions.push(writer);
      assert.equal(writer.readOnly, false);
      const first = randomBytes(DATA);
      assert.deepEqual(await writer.write(0, first), { ok: true });
      assert.deepEqual(await writer.flush(), { ok: true });

      // Opened while the writer holds the lock: read-only, at the version just committed.
      const reader = await NbdSession.open(readerNode.uri('pinned'));
      sessions.push(reader);
      assert.equal(reader.readOnly, true);
      assert.match(readerNode.output(), /serving a pinned version read-only/);

      const gcBefore = total(await gcState(), 'garbageFreed');
      let latest = first;
      for (let round = 0; round < 3; round++) {
        latest = randomBytes(DATA);
        assert.deepEqual(await writer.write(0, latest), { ok: true });
        assert.deepEqual(await writer.flush(), { ok: true });
      }
      await cluster.waitForRebalance(Date.now());
      await cluster.waitForRebalance(Date.now());
      const pinnedState = await gcState();
      assert.ok(
        total(pinnedState, 'garbageFreed') > gcBefore,
        `GC freed the versions between the pinned one and the latest (${gcBefore} → ${total(pinnedState, 'garbageFreed')} blocks)\n${cluster.diagnostics()}`,
      );

      // Operators see the reader, and cannot delete the volume from under it.
      const listed = await cluster.ctl('volume', 'list', '-o', 'json');
      assert.equal(listed.code, 0, listed.stderr);
      const row = (
        JSON.parse(listed.stdout) as {
          name: string;
          generation: number;
          readers: { node: string; generation: number }[];
        }[]
      ).find((v) => v.name === 'pinned')!;
      assert.deepEqual(
        row.readers.map((r) => r.node),
        [readerNode.uuid],
        `volume list names the reading node: ${listed.stdout}`,
      );
      assert.ok(
        row.readers[0].generation < row.generation,
        'at an older version than the committed one',
      );
      const table = await cluster.ctl('volume', 'list');
      assert.match(table.stdout, /READERS/);
      assert.match(table.stdout, new RegExp(`1 \\(version ${row.readers[0].generation}\\)`));
      const refused = await cluster.ctl('volume', 'delete', 'pinned');
      assert.notEqual(refused.code, 0);
      assert.match(
        refused.stderr,
        new RegExp(
          `volume "pinned" is being read on node ${readerNode.uuid} \\(version ${row.readers[0].generation}, since .*\\); disconnect those clients first`,
        ),
      );

      const back = await reader.read(0, DATA);
      assert.equal(
        sha256(back),
        sha256(first),
        'the reader still reads the version it opened, every block intact',
      );
      const fresh = await NbdSession.open(cluster.nodes[2].uri('pinned'));
      sessions.push(fresh);
      assert.equal(
        sha256(await fresh.read(0, DATA)),
        sha256(latest),
        'a client opening now gets the latest version',
      );
      await fresh.close();

      // The reader lets go (--lock-linger 0: its pin goes with its last client):
      // the next GC runs free the blocks only the pinned version referenced.
      await reader.close();
      await cluster.waitForRebalance(Date.now() + 500);
      await cluster.waitForRebalance(Date.now());
      const freedState = await gcState();
      const usedPinned = total(pinnedState, 'used');
      const usedAfter = total(freedState, 'used');
      assert.ok(
        usedAfter <= usedPinned - DATA / 2,
        `the pinned version's blocks are freed: ${usedPinned / MiB} MiB stored while pinned, ${usedAfter / MiB} MiB after\n${cluster.diagnostics()}`,
      );
      assert.ok(
        usedAfter < 2 * DATA + 2 * MiB,
        `about two copies of the latest version stay: ${usedAfter / MiB} MiB`,
      );
      await writer.close();
    });
  },
);
