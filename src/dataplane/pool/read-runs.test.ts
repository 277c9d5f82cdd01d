/**
 * A task's whole blocks whose store slots follow one another are read by
 * one readv (worker.ts readRun); each is still checked against its own
 * checksum, so one damaged block fails alone.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { closeVolumeRig, volumeRig } from '../../../test/support/volume-rig.js';
import { ChecksumError } from '../../common/errors.js';
import { Volume, type VolumeIdentity } from '../volume/volume.js';

const BS = 64 * 1024;
const BLOCKS = 16;
const DAMAGED = 6;
const identity: VolumeIdentity = {
  id: 5,
  name: 'runs',
  size: BLOCKS * BS,
  blockSize: BS,
  encrypted: false,
};

describe('misses read as runs of consecutive slots', { timeout: 60_000 }, () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'torus-read-runs-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  test('a block damaged inside a run fails alone; the rest of the run reads back', async () => {
    // One worker: the 16 misses of one read are one task, one run.
    const options = { blockSize: BS, capacityBytes: 16 << 20, cacheBytes: 8 << 20, workers: 1 };
    let r = await volumeRig(root, options);
    const content = randomBytes(BLOCKS * BS);
    const writer = await Volume.open(identity, 0, undefined, null, r.services);
    await writer.write(0, content, false);
    await writer.commit();
    await writer.close();
    await closeVolumeRig(r);

    r = await volumeRig(root, { ...options, committed: r.committed });
    const { generation, root: mapRoot } = r.committed;
    const slots = [...Array(BLOCKS).keys()].map((i) => r.store.lookup(identity.id, generation, i));
    for (let i = 1; i < BLOCKS; i++)
      assert.equal(slots[i], slots[i - 1]! + 1, 'blocks written in order sit in consecutive slots');
    const file = await open(r.store.dataPath, 'r+');
    await file.write(
      Buffer.from([0x5a ^ content[DAMAGED * BS + 99]]),
      0,
      1,
      slots[DAMAGED]! * BS + 99,
    );
    await file.close();

    // A read over the damaged block: its run fails it, whatever else it read.
    let reader = await Volume.open(identity, generation, mapRoot, null, r.services);
    await assert.rejects(reader.read(0, Buffer.alloc(BLOCKS * BS)), ChecksumError);
    await reader.close();
    await closeVolumeRig(r);

    // Fresh caches: the runs on either side of it read back whole, it fails alone.
    r = await volumeRig(root, { ...options, committed: r.committed });
    reader = await Volume.open(identity, generation, mapRoot, null, r.services);
    for (const [from, to] of [
      [0, DAMAGED],
      [DAMAGED + 1, BLOCKS],
    ]) {
      const back = Buffer.alloc((to - from) * BS);
      await reader.read(from * BS, back);
      assert.ok(
        back.equals(content.subarray(from * BS, to * BS)),
        `blocks ${from}-${to - 1} read back`,
      );
    }
    await assert.rejects(reader.read(DAMAGED * BS, Buffer.alloc(BS)), ChecksumError);
    await reader.close();
    await closeVolumeRig(r);
  });
});
