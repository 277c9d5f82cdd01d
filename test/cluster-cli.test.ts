/**
 * The getting-started guide's cluster steps, as a user runs them: a real etcd,
 * real ./bin/torusd nodes and ./bin/torusctl — init, nodes registering, peer
 * add, ring changes (each exactly version + 1), a node killed (DOWN after its
 * lease TTL) and one stopped (gone at once), removal, restarts keeping or
 * losing their uuid with their data directory, --auto-join, and volumes in
 * the cluster's catalog.
 */
import assert from 'node:assert/strict';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { freePorts } from './cluster-fixture.js';
import { etcdMissing, startEtcd, type EtcdServer } from './etcd-server.js';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

/** NodeRegistration's default lease TTL: how long a killed node may still look alive. */
const LEASE_TTL_MS = 5000;

interface PeerRow {
  uuid: string;
  member: 'OK' | 'Avail' | 'DOWN';
  address?: string;
  capacity?: number;
  lastSeen?: number;
}

describe(
  'cluster through etcd, as the guide runs it',
  { skip: etcdMissing(), timeout: 180_000 },
  () => {
    let etcd: EtcdServer;
    let hostPort: string;
    /** Peer ports for nodes a–d (free ones: the guide's 40000+ may be taken on a shared machine). */
    let port: { a: number; b: number; c: number; d: number };
    const dirs: string[] = [];
    const nodes: TorusdProcess[] = [];

    before(async () => {
      etcd = await startEtcd();
      hostPort = etcd.endpoint.replace(/^http:\/\//, '');
      const [pa, pb, pc, pd] = await freePorts(4);
      port = { a: pa, b: pb, c: pc, d: pd };
    });

    after(async () => {
      await Promise.all(nodes.map((n) => n.stop('SIGKILL')));
      await etcd?.stop();
      await Promise.all(dirs.map(removeDir));
    });

    const ctl = (...args: string[]) => runCli('torusctl', ['-C', hostPort, ...args]);

    async function peers(): Promise<Map<string, PeerRow>> {
      const r = await ctl('list-peers', '-o', 'json');
      assert.equal(r.code, 0, r.stderr);
      return new Map((JSON.parse(r.stdout).peers as PeerRow[]).map((p) => [p.uuid, p]));
    }

    async function ringVersion(): Promise<number> {
      const r = await ctl('ring', 'get', '-o', 'json');
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout).version as number;
    }

    async function newDir(label: string): Promise<string> {
      const dir = await makeDataDir(label);
      dirs.push(dir);
      return dir;
    }

    async function startNode(
      dataDir: string,
      peerPort: number,
      extra: string[] = [],
    ): Promise<TorusdProcess> {
      const node = await startTorusd({
        dataDir,
        size: '256MiB',
        args: [
          '--cache-size',
          '32MiB',
          '--workers',
          '1',
          '--etcd',
          hostPort,
          '--peer-address',
          `http://127.0.0.1:${peerPort}`,
          ...extra,
        ],
      });
      nodes.push(node);
      return node;
    }

    /** Wait for a line torusd prints right after "listening" (a pipe may deliver it a moment later). */
    async function printed(node: TorusdProcess, pattern: RegExp): Promise<void> {
      const deadline = Date.now() + 5000;
      while (!pattern.test(node.output())) {
        if (Date.now() > deadline)
          assert.fail(`torusd did not print ${pattern}:\n${node.output()}`);
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
    }

    const uuidOf = async (dataDir: string) =>
      (await readFile(join(dataDir, 'node-id'), 'utf8')).trim();

    let a: TorusdProcess;
    let b: TorusdProcess;
    let c: TorusdProcess;
    let ids: { a: string; b: string; c: string };

    test('torusd refuses an uninitialised cluster; init takes both endpoint spellings', async () => {
      const early = await runCli('torusd', [
        '--etcd',
        hostPort,
        '--data-dir',
        await newDir('early'),
        '--size',
        '256MiB',
        '--nbd',
        '127.0.0.1:0',
      ]);
      assert.equal(early.code, 1, early.stderr);
      assert.match(early.stderr, /not initialised: run torusctl -C .* init first/);

      const first = await runCli('torusctl', ['-C', hostPort, 'init', '--replication', '2']);
      assert.equal(first.code, 0, first.stderr);
      assert.match(
        first.stdout,
        /^initialised: etcd .*block size 64 KiB, ketama ring version 1, replication 2/,
      );
      const second = await runCli('torusctl', ['--etcd', etcd.endpoint, 'init']);
      assert.equal(second.code, 0, second.stderr);
      assert.match(second.stdout, /^already initialised: etcd http:\/\/127\.0\.0\.1:\d+ /);
      assert.equal(await ringVersion(), 1);
    });

    test('three nodes register and show as Avail', async () => {
      const [da, db, dc] = await Promise.all([newDir('a'), newDir('b'), newDir('c')]);
      [a, b, c] = await Promise.all([
        startNode(da, port.a),
        startNode(db, port.b),
        startNode(dc, port.c),
      ]);
      ids = { a: await uuidOf(da), b: await uuidOf(db), c: await uuidOf(dc) };
      const rows = await peers();
      assert.deepEqual(
        [ids.a, ids.b, ids.c].map((id) => rows.get(id)?.member),
        ['Avail', 'Avail', 'Avail'],
      );
      assert.equal(rows.get(ids.b)?.address, `http://127.0.0.1:${port.b}`);
      assert.equal(rows.get(ids.a)?.capacity, 256 * 2 ** 20);

      const table = await runCli('torusctl', ['list-peers'], { TORUS_ETCD: etcd.endpoint }); // the env spelling
      assert.equal(table.code, 0, table.stderr);
      assert.match(
        table.stdout,
        /^ADDRESS\s+UUID\s+SIZE\s+USED\s+MEMBER\s+UPDATED\s+REB\/REP DATA\n/,
      );
      assert.match(
        table.stdout,
        new RegExp(
          `http://127\\.0\\.0\\.1:${port.c}\\s+${ids.c}\\s+256 MiB\\s+0 B\\s+Avail\\s+(now|\\d+ seconds? ago)\\s+0 B/sec`,
        ),
      );
      assert.match(table.stdout, /\nBalanced: true\nTotal: 0 B used of 768 MiB \(0\.00%\)\n$/);
    });

    test('peer add --all-peers and ring set-replication: each change is exactly version + 1', async () => {
      const added = await ctl('peer', 'add', '--all-peers');
      assert.equal(added.code, 0, added.stderr);
      assert.match(added.stdout, /ring version 1 → 2 \(3 members\)/);
      assert.equal(await ringVersion(), 2);
      assert.deepEqual(
        [...(await peers()).values()].map((p) => p.member),
        ['OK', 'OK', 'OK'],
      );

      const again = await ctl('peer', 'add', `http://127.0.0.1:${port.a}`);
      assert.equal(again.code, 0, again.stderr);
      assert.match(
        again.stdout,
        new RegExp(`already in the ring: http://127\\.0\\.0\\.1:${port.a}`),
      );
      assert.equal(await ringVersion(), 2, 'nothing to change: no new version');

      const bad = await ctl('ring', 'set-replication', 'three');
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /N: expected a whole number/);
      const zero = await ctl('ring', 'set-replication', '0');
      assert.equal(zero.code, 2);

      const set = await ctl('ring', 'set-replication', '3');
      assert.equal(set.code, 0, set.stderr);
      assert.match(set.stdout, /replication 2 → 3; ring version 2 → 3/);
      const got = await ctl('ring', 'get');
      assert.match(got.stdout, /^Ring: ketama\nVersion: 3\nReplication: 3\nMembers: 3\n/);
      assert.match(
        got.stdout,
        new RegExp(`${ids.b}\\s+http://127\\.0\\.0\\.1:${port.b}\\s+256 MiB\\s+33\\.33%\\s+OK`),
      );
    });

    test('kill -9: the node stays listed until its lease runs out, then shows DOWN', async () => {
      const killedAt = Date.now();
      await c.stop('SIGKILL');
      assert.equal(
        (await peers()).get(ids.c)?.member,
        'OK',
        'a killed node is only noticed when its lease expires',
      );
      let rows: Map<string, PeerRow>;
      do {
        await new Promise((resolve) => setTimeout(resolve, 250));
        rows = await peers();
      } while (rows.get(ids.c)?.member !== 'DOWN' && Date.now() - killedAt < LEASE_TTL_MS + 5000);
      assert.equal(rows.get(ids.c)?.member, 'DOWN');
      assert.ok(
        Date.now() - killedAt >= LEASE_TTL_MS / 3,
        'not before the lease could have run out',
      );
      assert.equal(rows.get(ids.c)?.address, undefined, 'a DOWN member has no live registration');
    });

    test('SIGTERM: the node leaves at once (its lease is revoked)', async () => {
      assert.equal(await b.stop('SIGTERM'), 0);
      assert.equal((await peers()).get(ids.b)?.member, 'DOWN', 'DOWN as soon as torusd has exited');
    });

    test('peer remove: a DOWN node only with --force, one version per change', async () => {
      const refused = await ctl('peer', 'remove', ids.c);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /is DOWN: .*--force/);
      assert.equal(await ringVersion(), 3);
      const removed = await ctl('peer', 'remove', ids.c, '--force');
      assert.equal(removed.code, 0, removed.stderr);
      assert.match(removed.stdout, /ring version 3 → 4 \(2 members\)/);
      const rows = await peers();
      assert.equal(rows.has(ids.c), false);
      const unknown = await ctl('peer', 'remove', ids.c);
      assert.equal(unknown.code, 1);
      assert.match(unknown.stderr, /no ring member/);
    });

    test('a restart keeps the uuid with the data directory; a wiped one is a new node', async () => {
      b = await startNode(b.dataDir, port.b);
      assert.equal(await uuidOf(b.dataDir), ids.b);
      assert.equal((await peers()).get(ids.b)?.member, 'OK', 'back as the same ring member');

      // kill -9 then start at once: the dead predecessor's registration is taken over, not waited out.
      await a.stop('SIGKILL');
      a = await startNode(a.dataDir, port.a);
      assert.equal(await uuidOf(a.dataDir), ids.a);
      await printed(
        a,
        new RegExp(
          `node ${ids.a} registered as http://127\\.0\\.0\\.1:${port.a} .*a member of ring version 4`,
        ),
      );

      await rm(c.dataDir, { recursive: true, force: true });
      c = await startNode(c.dataDir, port.c);
      const fresh = await uuidOf(c.dataDir);
      assert.notEqual(fresh, ids.c);
      const rows = await peers();
      assert.equal(rows.get(fresh)?.member, 'Avail');
      assert.equal(rows.has(ids.c), false);
    });

    test('--auto-join adds a new node to the ring at start', async () => {
      const before = await ringVersion();
      const d = await startNode(await newDir('d'), port.d, ['--auto-join']);
      const id = await uuidOf(d.dataDir);
      assert.equal(await ringVersion(), before + 1);
      assert.equal((await peers()).get(id)?.member, 'OK');
      await printed(
        d,
        new RegExp(`node ${id} \\(new\\) registered .*a member of ring version ${before + 1}`),
      );
      const status = await runCli('torusctl', ['--data-dir', d.dataDir, 'status']);
      assert.equal(status.code, 0, status.stderr);
      assert.equal(JSON.parse(status.stdout).cluster.uuid, id);
    });

    test('volumes live in the cluster catalog; a joined data dir refuses the single-node store', async () => {
      const created = await ctl('volume', 'create-block', 'shared', '1GiB');
      assert.equal(created.code, 0, created.stderr);
      const blk = await runCli('torusblk', [
        '--etcd',
        etcd.endpoint,
        'volume',
        'create',
        'other',
        '64MiB',
      ]);
      assert.equal(blk.code, 0, blk.stderr);
      const list = await ctl('volume', 'list', '-o', 'json');
      assert.deepEqual((JSON.parse(list.stdout) as { name: string }[]).map((v) => v.name).sort(), [
        'other',
        'shared',
      ]);
      assert.equal((await ctl('volume', 'delete', 'other')).code, 0);

      assert.equal(await c.stop('SIGTERM'), 0);
      const local = await runCli('torusctl', ['--data-dir', c.dataDir, 'volume', 'list']);
      assert.equal(local.code, 1, local.stderr);
      assert.match(local.stderr, /belongs to a cluster: its volumes are in etcd; use -C /);
      const single = await runCli('torusd', ['--data-dir', c.dataDir, '--nbd', '127.0.0.1:0']);
      assert.equal(single.code, 1, single.stderr);
      assert.match(single.stderr, /belongs to a cluster \(joined through etcd .*\): give --etcd/);
    });

    test('bad cluster flags exit 2 naming the flag', async () => {
      const cases: ['torusd' | 'torusctl', string[], RegExp][] = [
        [
          'torusd',
          ['--etcd', hostPort, '--peer-address', 'nowhere'],
          /--peer-address: expected a URL/,
        ],
        ['torusd', ['--auto-join'], /--auto-join needs --etcd/],
        ['torusctl', ['-C', 'no-port', 'list-peers'], /--etcd: .*has no port/],
        ['torusctl', ['-C', hostPort, 'peer', 'add'], /missing PEER/],
        ['torusctl', ['-C', hostPort, 'peer', 'add', '--all-peers', ids.a], /not both/],
        ['torusctl', ['init', '--replication', '2'], /--replication needs -C/],
        [
          'torusctl',
          [
            'list-peers',
            '--etcd-ca-file',
            '/x',
            '--etcd',
            'https://127.0.0.1:1',
            '--etcd-cert-file',
            '/y',
          ],
          /--etcd-cert-file and --etcd-key-file go together/,
        ],
      ];
      const results = await Promise.all(cases.map(([bin, args]) => runCli(bin, args)));
      cases.forEach(([bin, args, message], i) => {
        assert.equal(
          results[i].code,
          2,
          `${bin} ${args.join(' ')} → ${results[i].code}: ${results[i].stderr}`,
        );
        assert.match(results[i].stderr, message);
      });
      const helps = await Promise.all(
        [
          ['peer', 'remove'],
          ['ring', 'set-replication'],
        ].map((words) => runCli('torusctl', [...words, '--help'])),
      );
      for (const help of helps) {
        assert.equal(help.code, 0);
        assert.match(help.stdout, /-C, --etcd/);
      }
      assert.match(helps[0].stdout, /--force .*DOWN/);
    });
  },
);
