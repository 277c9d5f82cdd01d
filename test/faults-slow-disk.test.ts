/**
 * Fault suite: a slow disk. torusd's data directory is on ext4 over a loop
 * device over nbdfuse over nbdkit's delay filter (support/slow-disk.ts):
 * every read waits 1 ms and every write 5 ms (so an fdatasync waits on several). Under the flush-tracking
 * writer, a second client keeps reading another volume (the node keeps
 * serving others, only slower); then torusd is killed with SIGKILL mid-run
 * and restarted on the same port, and the writer reconnects. Reported: bytes
 * lost (must be 0 for anything FLUSHed), the slowest read the other client
 * saw, and the seconds from the restart to the first good FLUSH.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { freePort } from './cluster-fixture.js';
import { runFlushTrackingWriter } from './flush-tracking-writer.js';
import { NbdSession } from './nbd-session.js';
import { mountSlowDisk, slowDiskMissing, type SlowDisk } from './support/slow-disk.js';
import { startTorusd, type TorusdProcess } from './torusd-process.js';
import { missing } from './tools.js';

const MiB = 1024 * 1024;
const WRITE_SECONDS = 14;
const KILL_AT_MS = 8_000;

describe(
  'fault suite: a slow disk (1 ms reads, 5 ms writes) under a writer, then kill -9',
  { skip: slowDiskMissing() ?? missing('nbdsh'), timeout: 200_000 },
  () => {
    let disk: SlowDisk | undefined;
    let node: TorusdProcess | undefined;
    let reader: NbdSession | undefined;
    before(async () => {
      disk = await mountSlowDisk({
        size: '1G',
        delayRead: '1ms',
        delayWrite: '5ms',
      });
    });
    after(async () => {
      await reader?.kill();
      await node?.stop('SIGKILL');
      await disk?.unmount();
    });

    test('flushed data survives, other clients are served meanwhile, writes go on after the restart', async (t) => {
      const port = await freePort();
      const start = () =>
        startTorusd({
          dataDir: join(disk!.mountPoint, 'node'),
          size: '512MiB',
          args: [
            '--nbd',
            `127.0.0.1:${port}`,
            '--ensure-volume',
            'tracked=64MiB',
            '--ensure-volume',
            'other=64MiB',
          ],
          startTimeoutMs: 60_000,
        });
      node = await start();
      const otherData = randomBytes(8 * MiB);
      reader = await NbdSession.open(node.uri('other'), 20);
      assert.ok((await reader.write(0, otherData)).ok);
      assert.ok((await reader.flush()).ok);

      const seed = randomInt(2 ** 31);
      const writing = runFlushTrackingWriter({
        uri: node.uri('tracked'),
        readUris: [node.uri('tracked')],
        regionBytes: 16 * MiB,
        seconds: WRITE_SECONDS,
        finalFlushSeconds: 60,
        opTimeoutSeconds: 20,
        pauseSeconds: 0.05,
        reconnectAfterFailedFlushes: 1,
        seed,
      });

      // The other client reads its volume while the writer keeps the disk busy.
      let slowestReadMs = 0;
      const readingUntil = Date.now() + KILL_AT_MS - 1_000;
      while (Date.now() < readingUntil) {
        const began = Date.now();
        const back: Buffer = await reader.read(0, 8 * MiB, 30);
        slowestReadMs = Math.max(slowestReadMs, Date.now() - began);
        assert.equal(
          sha(back),
          sha(otherData),
          'the other volume reads back while the disk is slow',
        );
        await sleep(200);
      }
      await reader.kill();
      reader = undefined;

      await sleep(Math.max(0, readingUntil + 1_000 - Date.now()));
      assert.equal(await node.stop('SIGKILL'), 'SIGKILL');
      node = await start();
      const restartedAt = Date.now() / 1000;

      const { summary, events, result } = await writing;
      assert.ok(summary, `the writer printed no summary (exit ${result.code}):\n${result.stderr}`);
      const firstFlushBack = events.find((e) => e.ev === 'flush' && e.ok && e.t > restartedAt);
      const lostUnits = summary.verified.reduce((sum, v) => sum + v.bad.length, 0);
      t.diagnostic(
        `fault-row | slow disk (1 ms reads, 5 ms writes), torusd kill -9 under a writer | 1 | bytes lost ${lostUnits * 4096} | other client's slowest 8 MiB read ${slowestReadMs} ms; first good FLUSH ${firstFlushBack ? (firstFlushBack.t - restartedAt).toFixed(1) : 'never'} s after restart`,
      );
      for (const v of summary.verified)
        assert.deepEqual(v.bad, [], `seed ${seed}: flushed units wrong through ${v.uri}`);
      assert.ok(summary.finalFlushOk, 'a FLUSH works again after the restart');
      const other = await NbdSession.open(node.uri('other'), 20);
      try {
        assert.equal(
          sha(await other.read(0, 8 * MiB)),
          sha(otherData),
          'the other volume after kill -9',
        );
      } finally {
        await other.kill();
      }
    });
  },
);

function sha(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}
