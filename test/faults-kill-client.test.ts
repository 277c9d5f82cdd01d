/**
 * Fault suite: kill -9 of the client path. `torusblk nbdserve` serves a
 * 3-node cluster (R = 2) from a machine that stores nothing; under load (fio
 * random writes on one volume, and the flush-tracking writer on another,
 * which knows block by block what every FLUSH acknowledged), nbdserve is
 * killed with SIGKILL and started again on the same port. The writer
 * reconnects; its write lock passes from the dead process's lease to the new
 * one. Reported: bytes lost (units the writer's FLUSHes acknowledged that do
 * not read back, through nbdserve and through a storage node), and the
 * seconds from the restart to the first FLUSH that succeeded again.
 *
 * The other process kinds are killed by their own tests, which report rows
 * of the same fault table: a single torusd (durability.test.ts), a cluster
 * writer and each replica in turn (cluster-kill.test.ts), etcd
 * (cluster-etcd.test.ts), a partitioned node (cluster-fencing.test.ts).
 */
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { Cluster, freePort } from './cluster-fixture.js';
import { etcdMissing } from './etcd-server.js';
import { runFlushTrackingWriter } from './flush-tracking-writer.js';
import { missing, run, toolEnv } from './tools.js';
import { makeDataDir, removeDir } from './torusd-process.js';
import { startNbdserve } from './support/nbdserve-process.js';
import { exitOf } from './support/child-exit.js';

const MiB = 1024 * 1024;
const WRITE_SECONDS = 16;
const KILL_AT_MS = 6_000;
const RESTART_AFTER_MS = 1_000;

describe(
  'fault suite: kill -9 of torusblk nbdserve under load',
  { skip: etcdMissing() ?? missing('nbdsh') ?? missing('fio'), timeout: 200_000 },
  () => {
    let cluster: Cluster;
    let scratch: string;
    let server: ChildProcess | undefined;
    before(async () => {
      cluster = await Cluster.start({
        nodes: 3,
        replication: 2,
        size: '512MiB',
        cacheSize: '32MiB',
      });
      scratch = await makeDataDir('nbdserve-kill');
    });
    after(async () => {
      server?.kill('SIGKILL');
      await cluster?.stop();
      await removeDir(scratch);
    });

    const nbdserveOn = async (port: number): Promise<ChildProcess> =>
      (await startNbdserve({ etcdEndpoint: cluster.endpoint, port, scratchDir: scratch })).child;

    test('flushed data survives, and writes go on through the restarted nbdserve', async (t) => {
      for (const volume of ['tracked', 'load']) {
        const created = await cluster.ctl('volume', 'create-block', volume, '64MiB');
        assert.equal(created.code, 0, created.stderr);
      }
      const port = await freePort();
      server = await nbdserveOn(port);
      const seed = randomInt(2 ** 31);
      const uri = (volume: string) => `nbd://127.0.0.1:${port}/${volume}`;
      const writing = runFlushTrackingWriter({
        uri: uri('tracked'),
        readUris: [uri('tracked'), cluster.nodes[1].uri('tracked')],
        regionBytes: 16 * MiB,
        seconds: WRITE_SECONDS,
        finalFlushSeconds: 40,
        opTimeoutSeconds: 10,
        pauseSeconds: 0.05,
        reconnectAfterFailedFlushes: 1,
        seed,
      });
      // fio as load beside it; it dies with its connection and is not judged.
      const fio = run(
        'fio',
        [
          '--name=load',
          '--ioengine=nbd',
          `--uri=${uri('load')}`,
          '--rw=randwrite',
          '--bs=64k',
          '--iodepth=8',
          '--size=32MiB',
          '--time_based',
          `--runtime=${WRITE_SECONDS}`,
          '--fsync=16',
          '--verify=crc32c',
          '--do_verify=0',
          '--verify_state_save=0',
        ],
        { timeoutMs: (WRITE_SECONDS + 30) * 1000, env: toolEnv },
      );

      await sleep(KILL_AT_MS);
      server.kill('SIGKILL');
      await exitOf(server!, 'killed torusd');
      await sleep(RESTART_AFTER_MS);
      server = await nbdserveOn(port);
      const restartedAt = Date.now() / 1000;

      const [{ summary, events, result }] = await Promise.all([writing, fio]);
      const firstFlushBack = events.find((e) => e.ev === 'flush' && e.ok && e.t > restartedAt);
      const recoveredS = firstFlushBack ? firstFlushBack.t - restartedAt : NaN;
      assert.ok(summary, `the writer printed no summary (exit ${result.code}):\n${result.stderr}`);
      const lostUnits = summary.verified.reduce((sum, v) => sum + v.bad.length, 0);
      t.diagnostic(
        `fault-row | kill -9 torusblk nbdserve (3 nodes, R=2) under fio | 1 | bytes lost ${lostUnits * 4096} | recovered in ${recoveredS.toFixed(1)} s`,
      );
      for (const v of summary.verified)
        assert.deepEqual(v.bad, [], `seed ${seed}: flushed units wrong through ${v.uri}`);
      assert.ok(summary.finalFlushOk, 'a FLUSH works again through the restarted nbdserve');

      // The fio volume: written and verified afresh through the new process.
      const again = await run(
        'fio',
        [
          '--name=verify',
          '--ioengine=nbd',
          `--uri=${uri('load')}`,
          '--rw=randwrite',
          '--bs=64k',
          '--size=8MiB',
          '--verify=crc32c',
          '--do_verify=1',
          '--verify_state_save=0',
        ],
        { timeoutMs: 60_000, env: toolEnv },
      );
      assert.equal(
        again.code,
        0,
        `fio write+verify after the restart:\n${again.stdout}\n${again.stderr}`,
      );
    });
  },
);
