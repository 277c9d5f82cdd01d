/**
 * Replication between real torusd processes: a real etcd, three storage
 * nodes on loopback with replication 2, 128 MiB of random data written
 * through one node's NBD export with nbdcopy (flushed), one replica killed
 * with kill -9, and every byte read back through a node that joined after
 * the write and holds none of the data itself; and before that, a read with
 * a replica frozen (SIGSTOP), where deadlines must bound the stall.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
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

const DATA_BYTES = 128 * 1024 * 1024;

describe(
  'replication between torusd nodes',
  { skip: etcdMissing() ?? missing('nbdcopy'), timeout: 180_000 },
  () => {
    let etcd: EtcdServer;
    let endpoint: string;
    const dirs: string[] = [];
    const nodes: TorusdProcess[] = [];

    before(async () => {
      etcd = await startEtcd();
      endpoint = etcd.endpoint;
    });
    after(async () => {
      await Promise.all(nodes.map((n) => n.stop('SIGKILL')));
      await etcd?.stop();
      await Promise.all(dirs.map(removeDir));
    });

    async function startNode(label: string, extra: string[] = []): Promise<TorusdProcess> {
      const dir = await makeDataDir(label);
      dirs.push(dir);
      const node = await startTorusd({
        dataDir: dir,
        size: '512MiB',
        // A cache well below the data written: blocks are spilled (and replicated) before the flush.
        args: [
          '--cache-size',
          '48MiB',
          '--workers',
          '1',
          '--etcd',
          endpoint,
          '--peer-address',
          `127.0.0.1:${await freePort()}`,
          ...extra,
        ],
      });
      nodes.push(node);
      return node;
    }

    async function waitForPeers(count: number): Promise<void> {
      const deadline = Date.now() + 10_000;
      for (;;) {
        const r = await runCli('torusctl', ['-C', endpoint, 'list-peers', '-o', 'json']);
        const rows = r.code === 0 ? (JSON.parse(r.stdout).peers as { member: string }[]) : [];
        if (rows.filter((p) => p.member === 'OK').length >= count) return;
        if (Date.now() > deadline)
          assert.fail(`fewer than ${count} nodes OK in the ring: ${r.stdout}${r.stderr}`);
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }

    let a: TorusdProcess;
    let c: TorusdProcess;
    let bUuid: string;
    let data: Buffer;

    test('128 MiB written through one node survives kill -9 of a replica, read back through a node that holds none of it', async () => {
      const init = await runCli('torusctl', ['-C', endpoint, 'init', '--replication', '2']);
      assert.equal(init.code, 0, init.stderr);
      const created = await runCli('torusctl', [
        '-C',
        endpoint,
        'volume',
        'create-block',
        'vol',
        '256MiB',
      ]);
      assert.equal(created.code, 0, created.stderr);

      // A keeps the volume (and its write lock) open long after nbdcopy disconnects.
      a = await startNode('repl-a', ['--auto-join', '--lock-linger', '600']);
      const b = await startNode('repl-b', ['--auto-join']);
      c = await startNode('repl-c', ['--auto-join']);
      bUuid = (await readFile(join(b.dataDir, 'node-id'), 'utf8')).trim();
      await waitForPeers(3);

      const input = join(dirs[0], 'input.bin');
      data = randomBytes(DATA_BYTES);
      await writeFile(input, data);
      await runOk('nbdcopy', ['--flush', input, a.uri('vol')], {
        timeoutMs: 120_000,
        env: toolEnv,
      });

      // The node whose client opened the volume first holds its write lock; `volume list` names it.
      const aUuid = (await readFile(join(a.dataDir, 'node-id'), 'utf8')).trim();
      const listed = await runCli('torusctl', ['-C', endpoint, 'volume', 'list']);
      assert.equal(listed.code, 0, listed.stderr);
      assert.match(listed.stdout, /WRITER/);
      assert.match(listed.stdout, new RegExp(`vol .*node ${aUuid} \\(host `));

      // Copies went to every node (each reports its store's use every 2 s).
      const deadline = Date.now() + 8000;
      for (;;) {
        const r = await runCli('torusctl', ['-C', endpoint, 'list-peers', '-o', 'json']);
        const used = (JSON.parse(r.stdout).peers as { used: number }[]).map((p) => p.used);
        if (used.length === 3 && used.every((u) => u > 16 * 1024 * 1024)) break;
        if (Date.now() > deadline)
          assert.fail(`copies did not spread over the three nodes: used ${used.join(', ')}`);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }

      // A frozen replica (SIGSTOP: no reset, just silence, and its lease still
      // looks alive for a few seconds) must cost a bounded stall, not a hang:
      // a fresh reader asks C first for part of C's blocks.
      process.kill(c.pid, 'SIGSTOP');
      try {
        const d = await startNode('repl-d');
        // A holds the volume's write lock: D serves it read-only and says who writes it.
        const info = JSON.parse(await runOk('nbdinfo', ['--json', d.uri('vol')], { env: toolEnv }));
        const described = info.exports[0];
        assert.equal(
          described.is_read_only,
          true,
          'a second node serves a locked volume read-only',
        );
        assert.match(
          described.description,
          /read-only: written by node [0-9a-f-]+ \(host .*\) \(lock epoch 1\)/,
        );
        const started = performance.now();
        const frozenOut = join(dirs[0], 'frozen.bin');
        await runOk('nbdcopy', [d.uri('vol'), frozenOut], { timeoutMs: 120_000, env: toolEnv });
        const seconds = (performance.now() - started) / 1000;
        assert.equal(
          sha256((await readFile(frozenOut)).subarray(0, DATA_BYTES)),
          sha256(data),
          'intact with a replica frozen',
        );
        process.stdout.write(
          `# read 256 MiB through a new node with one replica frozen: ${seconds.toFixed(1)} s\n`,
        );
      } finally {
        process.kill(c.pid, 'SIGCONT');
      }

      // B held about a third of the copies; kill it without warning.
      await b.stop('SIGKILL');

      // E joins after the write, not in the ring: every block it serves comes from A or C.
      const e = await startNode('repl-e');
      const output = join(dirs[0], 'output.bin');
      const readStarted = performance.now();
      await runOk('nbdcopy', [e.uri('vol'), output], { timeoutMs: 120_000, env: toolEnv });
      process.stdout.write(
        `# read 256 MiB through a new node with one replica killed: ${((performance.now() - readStarted) / 1000).toFixed(1)} s\n`,
      );
      const back = await readFile(output);
      assert.equal(back.length, 256 * 1024 * 1024);
      assert.equal(
        sha256(back.subarray(0, DATA_BYTES)),
        sha256(data),
        'every written byte reads back intact',
      );
      assert.ok(
        back.subarray(DATA_BYTES).every((byte) => byte === 0),
        'the unwritten rest reads as zeros',
      );
    });

    test('after the dead node is removed, the writer re-copies its blocks; then the writer itself is killed and every byte still reads back', async () => {
      const removed = await runCli('torusctl', [
        '-C',
        endpoint,
        'peer',
        'remove',
        bUuid,
        '--force',
      ]);
      assert.equal(removed.code, 0, removed.stderr);

      // The writer's rebalance runs on every ring or liveness change; wait until a run after the removal is over.
      const removedAt = Date.now();
      const deadline = removedAt + 60_000;
      let repair:
        | {
            running: boolean;
            runs: number;
            copied: number;
            failed: number;
            lastStartedAt?: string;
            last?: { failed: number };
          }
        | undefined;
      for (;;) {
        const r = await runCli('torusctl', ['status', '--data-dir', a.dataDir]);
        assert.equal(r.code, 0, r.stderr);
        repair = JSON.parse(r.stdout).replication?.rebalance;
        if (
          repair &&
          !repair.running &&
          repair.lastStartedAt &&
          Date.parse(repair.lastStartedAt) >= removedAt - 1000
        )
          break;
        if (Date.now() > deadline)
          assert.fail(`no repair run finished after the removal: ${JSON.stringify(repair)}`);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      // Counted over every run: copies meant for C while it was frozen failed then, and were made once it was back.
      assert.ok(
        repair.copied > 0,
        `the writer copied the blocks B held elsewhere (${JSON.stringify(repair)})`,
      );
      assert.equal(
        repair.last?.failed,
        0,
        `the run after the removal made every copy it needed (${JSON.stringify(repair)})`,
      );
      process.stdout.write(
        `# repair runs so far (a frozen node, a killed node, a removal): ${repair.runs} runs, ${repair.copied} copies made, ${repair.failed} failed while a target was frozen\n`,
      );

      // Kill the writer: every block must now be on C alone among the living.
      await a.stop('SIGKILL');
      const f = await startNode('repl-f');
      const output = join(dirs[0], 'after-repair.bin');
      await runOk('nbdcopy', [f.uri('vol'), output], { timeoutMs: 120_000, env: toolEnv });
      assert.equal(
        sha256((await readFile(output)).subarray(0, DATA_BYTES)),
        sha256(data),
        'intact after losing two of three nodes, one at a time with repair between',
      );
      void c;
    });
  },
);
