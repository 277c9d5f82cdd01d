/**
 * One writer per volume, and a partitioned writer is fenced. Real etcd,
 * three real torusd processes, replication 2, real libnbd sessions
 * (nbd-session.ts) held open across events.
 *
 * Node P runs in its own network namespace, joined to the host by a veth
 * pair (10.200.N.1 on the host, 10.200.N.2 in the namespace): etcd and the
 * other two nodes (B, C) listen on the host address too, so P reaches them
 * only through the veth, and cutting it (ip link set down) cuts P from etcd
 * and its peers. P's NBD client connects through P's unix socket, which a
 * partition of the network does not touch, so the client can keep talking
 * to its partitioned writer. The test creates and deletes the namespace and
 * the veth; it needs root and `ip netns`, and skips saying so otherwise.
 *
 *   1. A client on P writes and flushes: P holds the write lock. A second
 *      writer through B gets a read-only export whose description names P,
 *      and its write, sent anyway, is refused by the server (EPERM).
 *   2. The veth is cut. P's lock lapses with its lease; a client on B then
 *      gets the lock (a higher epoch), writes and flushes.
 *   3. Meanwhile and after the veth is back, the old client on P writes and
 *      flushes: every FLUSH must fail (never acknowledged), and none of its
 *      writes may show through B, C, or a new session on P — not a block.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { Cluster } from './cluster-fixture.js';
import { etcdMissing } from './etcd-server.js';
import { NbdSession } from './nbd-session.js';
import { missing } from './tools.js';

const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;
const VOLUME_BYTES = 32 * MiB;
/** P's lock has a 10 s lease: another node may take it this long after the cut at the latest (with margin). */
const LAPSE_BOUND_MS = 40_000;

/** Why the partition test cannot run here, or undefined. */
function netnsMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (ip netns, veth)';
  const ip = spawnSync('ip', ['netns', 'list'], { stdio: 'ignore', timeout: 10_000 });
  if (ip.error || ip.status !== 0) return 'needs `ip netns` (iproute2) and network namespaces';
  return undefined;
}

function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')} failed: ${r.stderr}`);
}

/** Blocks of `got` (at `offset` in the volume) that differ from `want`, named by volume block index. */
function differingBlocks(got: Buffer, want: Buffer, offset: number): number[] {
  const bad: number[] = [];
  for (let at = 0; at < want.length; at += BLOCK) {
    if (!got.subarray(at, at + BLOCK).equals(want.subarray(at, at + BLOCK)))
      bad.push((offset + at) / BLOCK);
  }
  return bad;
}

describe(
  'one writer per volume; a partitioned writer is fenced',
  { skip: etcdMissing() ?? missing('nbdsh') ?? netnsMissing(), timeout: 170_000 },
  () => {
    // Short names (interface names are at most 15 bytes), unique to this run.
    const tag = `${process.pid % 100000}`;
    const ns = `torus-fence-${tag}`;
    const hostLink = `tfh${tag}`;
    const nsLink = `tfn${tag}`;
    const subnet = `10.200.${(process.pid % 250) + 1}`;
    const hostAddress = `${subnet}.1`;
    const nsAddress = `${subnet}.2`;
    let cluster: Cluster;
    const sessions: NbdSession[] = [];
    let netnsMade = false;

    before(async () => {
      ip('netns', 'add', ns);
      netnsMade = true;
      ip('link', 'add', hostLink, 'type', 'veth', 'peer', 'name', nsLink);
      ip('link', 'set', nsLink, 'netns', ns);
      ip('addr', 'add', `${hostAddress}/24`, 'dev', hostLink);
      ip('link', 'set', hostLink, 'up');
      ip('netns', 'exec', ns, 'ip', 'addr', 'add', `${nsAddress}/24`, 'dev', nsLink);
      ip('netns', 'exec', ns, 'ip', 'link', 'set', nsLink, 'up');
      ip('netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up');

      cluster = await Cluster.start({
        nodes: 3,
        replication: 2,
        size: '256MiB',
        cacheSize: '32MiB',
        etcd: { extraHosts: [hostAddress] },
        // Node 0 is P, in the namespace; B and C are reached by P (and each other) at the host address.
        node: (i) =>
          i === 0
            ? {
                label: 'fence-p',
                prefix: ['ip', 'netns', 'exec', ns],
                peerHost: nsAddress,
                etcdHost: hostAddress,
              }
            : { label: `fence-${'pbc'[i]}`, peerHost: hostAddress },
      });
      const created = await cluster.ctl(
        'volume',
        'create-block',
        'vol',
        `${VOLUME_BYTES / MiB}MiB`,
      );
      assert.equal(created.code, 0, created.stderr);
    });

    after(async () => {
      if (process.env.FENCE_DEBUG)
        for (const n of cluster?.nodes ?? [])
          await (
            await import('node:fs/promises')
          ).writeFile(`/tmp/fence-${n.index}.log`, n.output());
      await Promise.all(sessions.map((s) => s.kill()));
      await cluster?.stop();
      spawnSync('ip', ['link', 'del', hostLink], { stdio: 'ignore', timeout: 10_000 });
      if (netnsMade) spawnSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 10_000 });
    });

    async function session(uri: string): Promise<NbdSession> {
      const s = await NbdSession.open(uri);
      sessions.push(s);
      return s;
    }

    /**
     * Read the whole volume through each reader (an open session, or a URI for
     * a new one, closed after) and compare block by block with `image`.
     * Returns each new session's read-only flag.
     */
    async function checkReaders(
      when: string,
      readers: [string, NbdSession | string][],
    ): Promise<Map<string, boolean>> {
      const readOnly = new Map<string, boolean>();
      for (const [name, reader] of readers) {
        let s: NbdSession;
        try {
          s = typeof reader === 'string' ? await session(reader) : reader;
        } catch (err) {
          assert.fail(
            `${when}: ${name} refused the session: ${(err as Error).message}\n${cluster.diagnostics()}`,
          );
        }
        let got: Buffer;
        try {
          got = await s.read(0, VOLUME_BYTES);
        } catch (err) {
          assert.fail(`${when}: ${name}: ${(err as Error).message}\n${cluster.diagnostics()}`);
        }
        const bad = differingBlocks(got, image, 0);
        assert.deepEqual(
          bad,
          [],
          `${when}: ${name}: ${bad.length} blocks differ from the acknowledged writes (0-63: P's first, 128-191: never acknowledged, 256-319: B's, 384-399: never acknowledged)`,
        );
        if (typeof reader === 'string') {
          readOnly.set(name, s.readOnly);
          await s.close();
        }
      }
      return readOnly;
    }

    /** What the volume must read as, kept in step with every acknowledged FLUSH. */
    const image = Buffer.alloc(VOLUME_BYTES);
    let oldWriter: NbdSession;
    /** B's writer, once it took over. */
    let next: NbdSession | undefined;

    test('the second writer of a volume gets a read-only export naming the holder, and its writes are refused', async () => {
      const [p, b] = cluster.nodes;
      oldWriter = await session(p.unixUri('vol'));
      assert.equal(
        oldWriter.readOnly,
        false,
        `the first client of the volume, on P, writes it: ${oldWriter.description}`,
      );
      const first = randomBytes(4 * MiB);
      let r = await oldWriter.write(0, first);
      assert.ok(r.ok, `write through P: ${r.err}`);
      r = await oldWriter.flush();
      assert.ok(r.ok, `flush through P: ${r.err}\n${cluster.diagnostics()}`);
      first.copy(image, 0);

      const second = await session(b.uri('vol'));
      assert.equal(second.readOnly, true, 'a second node does not write a volume another holds');
      assert.match(
        second.description,
        new RegExp(`read-only: written by node ${p.uuid} \\(host [^)]*\\) \\(lock epoch \\d+\\)`),
      );
      const refused = await second.write(8 * MiB, randomBytes(64 * 1024));
      assert.equal(refused.ok, false, 'a write sent to a read-only export must fail');
      assert.equal(refused.errno, 'EPERM', `refused with ${refused.err}`);
      assert.ok(
        (await second.read(0, 4 * MiB)).equals(first),
        'the read-only export serves what P committed',
      );
      await second.close();

      const listed = await cluster.ctl('volume', 'list', '-o', 'json');
      assert.equal(listed.code, 0, listed.stderr);
      const row = (JSON.parse(listed.stdout) as { name: string; lockedBy?: string }[]).find(
        (v) => v.name === 'vol',
      );
      assert.match(
        row?.lockedBy ?? '',
        new RegExp(p.uuid),
        `volume list names P as the writer: ${listed.stdout}`,
      );
    });

    test('a partitioned writer loses the lock to another node; its FLUSHes fail, during the cut and after the heal', async (t) => {
      const [p, b, c] = cluster.nodes;
      const cutAt = Date.now();
      ip('link', 'set', hostLink, 'down');
      let healed = false;
      try {
        // The old writer goes on: a write over part of what it committed, a write elsewhere.
        const overwrite = randomBytes(2 * MiB);
        const elsewhere = randomBytes(4 * MiB);
        const w1 = await oldWriter.write(0, overwrite, 20);
        const w2 = await oldWriter.write(8 * MiB, elsewhere, 20);
        const cutFlush = await oldWriter.flush(20);
        assert.equal(
          cutFlush.ok,
          false,
          `a FLUSH on the partitioned writer was acknowledged (writes: ${JSON.stringify([w1, w2])})\n${cluster.diagnostics()}`,
        );

        // P's lock lapses with its lease; B's client then gets it.
        const deadline = cutAt + LAPSE_BOUND_MS;
        const refusals = new Map<string, number>();
        for (;;) {
          let why: string;
          try {
            const s = await session(b.uri('vol'));
            if (!s.readOnly) {
              next = s;
              break;
            }
            why = `read-only: ${s.description}`;
            await s.close();
          } catch (err) {
            why = (err as Error).message;
          }
          refusals.set(why, (refusals.get(why) ?? 0) + 1);
          if (Date.now() > deadline) {
            assert.fail(
              `B did not give a writable export within ${LAPSE_BOUND_MS} ms of P being cut off; it answered:\n${[...refusals].map(([w, n]) => `${n}× ${w}`).join('\n')}\n${cluster.diagnostics(30)}`,
            );
          }
          await new Promise((resolve) => setTimeout(resolve, 500));
        }
        const tookOverMs = Date.now() - cutAt;
        const listed = await cluster.ctl('volume', 'list', '-o', 'json');
        const row = (JSON.parse(listed.stdout) as { name: string; lockedBy?: string }[]).find(
          (v) => v.name === 'vol',
        );
        assert.match(
          row?.lockedBy ?? '',
          new RegExp(b.uuid),
          `volume list names B as the writer now: ${listed.stdout}`,
        );

        // The new writer starts from P's last committed version and commits its own.
        assert.ok(
          (await next.read(0, 4 * MiB)).equals(image.subarray(0, 4 * MiB)),
          'B starts from what P committed before the cut',
        );
        const third = randomBytes(4 * MiB);
        let r = await next.write(16 * MiB, third);
        assert.ok(r.ok, `write through B: ${r.err}`);
        r = await next.flush();
        assert.ok(r.ok, `flush through B: ${r.err}\n${cluster.diagnostics()}`);
        third.copy(image, 16 * MiB);

        // Before the heal: what B committed reads back through B and through C.
        await checkReaders('before the heal', [
          ['B (the new writer)', next],
          ['C', c.uri('vol')],
        ]);

        // Heal: P reaches etcd again, but its lock is gone. Its FLUSH must still fail,
        // and so must a new write + FLUSH on the same old session.
        ip('link', 'set', hostLink, 'up');
        healed = true;
        await cluster.waitForStatus(p.uuid, 'OK', 30_000);
        const healedFlush = await oldWriter.flush(30);
        assert.equal(
          healedFlush.ok,
          false,
          `the old writer's FLUSH after the heal was acknowledged\n${cluster.diagnostics()}`,
        );
        const again = await oldWriter.write(24 * MiB, randomBytes(MiB), 30);
        const againFlush = await oldWriter.flush(30);
        assert.equal(
          againFlush.ok,
          false,
          `the old writer's write + FLUSH after the heal was acknowledged (write: ${JSON.stringify(again)})\n${cluster.diagnostics()}`,
        );
        await oldWriter.close();
        // checkReaders asserted every committed byte, so a row is only printed with 0 lost.
        t.diagnostic(
          `fault-row | writer node partitioned (network namespace), 3 nodes R=2 | 1 | bytes lost 0 | another node writable ${(tookOverMs / 1000).toFixed(1)} s after the cut; the fenced writer's FLUSHes refused`,
        );
        process.stdout.write(
          `# B took the write lock ${(tookOverMs / 1000).toFixed(1)} s after P was cut off; P's FLUSHes: during the cut ${cutFlush.err ?? ''}${cutFlush.timeout ? ' (timed out)' : ''}; after the heal ${healedFlush.err ?? ''}\n`,
        );
      } finally {
        if (!healed)
          spawnSync('ip', ['link', 'set', hostLink, 'up'], { stdio: 'ignore', timeout: 10_000 });
      }
    });

    // Found by this test: the fenced commit's blocks used to carry the same refs as the new
    // writer's committed version and replaced them on peers; writers now reserve a generation with the lock.
    test("nothing of the fenced writer's attempt shows through any node, and what the new writer committed stays readable", async () => {
      const [p, , c] = cluster.nodes;
      assert.ok(next, 'B took over in the test before');
      // Through B's session, through C (read-only, B holds the lock) and through a new session on P.
      const fresh = await checkReaders("after the heal and the old writer's FLUSHes", [
        ['B (the new writer)', next],
        ['C', c.uri('vol')],
        ['P, a new session', p.unixUri('vol')],
      ]);
      assert.equal(
        fresh.get('P, a new session'),
        true,
        'P serves the volume read-only while B holds the lock',
      );
      await next.close();
    });
  },
);
