/**
 * Who writes a volume in a cluster: the write lock is taken when an NBD
 * client opens the volume on a node, other nodes serve it read-only while
 * that lasts, and it passes to another node once the writer's clients are
 * gone. Also: a volume created after the nodes started is served by all of
 * them. Real etcd, real torusd processes, real NBD clients.
 */
import assert from 'node:assert/strict';
import { startNbdserve } from './support/nbdserve-process.js';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { freePort, sha256, until } from './cluster-fixture.js';
import { etcdMissing, startEtcd, type EtcdServer } from './etcd-server.js';
import { missing, runOk, SYSTEM_PYTHON, toolEnv } from './tools.js';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';
import { exitOf } from './support/child-exit.js';

const MiB = 1024 * 1024;

describe(
  'volume write locks follow NBD clients',
  { skip: etcdMissing() ?? missing('nbdcopy', 'nbdinfo', 'nbdsh'), timeout: 150_000 },
  () => {
    let etcd: EtcdServer;
    const dirs: string[] = [];
    const nodes: TorusdProcess[] = [];
    let a: TorusdProcess;
    let b: TorusdProcess;

    before(async () => {
      etcd = await startEtcd();
      const init = await runCli('torusctl', ['-C', etcd.endpoint, 'init', '--replication', '2']);
      assert.equal(init.code, 0, init.stderr);
      for (const label of ['lock-a', 'lock-b']) {
        const dir = await makeDataDir(label);
        dirs.push(dir);
        nodes.push(
          await startTorusd({
            dataDir: dir,
            size: '256MiB',
            args: [
              '--cache-size',
              '32MiB',
              '--workers',
              '1',
              '--etcd',
              etcd.endpoint,
              '--peer-address',
              `127.0.0.1:${await freePort()}`,
              '--auto-join',
              '--lock-linger',
              '0',
            ],
          }),
        );
      }
      [a, b] = nodes;
    });
    after(async () => {
      await Promise.all(nodes.map((n) => n.stop('SIGKILL')));
      await etcd?.stop();
      await Promise.all(dirs.map(removeDir));
    });

    async function writer(): Promise<string | undefined> {
      const r = await runCli('torusctl', ['-C', etcd.endpoint, 'volume', 'list', '-o', 'json']);
      assert.equal(r.code, 0, r.stderr);
      const volumes = JSON.parse(r.stdout) as { name: string; lockedBy?: string }[];
      return volumes.find((v) => v.name === 'late')?.lockedBy?.match(/^node (\S+)/)?.[1];
    }

    test('a volume created after start is served everywhere, and its lock passes from node to node with the clients', async () => {
      const created = await runCli('torusctl', [
        '-C',
        etcd.endpoint,
        'volume',
        'create-block',
        'late',
        '64MiB',
      ]);
      assert.equal(created.code, 0, created.stderr);
      for (const node of nodes) {
        const listed = await runOk('nbdinfo', ['--list', '--json', node.uri('')], { env: toolEnv });
        assert.ok(
          (JSON.parse(listed).exports as { 'export-name': string }[]).some(
            (e) => e['export-name'] === 'late',
          ),
          'every node lists the new volume',
        );
      }

      const dir = dirs[0];
      const first = randomBytes(16 * MiB);
      await writeFile(join(dir, 'first.bin'), first);
      await runOk('nbdcopy', ['--flush', join(dir, 'first.bin'), a.uri('late')], {
        timeoutMs: 60_000,
        env: toolEnv,
      });
      // --lock-linger 0: A lets go of the volume as soon as its client has gone.
      await until('A to release the lock', async () =>
        (await writer()) === undefined ? true : undefined,
      );

      // B takes the lock with its client and sees A's data; while B's client is
      // connected, A serves the volume read-only and names B.
      const holder = spawn(
        SYSTEM_PYTHON,
        [
          '-c',
          `import nbd, sys, time\nh = nbd.NBD()\nh.connect_uri(${JSON.stringify(b.uri('late'))})\nprint('open', h.is_read_only(), flush=True)\nsys.stdin.read()\n`,
        ],
        {
          env: { ...process.env, ...toolEnv },
          stdio: ['pipe', 'pipe', 'inherit'],
        },
      );
      try {
        const opened = await new Promise<string>((resolve, reject) => {
          let said = '';
          holder.stdout!.on('data', (chunk: Buffer) => {
            said += chunk.toString();
            if (said.includes('\n')) resolve(said);
          });
          holder.once('exit', (code) => reject(new Error(`nbdsh holder exited ${code}: ${said}`)));
        });
        assert.match(opened, /open False/, 'the first client on B gets a writable export');
        const bUuid = (await readFile(join(b.dataDir, 'node-id'), 'utf8')).trim();
        assert.equal(await writer(), bUuid, '`volume list` names B as the writer');
        const info = JSON.parse(await runOk('nbdinfo', ['--json', a.uri('late')], { env: toolEnv }))
          .exports[0];
        assert.equal(info.is_read_only, true, 'A serves it read-only while B writes');
        assert.match(info.description, new RegExp(`read-only: written by node ${bUuid}`));

        const second = Buffer.concat([first.subarray(0, 8 * MiB), randomBytes(8 * MiB)]);
        await writeFile(join(dir, 'second.bin'), second);
        await runOk('nbdcopy', ['--flush', join(dir, 'second.bin'), b.uri('late')], {
          timeoutMs: 60_000,
          env: toolEnv,
        });
        holder.stdin!.end();
        await until('B to release the lock', async () =>
          (await writer()) === undefined ? true : undefined,
        );

        // A opens it afresh: it reads B's committed version, not its own old one.
        await runOk('nbdcopy', [a.uri('late'), join(dir, 'back.bin')], {
          timeoutMs: 60_000,
          env: toolEnv,
        });
        const back = await readFile(join(dir, 'back.bin'));
        assert.equal(sha256(back.subarray(0, 16 * MiB)), sha256(second), 'A reads what B wrote');
      } finally {
        holder.kill('SIGKILL');
      }
    });

    test('torusblk nbdserve serves the cluster from a machine that stores nothing; what it flushed survives its kill -9', async () => {
      const port = await freePort();
      const scratchDir = await makeDataDir('nbdserve-scratch');
      dirs.push(scratchDir);
      const served = await startNbdserve({
        etcdEndpoint: etcd.endpoint,
        port,
        scratchDir,
        cacheSize: '16MiB',
        args: ['--workers', '1'],
        startTimeoutMs: 20_000,
      });
      const client = served.child;
      try {
        // The volume lines follow the log line startNbdserve waits for, on another pipe: wait for them too.
        await until(
          'nbdserve to list the volumes of the cluster',
          async () => /serving nbd:\/\/127\.0\.0\.1:\d+\/late/.test(served.output()) || undefined,
          10_000,
          () => served.output(),
        );
        const uri = `nbd://127.0.0.1:${port}/late`;
        const usedBefore = await storedBytes();
        const data = randomBytes(32 * MiB);
        await writeFile(join(scratchDir, 'in.bin'), data);
        await runOk('nbdcopy', ['--flush', join(scratchDir, 'in.bin'), uri], {
          timeoutMs: 60_000,
          env: toolEnv,
        });
        client.kill('SIGKILL');
        await exitOf(client, 'killed client');
        // R=2 with two storage nodes: both hold a copy of everything.
        await until('the copies to show in list-peers', async () =>
          (await storedBytes()) >= usedBefore + 2 * 32 * MiB ? true : undefined,
        );
        // The dead client's lock lapses with its lease (10 s); reading needs no lock.
        await runOk('nbdcopy', [b.uri('late'), join(scratchDir, 'out.bin')], {
          timeoutMs: 60_000,
          env: toolEnv,
        });
        assert.equal(
          sha256((await readFile(join(scratchDir, 'out.bin'))).subarray(0, 32 * MiB)),
          sha256(data),
          'what the client flushed reads back through a storage node',
        );
      } finally {
        client.kill('SIGKILL');
      }
    });

    test(
      'torusblk nbd says plainly why it cannot attach on a kernel without the nbd module',
      { skip: existsSync('/sys/module/nbd') ? 'this kernel has nbd' : undefined },
      async () => {
        const r = await runCli('torusblk', ['-C', etcd.endpoint, 'nbd', 'late']);
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /no nbd module/);
        assert.match(r.stderr, /torusblk nbdserve/);
      },
    );

    async function storedBytes(): Promise<number> {
      const r = await runCli('torusctl', ['-C', etcd.endpoint, 'list-peers', '-o', 'json']);
      return (JSON.parse(r.stdout).peers as { used: number }[]).reduce((sum, p) => sum + p.used, 0);
    }
  },
);
