/**
 * `torusctl -C volume resize` on a cluster: real etcd, two real torusd
 * nodes, real NBD clients (libnbd). A writer attached to one node keeps
 * writing and FLUSHing while the volume grows under it (its commits land on
 * the resized record), a new connection sees the new size, and what the
 * writer's FLUSHes acknowledged reads back. Shrinking is refused while a
 * node holds the volume, naming it, and done once nobody does.
 */
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { Cluster, until } from './cluster-fixture.js';
import { etcdMissing } from './etcd-server.js';
import { runFlushTrackingWriter } from './flush-tracking-writer.js';
import { NbdSession } from './nbd-session.js';
import { missing } from './tools.js';

const MiB = 1024 * 1024;
const REGION_BYTES = 4 * MiB;

describe(
  'volume resize on a cluster',
  { skip: etcdMissing() ?? missing('nbdsh'), timeout: 240_000 },
  () => {
    let cluster: Cluster;
    const sessions: NbdSession[] = [];

    before(async () => {
      cluster = await Cluster.start({
        nodes: 2,
        replication: 2,
        size: '512MiB',
        args: ['--lock-linger', '0'],
      });
      const created = await cluster.ctl('volume', 'create-block', 'vol', '64MiB');
      assert.equal(created.code, 0, created.stderr);
    });
    after(async () => {
      await Promise.all(sessions.map((s) => s.kill()));
      await cluster?.stop();
    });

    test('grow while a writer FLUSHes: every FLUSH succeeds, a new connection sees the new size', async () => {
      const [a, b] = cluster.nodes;
      const seed = randomInt(2 ** 31);
      const writing = runFlushTrackingWriter({
        uri: a.uri('vol'),
        readUris: [a.uri('vol')],
        regionBytes: REGION_BYTES,
        seconds: 8,
        finalFlushSeconds: 20,
        opTimeoutSeconds: 20,
        pauseSeconds: 0.1,
        seed,
      });
      await new Promise((resolve) => setTimeout(resolve, 2500));
      // 64 MiB → 512 MiB of 64 KiB blocks crosses a map level; the cluster holds 2 × 512 MiB at replication 2.
      const grown = await cluster.ctl('volume', 'resize', 'vol', '512MiB');
      assert.equal(grown.code, 0, grown.stderr);
      assert.match(grown.stdout, /grew volume vol from 64 MiB to 512 MiB/);
      assert.match(grown.stdout, /keep the old size until they reconnect/);

      const joined = await NbdSession.open(a.uri('vol'));
      sessions.push(joined);
      assert.equal(joined.size, 512 * MiB, 'a new connection to the writer node');
      const elsewhere = await NbdSession.open(b.uri('vol'));
      sessions.push(elsewhere);
      assert.equal(elsewhere.size, 512 * MiB, 'a new connection to another node');
      await elsewhere.close();

      const { result, events, summary } = await writing;
      const context = `seed ${seed}\n${result.stderr.slice(-3000)}\n${cluster.diagnostics()}`;
      assert.ok(summary, `the writer printed no summary (exit ${result.code})\n${context}`);
      const flushes = events.filter((e) => e.ev === 'flush');
      assert.ok(flushes.length > 3, context);
      assert.deepEqual(
        flushes.filter((e) => !e.ok),
        [],
        `FLUSHes failed after the grow\n${context}`,
      );
      for (const v of summary.verified) assert.deepEqual(v.bad, [], context);
      assert.equal(result.code, 0, context);

      // Past the old end: written through the new connection, read back.
      const data = Buffer.alloc(MiB, 0x5a);
      assert.ok((await joined.write(300 * MiB, data)).ok);
      assert.ok((await joined.flush()).ok);
      assert.deepEqual(await joined.read(300 * MiB, MiB), data);

      // Shrink while that connection holds it: refused, naming the writer node.
      const refused = await cluster.ctl('volume', 'resize', 'vol', '32MiB', '--shrink');
      assert.equal(refused.code, 1, refused.stdout + refused.stderr);
      assert.match(refused.stderr, new RegExp(`written by node ${a.uuid}`));
      await joined.close();
    });

    test('bad input is refused: past the capacity, smaller without --shrink', async () => {
      const big = await cluster.ctl('volume', 'resize', 'vol', '2GiB');
      assert.equal(big.code, 1, big.stdout + big.stderr);
      assert.match(big.stderr, /divided by its replication 2/);
      const small = await cluster.ctl('volume', 'resize', 'vol', '32MiB');
      assert.equal(small.code, 2, small.stdout + small.stderr);
      assert.match(small.stderr, /add --shrink/);
    });

    test('shrink once nobody holds the volume: smaller, zeros past the old end after a grow', async () => {
      // --lock-linger 0: the writer node lets go right after its last client.
      const shrunk = await until('the volume to be free to shrink', async () => {
        const r = await cluster.ctl('volume', 'resize', 'vol', '32MiB', '--shrink');
        if (r.code === 1 && /in use/.test(r.stderr)) return undefined;
        return r;
      });
      assert.equal(shrunk.code, 0, shrunk.stderr);
      assert.match(shrunk.stdout, /shrank volume vol from 512 MiB to 32 MiB/);
      const regrown = await cluster.ctl('volume', 'resize', 'vol', '512MiB');
      assert.equal(regrown.code, 0, regrown.stderr);
      const s = await NbdSession.open(cluster.nodes[1].uri('vol'));
      sessions.push(s);
      assert.equal(s.size, 512 * MiB);
      assert.deepEqual(await s.read(300 * MiB, MiB), Buffer.alloc(MiB));
      await s.close();
    });
  },
);
