/**
 * A write-back cut into one task per worker (DataPool.writeBatchSize): the
 * share of each worker, its bounds, and a volume stored that way over the
 * real store and pool — blocks past the first task's, all-zero ones among
 * them, read back after a restart — through the page cache and around it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { closeVolumeRig, volumeRig } from '../../../test/support/volume-rig.js';
import { Volume, type VolumeIdentity } from '../volume/volume.js';
import { LOCAL_WRITE_BATCH_MAX, REPLICATED_WRITE_BATCH_MAX, writeBatchSize } from './data-pool.js';
import { BATCH } from './tasks.js';

describe('writeBatchSize', () => {
  test('an even share per worker, from BATCH to LOCAL_WRITE_BATCH_MAX', () => {
    assert.equal(writeBatchSize(8, 4, false), BATCH);
    assert.equal(writeBatchSize(100, 4, false), 25);
    assert.equal(writeBatchSize(512, 4, false), 128);
    assert.equal(writeBatchSize(1024, 4, false), LOCAL_WRITE_BATCH_MAX);
    assert.equal(writeBatchSize(40, 0, false), 40, 'no worker count: one task');
  });

  test('copies to peers: an even share up to REPLICATED_WRITE_BATCH_MAX, within 8 MiB a task', () => {
    assert.equal(writeBatchSize(8, 2, true), BATCH);
    assert.equal(writeBatchSize(100, 2, true), 50);
    assert.equal(writeBatchSize(1024, 2, true), REPLICATED_WRITE_BATCH_MAX);
    assert.equal(writeBatchSize(1024, 2, true, 1024 * 1024), 8, '1 MiB blocks: 8 MiB a task');
    assert.equal(
      writeBatchSize(1024, 2, true, 8 * 1024 * 1024),
      1,
      'the largest blocks: one a task',
    );
  });
});

const BS = 64 * 1024;
const BLOCKS = 70;
const identity: VolumeIdentity = {
  id: 3,
  name: 'batched',
  size: BLOCKS * BS,
  blockSize: BS,
  encrypted: false,
};

describe('a write-back in large tasks', { timeout: 60_000 }, () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'torus-write-batches-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  for (const directWrites of [false, true]) {
    test(`every block lands where its task says, zeros as holes (direct writes ${directWrites ? 'on' : 'off'})`, async () => {
      const dir = join(root, directWrites ? 'direct' : 'buffered');
      const options = { blockSize: BS, capacityBytes: 16 << 20, cacheBytes: 8 << 20, workers: 2 };
      let r = await volumeRig(dir, { ...options, directWrites });
      const content = randomBytes(BLOCKS * BS);
      const zeros = [17, 36, 69]; // in the second task and later (35 blocks a task over 2 workers)
      for (const index of zeros) content.fill(0, index * BS, (index + 1) * BS);
      const writer = await Volume.open(identity, 0, undefined, null, r.services);
      await writer.write(0, content, false);
      await writer.commit();
      for (const index of zeros)
        assert.equal(writer.committedMap.isPresent(index), false, `block ${index} is a hole`);
      assert.equal(writer.committedMap.isPresent(35), true);
      await writer.close();
      await closeVolumeRig(r);
      r = await volumeRig(dir, { ...options, directWrites, committed: r.committed });
      const reader = await Volume.open(
        identity,
        r.committed.generation,
        r.committed.root,
        null,
        r.services,
      );
      const back = Buffer.alloc(BLOCKS * BS);
      await reader.read(0, back);
      assert.ok(back.equals(content), 'the volume reads back as written');
      await reader.close();
      await closeVolumeRig(r);
    });
  }
});
