/**
 * What /metrics says of a node's write-back and store space: spill rounds
 * (a cache full of dirty blocks stored for the next version) are counted
 * and timed, and after 4 KiB writes into committed blocks the store counts
 * them as patches and their old blocks as held bases — space that
 * `torus_store_used_bytes` does not include.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { NbdClient } from '../src/dataplane/nbd-client/client.js';
import { freePort } from './cluster-fixture.js';
import { metricValue } from './support/metrics-scrape.js';
import { makeDataDir, removeDir, startTorusd, type TorusdProcess } from './torusd-process.js';

const VOLUME = 'space';
const MiB = 2 ** 20;
const BLOCK = 64 * 1024;

describe('store and write-back metrics', { timeout: 60_000 }, () => {
  test('spill rounds are counted; patches and held bases are shown apart from used', async () => {
    const dir = await makeDataDir('store-metrics');
    const port = await freePort();
    let node: TorusdProcess | undefined;
    try {
      // The smallest cache (64 blocks), and every FLUSH a commit (no intent log).
      node = await startTorusd({
        dataDir: dir,
        args: [
          ...['--ensure-volume', `${VOLUME}=32MiB`, '--port', String(port)],
          ...['--cache-size', '4MiB', '--intent-log-size', '0'],
        ],
      });
      const client = await NbdClient.connect({ host: '127.0.0.1', port: node.port }, VOLUME);
      // 16 MiB, four times the cache: dirty blocks must be spilled before the FLUSH.
      for (let at = 0; at < 16 * MiB; at += MiB) await client.write(randomBytes(MiB), at);
      await client.flush();
      assert.ok((await metricValue(port, 'torus_spilled_blocks_total')) > 0, 'blocks were spilled');
      assert.ok(
        (await metricValue(port, 'torus_spill_seconds_count')) > 0,
        'spill rounds were timed',
      );
      const used = await metricValue(port, 'torus_store_used_bytes');
      assert.equal(await metricValue(port, 'torus_store_patches'), 0);
      assert.equal(await metricValue(port, 'torus_store_held_bytes'), 0);

      // 4 KiB into each of 8 committed blocks, committed: 8 patches over 8 held bases.
      for (let block = 0; block < 8; block++)
        await client.write(randomBytes(4096), block * 4 * BLOCK + 4096);
      await client.flush();
      await client.close();
      assert.equal(await metricValue(port, 'torus_store_patches'), 8);
      assert.equal(await metricValue(port, 'torus_store_held_bytes'), 8 * BLOCK);
      // Each patch takes its block's place in the index, the block it replaced is held: used stays.
      assert.equal(await metricValue(port, 'torus_store_used_bytes'), used);
    } finally {
      await node?.stop();
      await removeDir(dir);
    }
  });
});
