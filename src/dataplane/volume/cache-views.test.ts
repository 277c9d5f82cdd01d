/**
 * Zero-copy reads past the cache: loadViews() loads what is missing and
 * hands out views of the cache with the volume's bytes; a cache too small to
 * hold the whole range at once gives undefined (the caller copies) rather
 * than waiting for slots it holds itself.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { closeVolumeRig, volumeRig } from '../../../test/support/volume-rig.js';
import { Volume, type VolumeIdentity } from './volume.js';

const BS = 64 * 1024;
const MiB = 1024 * 1024;
const identity: VolumeIdentity = {
  id: 7,
  name: 'views',
  size: 256 * BS,
  blockSize: BS,
  encrypted: false,
};

describe('cache views', { timeout: 60_000 }, () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'torus-views-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  async function written(dir: string, cacheBytes: number) {
    const r = await volumeRig(join(root, dir), {
      blockSize: BS,
      capacityBytes: 64 * MiB,
      cacheBytes,
      workers: 2,
    });
    const v = await Volume.open(identity, 0, undefined, null, r.services);
    const data = randomBytes(identity.size);
    data.fill(0, 8 * MiB, 9 * MiB); // a hole inside the range read below
    for (let at = 0; at < data.length; at += MiB)
      await v.write(at, data.subarray(at, at + MiB), false);
    await v.flush();
    return { r, v, data };
  }

  test('a range past the cache reads back through views of the cache', async () => {
    const { r, v, data } = await written('past', 4 * MiB); // 64 slots, 256 blocks written
    for (const at of [0, 7 * MiB + 12_345, 15 * MiB - 3]) {
      const length = Math.min(MiB + 4096, data.length - at);
      const views = (await v.loadViews(at, length)) ?? assert.fail('no views');
      assert.ok(Buffer.concat(views.buffers).equals(data.subarray(at, at + length)));
      views.release();
    }
    // Unpinned: the whole cache can be used for other blocks again.
    const back = Buffer.alloc(data.length);
    await v.read(0, back);
    assert.ok(back.equals(data));
    await closeVolumeRig(r);
  });

  test('a cache smaller than the range gives no views, and does not wait for itself', async () => {
    const { r, v, data } = await written('small', 8 * BS);
    const outcome = await Promise.race([
      v.loadViews(2 * MiB, 2 * MiB),
      sleep(10_000).then(() => 'still waiting' as const),
    ]);
    if (outcome === 'still waiting') assert.fail('loadViews waited on the slots it held');
    if (outcome) {
      assert.ok(Buffer.concat(outcome.buffers).equals(data.subarray(2 * MiB, 4 * MiB)));
      outcome.release();
    }
    const back = Buffer.alloc(2 * MiB);
    await v.read(2 * MiB, back);
    assert.ok(back.equals(data.subarray(2 * MiB, 4 * MiB)));
    await closeVolumeRig(r);
  });
});
