/**
 * A task's whole blocks whose first reads follow one another in the store —
 * plain blocks' slots, patches' bases — are read by one readv
 * (local-reads.ts readRun); each is still checked against its own checksum
 * (a patch: its sub-blocks laid over its base, by the tree hash), so one
 * damaged block fails alone. Through the page cache and around it (direct
 * reads come with direct writes).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { closeVolumeRig, volumeRig } from '../../../test/support/volume-rig.js';
import { ChecksumError } from '../../common/errors.js';
import { SUB_BLOCK_SIZE } from '../blocks/sub-sums.js';
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

  for (const directWrites of [false, true]) {
    test(`patches over consecutive bases read whole as a run; a damaged base or patch fails its block alone (direct ${directWrites ? 'on' : 'off'})`, async () => {
      const dir = join(root, directWrites ? 'patches-direct' : 'patches-buffered');
      const options = {
        blockSize: BS,
        capacityBytes: 16 << 20,
        cacheBytes: 8 << 20,
        workers: 1,
        directWrites,
      };
      let r = await volumeRig(dir, options);
      const content = randomBytes(BLOCKS * BS);
      let v = await Volume.open(identity, 0, undefined, null, r.services);
      await v.write(0, content, false);
      await v.commit();
      await v.close();
      await closeVolumeRig(r);

      // Two separate 4 KiB writes into each block (sub-blocks 1 and 5, and 9 in
      // every other one): patches of two or three runs, over bases in consecutive slots.
      r = await volumeRig(dir, { ...options, committed: r.committed });
      v = await Volume.open(identity, r.committed.generation, r.committed.root, null, r.services);
      for (let block = 0; block < BLOCKS; block++) {
        for (const sub of block % 2 === 0 ? [1, 5] : [1, 5, 9]) {
          const at = block * BS + sub * SUB_BLOCK_SIZE;
          const bytes = randomBytes(SUB_BLOCK_SIZE);
          bytes.copy(content, at);
          await v.write(at, bytes, false);
        }
      }
      await v.commit();
      await v.close();
      await closeVolumeRig(r);

      r = await volumeRig(dir, { ...options, committed: r.committed });
      const { generation, root: mapRoot } = r.committed;
      const patches = [...Array(BLOCKS).keys()].map((i) =>
        r.store.lookup(identity.id, generation, i)!,
      );
      const bases = patches.map((slot) => r.store.baseOf(slot));
      for (let i = 0; i < BLOCKS; i++)
        assert.ok(r.store.needsBase(patches[i]), `block ${i} is a patch`);
      for (let i = 1; i < BLOCKS; i++)
        assert.equal(bases[i], bases[i - 1] + 1, 'the bases sit in consecutive slots');
      v = await Volume.open(identity, generation, mapRoot, null, r.services);
      const back = Buffer.alloc(BLOCKS * BS);
      await v.read(0, back);
      assert.ok(back.equals(content), 'every patched block reads back whole');
      await v.close();
      await closeVolumeRig(r);

      // A base's sub-block the patch does not hold, and a patch's own sub-block: each fails its block alone.
      const BAD_BASE = 3;
      const BAD_PATCH = 10;
      const data = await open(r.store.dataPath, 'r+');
      await data.write(
        Buffer.from([0xff ^ content[BAD_BASE * BS + 2 * SUB_BLOCK_SIZE]]),
        0,
        1,
        bases[BAD_BASE] * BS + 2 * SUB_BLOCK_SIZE,
      );
      await data.write(
        Buffer.from([0xff ^ content[BAD_PATCH * BS + 5 * SUB_BLOCK_SIZE + 7]]),
        0,
        1,
        patches[BAD_PATCH] * BS + 5 * SUB_BLOCK_SIZE + 7,
      );
      await data.close();
      r = await volumeRig(dir, { ...options, committed: r.committed });
      v = await Volume.open(identity, generation, mapRoot, null, r.services);
      for (const bad of [BAD_BASE, BAD_PATCH])
        await assert.rejects(
          v.read(bad * BS, Buffer.alloc(BS)),
          ChecksumError,
          `block ${bad} fails`,
        );
      for (const [from, to] of [
        [0, BAD_BASE],
        [BAD_BASE + 1, BAD_PATCH],
        [BAD_PATCH + 1, BLOCKS],
      ]) {
        const part = Buffer.alloc((to - from) * BS);
        await v.read(from * BS, part);
        assert.ok(
          part.equals(content.subarray(from * BS, to * BS)),
          `blocks ${from}-${to - 1} read back`,
        );
      }
      await v.close();
      await closeVolumeRig(r);
    });
  }
});
