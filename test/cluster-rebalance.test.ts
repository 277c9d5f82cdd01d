/**
 * Rebalance and GC across real torusd processes: overwritten blocks do not
 * pile up on peers (the original leaked them until the cluster was full),
 * a node added to the ring receives its share while surplus copies go, and
 * a deleted volume's blocks are freed everywhere.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { freePort, sha256 } from './cluster-fixture.js';
import { etcdMissing, startEtcd, type EtcdServer } from './etcd-server.js';
import { missing, runOk, toolEnv } from './tools.js';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

const MiB = 1024 * 1024;
const DATA = 48 * MiB;

interface PeerRow {
  uuid: string;
  used: number;
  member: string;
}

describe(
  'rebalance and GC between torusd nodes',
  { skip: etcdMissing() ?? missing('nbdcopy'), timeout: 180_000 },
  () => {
    let etcd: EtcdServer;
    const dirs: string[] = [];
    const nodes: TorusdProcess[] = [];
    let a: TorusdProcess;
    let c: TorusdProcess;
    let data: Buffer;
    let triple: Buffer;

    before(async () => {
      etcd = await startEtcd();
      const init = await runCli('torusctl', ['-C', etcd.endpoint, 'init', '--replication', '2']);
      assert.equal(init.code, 0, init.stderr);
      const created = await runCli('torusctl', [
        '-C',
        etcd.endpoint,
        'volume',
        'create-block',
        'vol',
        '128MiB',
      ]);
      assert.equal(created.code, 0, created.stderr);
      // A and B form the ring; C runs but joins only later.
      for (const [label, join] of [
        ['gc-a', true],
        ['gc-b', true],
        ['gc-c', false],
      ] as const) {
        const dir = await makeDataDir(label);
        dirs.push(dir);
        nodes.push(
          await startTorusd({
            dataDir: dir,
            size: '512MiB',
            args: [
              '--cache-size',
              '32MiB',
              '--workers',
              '1',
              '--etcd',
              etcd.endpoint,
              '--peer-address',
              `127.0.0.1:${await freePort()}`,
              '--lock-linger',
              '0',
              '--rebalance-interval',
              '2',
              ...(join ? ['--auto-join'] : []),
            ],
          }),
        );
      }
      [a, , c] = nodes;
    });
    after(async () => {
      await Promise.all(nodes.map((n) => n.stop('SIGKILL')));
      await etcd?.stop();
      await Promise.all(dirs.map(removeDir));
    });

    async function peers(): Promise<PeerRow[]> {
      const r = await runCli('torusctl', ['-C', etcd.endpoint, 'list-peers', '-o', 'json']);
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout).peers as PeerRow[];
    }

    /** Wait until the bytes stored on all nodes together satisfy `ok`; returns the per-node use. */
    async function storedUntil(
      what: string,
      ok: (total: number, rows: PeerRow[]) => boolean,
      timeoutMs = 40_000,
    ): Promise<PeerRow[]> {
      const deadline = Date.now() + timeoutMs;
      let rows: PeerRow[];
      for (;;) {
        rows = await peers();
        const total = rows.reduce((sum, p) => sum + p.used, 0);
        if (ok(total, rows)) return rows;
        if (Date.now() > deadline)
          assert.fail(
            `${what}: stored ${rows.map((p) => `${p.uuid.slice(0, 8)} ${(p.used / MiB).toFixed(1)} MiB`).join(', ')}`,
          );
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
    }

    async function write(bytes: Buffer): Promise<void> {
      const input = join(dirs[0], 'input.bin');
      await writeFile(input, bytes);
      await runOk('nbdcopy', ['--flush', input, a.uri('vol')], { timeoutMs: 60_000, env: toolEnv });
    }

    test('overwriting a volume three times leaves two copies of its data, not eight', async () => {
      for (let round = 0; round < 4; round++) {
        data = randomBytes(DATA);
        await write(data);
      }
      // Two copies of 48 MiB, plus map pages; the superseded rounds are freed on every node.
      await storedUntil(
        'superseded copies freed',
        (total) => total >= 2 * DATA && total < 2 * DATA + 8 * MiB,
      );
    });

    test('a node added to the ring receives its share, the others drop what they no longer hold for it', async () => {
      const added = await runCli('torusctl', ['-C', etcd.endpoint, 'peer', 'add', '--all-peers']);
      assert.equal(added.code, 0, added.stderr);
      const cUuid = (await readFile(join(c.dataDir, 'node-id'), 'utf8')).trim();
      const rows = await storedUntil(
        'blocks moved to the new node and surplus dropped',
        (total, rows) =>
          (rows.find((p) => p.uuid === cUuid)?.used ?? 0) > DATA / 3 && total < 2 * DATA + 8 * MiB,
        60_000,
      );
      process.stdout.write(
        `# after peer add: ${rows.map((p) => `${p.uuid.slice(0, 8)} ${(p.used / MiB).toFixed(1)} MiB`).join(', ')}\n`,
      );
      const out = join(dirs[0], 'out.bin');
      await runOk('nbdcopy', [c.uri('vol'), out], { timeoutMs: 60_000, env: toolEnv });
      assert.equal(
        sha256((await readFile(out)).subarray(0, DATA)),
        sha256(data),
        'the volume reads back intact after the move',
      );
    });

    test('a deleted volume is freed on every node', async () => {
      const deleted = await runCli('torusctl', ['-C', etcd.endpoint, 'volume', 'delete', 'vol']);
      assert.equal(deleted.code, 0, deleted.stderr);
      await storedUntil('the deleted volume freed everywhere', (total) => total === 0);
    });

    test('a volume with its own replication 3 keeps a copy on every node of a ring that says 2', async () => {
      const refused = await runCli('torusctl', [
        '-C',
        etcd.endpoint,
        'volume',
        'create-block',
        'triple',
        '64MiB',
        '--replication',
        '9',
      ]);
      assert.equal(refused.code, 2, refused.stderr);
      assert.match(refused.stderr, /--replication: expected a whole number from 1 to 8/);
      const created = await runCli('torusctl', [
        '-C',
        etcd.endpoint,
        'volume',
        'create-block',
        'triple',
        '64MiB',
        '--replication',
        '3',
      ]);
      assert.equal(created.code, 0, created.stderr);
      assert.match(created.stdout, /replication 3/);
      const listed = await runCli('torusctl', ['-C', etcd.endpoint, 'volume', 'list']);
      assert.match(listed.stdout, /REPLICATION/);
      assert.match(listed.stdout, /triple .* 3 /);
      triple = randomBytes(8 * MiB);
      const bytes = triple;
      const input = join(dirs[0], 'triple.bin');
      await writeFile(input, bytes);
      await runOk('nbdcopy', ['--flush', input, a.uri('triple')], {
        timeoutMs: 60_000,
        env: toolEnv,
      });
      await storedUntil(
        'a copy of every block on each of the three nodes',
        (_total, rows) => rows.length === 3 && rows.every((p) => p.used >= 8 * MiB),
      );
    });

    test('a node whose disk was wiped comes back as a new, empty member and is refilled', async () => {
      const oldUuid = (await readFile(join(c.dataDir, 'node-id'), 'utf8')).trim();
      await c.stop('SIGKILL');
      await rm(c.dataDir, { recursive: true, force: true });
      await mkdir(c.dataDir);
      const fresh = await startTorusd({
        dataDir: c.dataDir,
        size: '512MiB',
        args: [
          '--cache-size',
          '32MiB',
          '--workers',
          '1',
          '--etcd',
          etcd.endpoint,
          '--peer-address',
          `127.0.0.1:${await freePort()}`,
          '--lock-linger',
          '0',
          '--rebalance-interval',
          '2',
          '--auto-join',
        ],
      });
      nodes.push(fresh);
      const newUuid = (await readFile(join(c.dataDir, 'node-id'), 'utf8')).trim();
      assert.notEqual(newUuid, oldUuid, 'a wiped data directory is a new member');
      const removed = await runCli('torusctl', [
        '-C',
        etcd.endpoint,
        'peer',
        'remove',
        oldUuid,
        '--force',
      ]);
      assert.equal(removed.code, 0, removed.stderr);
      await storedUntil(
        'the new member refilled with its copy of the replication-3 volume',
        (_total, rows) =>
          rows.length === 3 &&
          rows.every((p) => p.used >= 8 * MiB) &&
          !rows.some((p) => p.uuid === oldUuid),
      );
      const out = join(dirs[0], 'triple-back.bin');
      await runOk('nbdcopy', [fresh.uri('triple'), out], { timeoutMs: 60_000, env: toolEnv });
      assert.equal(
        sha256((await readFile(out)).subarray(0, 8 * MiB)),
        sha256(triple),
        'read back intact through the refilled node',
      );
    });
  },
);
