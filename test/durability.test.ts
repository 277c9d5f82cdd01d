/**
 * What a FLUSH promises, checked with kill -9: data acknowledged by FLUSH or
 * by a FUA write survives the death of torusd at any moment; data written
 * after the last flush may be lost; metadata is never corrupt (the node
 * restarts and serves every volume). Without the intent log (on by default,
 * tested in durability-intent-log.test.ts): every FLUSH commits a whole
 * version here, as it does in a cluster. Every other round writes blocks
 * around the page cache (--direct-writes on, the default under a cgroup
 * memory limit), whose acknowledged data must come back the same way.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';
import { SYSTEM_PYTHON, missing, python } from './tools.js';

const skip = missing('nbdsh');
// Every torusd of this file: FLUSH commits a version (the log's own file tests the default).
process.env.TORUS_INTENT_LOG_SIZE = '0';

/**
 * Writes region i (1 MiB of a pattern derived from i and a seed) and
 * acknowledges it with FLUSH (even i) or FUA (odd i), printing "acked i"
 * after each acknowledgement; runs until killed or `count` regions.
 */
function writerScript(uri: string, seed: number, count: number): string {
  return `
import nbd, hashlib, sys
h = nbd.NBD()
h.connect_uri(${JSON.stringify(uri)})
MiB = 1 << 20
for i in range(${count}):
    block = hashlib.sha256(b"%d-%d" % (${seed}, i)).digest() * (MiB // 32)
    if i % 2 == 0:
        h.pwrite(block, i * MiB)
        h.flush()
    else:
        h.pwrite(block, i * MiB, nbd.CMD_FLAG_FUA)
    # Unacknowledged noise after the ack: may or may not survive.
    h.pwrite(b"\\xee" * 4096, 200 * MiB + i * 4096)
    print("acked", i, flush=True)
`;
}

function checkScript(uri: string, seed: number, upTo: number): string {
  return `
import nbd, hashlib
h = nbd.NBD()
h.connect_uri(${JSON.stringify(uri)})
MiB = 1 << 20
bad = []
for i in range(${upTo} + 1):
    block = hashlib.sha256(b"%d-%d" % (${seed}, i)).digest() * (MiB // 32)
    if h.pread(MiB, i * MiB) != block:
        bad.append(i)
print("bad", bad)
`;
}

const ROUNDS = 4;

describe('durability under kill -9', { skip, timeout: 240_000 }, () => {
  let dir: string;
  let node: TorusdProcess | undefined;

  before(async () => {
    dir = await makeDataDir('durable');
  });
  after(async () => {
    await node?.stop('SIGKILL');
    await removeDir(dir);
  });

  test('flushed and FUA-written data survive kill -9 at random moments', async (t) => {
    let seed = 1;
    let lostMiB = 0;
    let restartMs = 0;
    for (let round = 0; round < ROUNDS; round++, seed++) {
      const direct = ['--direct-writes', round % 2 === 0 ? 'on' : 'off'];
      node = await startTorusd({
        dataDir: dir,
        size: '1GiB',
        args: ['--ensure-volume', 'd=256MiB', ...direct],
      });
      // Start writing, kill torusd at a random moment while the writer runs.
      const { spawn } = await import('node:child_process');
      const writer = spawn(SYSTEM_PYTHON, ['-c', writerScript(node.uri('d'), seed, 150)], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let acked = -1;
      writer.stdout.on('data', (d: Buffer) => {
        for (const m of d.toString().matchAll(/acked (\d+)/g))
          acked = Math.max(acked, Number(m[1]));
      });
      const writerDone = new Promise((r) => writer.once('exit', r));
      await sleep(300 + Math.floor(Math.random() * 1200));
      process.kill(node.pid, 'SIGKILL');
      await node.stop('SIGKILL');
      await writerDone;
      const restarting = Date.now();
      node = await startTorusd({ dataDir: dir, size: '1GiB', args: direct });
      restartMs = Math.max(restartMs, Date.now() - restarting);
      const check = await python(checkScript(node.uri('d'), seed, acked));
      assert.equal(check.code, 0, check.stderr);
      lostMiB += (/bad \[(.*)\]/.exec(check.stdout)?.[1] ?? '')
        .split(',')
        .filter((x) => x.trim()).length;
      assert.match(
        check.stdout,
        /bad \[\]/,
        `round ${round}: regions acknowledged before kill -9 (0..${acked}) must read back intact`,
      );
      const list = await runCli('torusctl', ['volume', 'list', '-o', 'json'], {
        TORUS_DATA_DIR: dir,
      });
      assert.equal(list.code, 0, list.stderr);
      await node.stop('SIGTERM');
      node = undefined;
    }
    t.diagnostic(
      `fault-row | kill -9 single-node torusd under a FLUSH/FUA writer | ${ROUNDS} | bytes lost ${lostMiB * 2 ** 20} | restarted and serving in ${(restartMs / 1000).toFixed(1)} s (worst)`,
    );
  });
});
