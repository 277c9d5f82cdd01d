/**
 * How a restarted node reads small cache misses, as /metrics says: each 4 KiB
 * read of a block not in the cache is read from the store either on the event
 * loop (the store answers from memory) or in libuv's thread pool (from the
 * disk); the two counters together cover every such miss, and the bytes read
 * back are the ones written.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { NbdClient } from '../src/dataplane/nbd-client/client.js';
import { freePort } from './cluster-fixture.js';
import { metricValue } from './support/metrics-scrape.js';
import { makeDataDir, removeDir, startTorusd, type TorusdProcess } from './torusd-process.js';

const VOLUME = 'misses';
const MiB = 2 ** 20;
const BLOCK = 64 * 1024;

describe('small cache misses after a restart', { timeout: 60_000 }, () => {
  test('are read on the event loop or in the thread pool, counted, and right', async () => {
    const dir = await makeDataDir('misses');
    const metricsPort = await freePort();
    const start = () =>
      startTorusd({
        dataDir: dir,
        args: ['--ensure-volume', `${VOLUME}=16MiB`, '--port', String(metricsPort)],
      });
    let node: TorusdProcess | undefined;
    try {
      node = await start();
      const data = randomBytes(8 * MiB);
      let client = await NbdClient.connect({ host: '127.0.0.1', port: node.port }, VOLUME);
      await client.write(data, 0);
      await client.flush();
      await client.close();
      await node.stop('SIGTERM');

      // A new process: its cache is empty, every block a miss.
      node = await start();
      client = await NbdClient.connect({ host: '127.0.0.1', port: node.port }, VOLUME);
      const reads = 24;
      // One 4 KiB piece of each of 24 blocks, a different piece each: small misses, never whole blocks.
      const pieces = Array.from({ length: reads }, (_, i) => i * 5 * BLOCK + (i % 16) * 4096);
      const back = pieces.map(() => Buffer.alloc(4096));
      await Promise.all(pieces.map((at, i) => client.read(back[i], at)));
      await client.close();
      pieces.forEach((at, i) =>
        assert.ok(back[i].equals(data.subarray(at, at + 4096)), `4 KiB at ${at}`),
      );
      const inline = await metricValue(metricsPort, 'torus_cache_misses_read_inline_total');
      const pooled = await metricValue(metricsPort, 'torus_cache_misses_read_async_total');
      assert.ok(
        inline + pooled >= reads,
        `${inline} read on the event loop and ${pooled} in the pool, for ${reads} misses`,
      );
    } finally {
      await node?.stop();
      await removeDir(dir);
    }
  });
});
