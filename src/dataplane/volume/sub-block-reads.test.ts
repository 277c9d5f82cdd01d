/**
 * Sub-block reads over the real store, cache and pool: a cold 4 KiB read
 * loads that 4 KiB only; a damaged 4 KiB is an error for reads touching it
 * and not for the rest of its block; a sequential reader gets the rest of
 * the block at once; a wrong sub-sums entry costs a whole read, not an
 * error; a write into a partly loaded block keeps every byte;
 * blocks of a format 1 store (no sub-sums) read back, and sub-block reads
 * work for them after a first whole read. Small misses are read on the
 * main thread (pool/inline-misses.ts); one that fails goes to the pool,
 * which reports it as before.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ChecksumError } from '../../common/errors.js';
import { hasher } from '../blocks/hash.js';
import { OFF_HASH_HI, OFF_HASH_LO } from '../blocks/record.js';
import { encodeSubsums, SUB_BLOCK_SIZE, SUBSUMS_FILE } from '../blocks/sub-sums.js';
import { BlockCache } from '../cache/block-cache.js';
import { closeVolumeRig, volumeRig, type VolumeRig } from '../../../test/support/volume-rig.js';
import { Volume, type VolumeIdentity } from './volume.js';

const BS = 64 * 1024;
const SUB = SUB_BLOCK_SIZE;
const identity: VolumeIdentity = {
  id: 7,
  name: 'sub',
  size: 32 * BS,
  blockSize: BS,
  encrypted: false,
};

type Rig = VolumeRig;

/**
 * A 16 MiB store, an 8 MiB cache, one worker; `committed` reopens what an
 * earlier rig committed. Small misses always go inline, so the counts the
 * tests check do not depend on how fast a loaded machine answers.
 */
function rig(dir: string, committed?: Rig['committed']) {
  return volumeRig(dir, {
    blockSize: BS,
    capacityBytes: 16 * 1024 * 1024,
    cacheBytes: 8 * 1024 * 1024,
    workers: 1,
    committed,
    inlineMissesAlways: true,
  });
}

const closeRig = closeVolumeRig;

/** The valid masks of the cache's slots in use. */
function masks(cache: BlockCache): number[] {
  const out: number[] = [];
  for (let slot = 0; slot < cache.slotCount; slot++)
    if (cache.state[slot] !== 0) out.push(cache.validMask(slot));
  return out;
}

async function read(v: Volume, offset: number, length: number): Promise<Buffer> {
  const dest = Buffer.alloc(length);
  await v.read(offset, dest);
  return dest;
}

describe('sub-block reads', { timeout: 60_000 }, () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'torus-subread-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  /** A volume of 8 blocks of random data, committed; reopened with a cold cache. */
  async function written(name: string): Promise<{ dir: string; data: Buffer; r: Rig; v: Volume }> {
    const dir = join(root, name);
    const first = await rig(dir);
    const v0 = await Volume.open(identity, 0, undefined, null, first.services);
    const data = randomBytes(8 * BS);
    await v0.write(0, data, false);
    await v0.close();
    await closeRig(first);
    const r = await rig(dir, first.committed);
    const v = await Volume.open(
      identity,
      first.committed.generation,
      first.committed.root,
      null,
      r.services,
    );
    return { dir, data, r, v };
  }

  test('a cold 4 KiB read loads that 4 KiB; a sequential one the rest of the block', async () => {
    const { data, r, v } = await written('cold');
    assert.ok(
      (await read(v, 3 * BS + 5 * SUB, SUB)).equals(
        data.subarray(3 * BS + 5 * SUB, 3 * BS + 6 * SUB),
      ),
    );
    assert.deepEqual(masks(r.cache), [1 << 5]);
    // Another sub-block of the same block: filled into the same slot.
    assert.ok(
      (await read(v, 3 * BS + 9 * SUB, 100)).equals(
        data.subarray(3 * BS + 9 * SUB, 3 * BS + 9 * SUB + 100),
      ),
    );
    assert.deepEqual(masks(r.cache), [(1 << 5) | (1 << 9)]);
    // Both small misses were read on the main thread, not in a pool task.
    assert.deepEqual(r.pool.inlineMissCounts, { inline: 2, async: 0, remote: 0 });
    // Reading on from where the last read ended: to the block's end in one go.
    assert.ok(
      (await read(v, 3 * BS + 9 * SUB + 100, SUB)).equals(
        data.subarray(3 * BS + 9 * SUB + 100, 3 * BS + 10 * SUB + 100),
      ),
    );
    assert.deepEqual(masks(r.cache), [(1 << 5) | (0xffff & ~0x1ff)]);
    // A read across two blocks, one partly cached.
    assert.ok(
      (await read(v, 3 * BS - SUB, 2 * SUB + 10)).equals(
        data.subarray(3 * BS - SUB, 3 * BS + SUB + 10),
      ),
    );
    // Whole reads still read whole.
    assert.ok((await read(v, 0, 8 * BS)).equals(data));
    assert.ok(masks(r.cache).every((mask) => mask === 0xffff));
    await v.close();
    await closeRig(r);
  });

  test('a fill after two cached sub-blocks reads to the block end; after one, only what it wants', async () => {
    const { data, r, v } = await written('runs');
    const at = (k: number) => 3 * BS + k * SUB;
    const check = async (k: number) =>
      assert.ok(
        (await read(v, at(k), SUB)).equals(data.subarray(at(k), at(k) + SUB)),
        `sub-block ${k}`,
      );
    await check(4);
    await check(9);
    // Sub-block 4 before it, 3 not: a random reader's slot collects such pairs by chance.
    await check(5);
    assert.deepEqual(masks(r.cache), [(1 << 4) | (1 << 5) | (1 << 9)]);
    await check(0); // elsewhere, so the next read does not continue the last one
    // 4 and 5 before it: a reader going through the block, whatever the cursor says.
    await check(6);
    assert.deepEqual(masks(r.cache), [1 | (0xffff & ~0xf)]);
    await v.close();
    await closeRig(r);
  });

  test('a damaged 4 KiB is EIO for reads touching it, not for the rest of its block', async () => {
    const { dir, data, r, v } = await written('damaged');
    const slot = r.store.lookup(identity.id, r.committed.generation, 2)!;
    const file = await open(join(dir, 'data'), 'r+');
    await file.write(
      Buffer.from([0xa5 ^ data[2 * BS + 3 * SUB + 17]]),
      0,
      1,
      slot * BS + 3 * SUB + 17,
    );
    await file.close();
    const errors: number[] = [];
    r.services.onChecksumError = (_volume, block) => errors.push(block);
    await assert.rejects(read(v, 2 * BS + 3 * SUB, SUB), ChecksumError);
    await assert.rejects(read(v, 2 * BS + 2 * SUB + 4000, 200), ChecksumError);
    assert.ok(
      (await read(v, 2 * BS + 4 * SUB, SUB)).equals(
        data.subarray(2 * BS + 4 * SUB, 2 * BS + 5 * SUB),
      ),
    );
    assert.ok((await read(v, 2 * BS, 3 * SUB)).equals(data.subarray(2 * BS, 2 * BS + 3 * SUB)));
    // A read of the whole block touches it too.
    await assert.rejects(read(v, 2 * BS, BS), ChecksumError);
    assert.deepEqual(errors, [2, 2, 2]);
    // The two good small reads were inline; the damaged ones went to the pool, which reported them.
    assert.equal(r.pool.inlineMissCounts.inline, 2);
    await v.close();
    await closeRig(r);
  });

  test('a wrong sub-sums entry costs a whole read, never a false EIO', async () => {
    const { dir, data, r, v } = await written('wrong-entry');
    const slot = r.store.lookup(identity.id, r.committed.generation, 1)!;
    const record = r.store.record(slot);
    // Intact, made for this block's hash, but with the sums of other bytes.
    const hash = await hasher();
    const entry = new Uint8Array(r.store.subsumsEntrySize);
    encodeSubsums(
      entry,
      randomBytes(BS),
      record.getUint32(OFF_HASH_LO, true),
      record.getUint32(OFF_HASH_HI, true),
      hash,
    );
    const table = await open(join(dir, SUBSUMS_FILE), 'r+');
    await table.write(entry, 0, entry.length, slot * entry.length);
    await table.close();
    const errors: number[] = [];
    r.services.onChecksumError = (_volume, block) => errors.push(block);
    assert.ok((await read(v, BS + 6 * SUB, SUB)).equals(data.subarray(BS + 6 * SUB, BS + 7 * SUB)));
    assert.deepEqual(errors, []);
    assert.deepEqual(masks(r.cache), [0xffff]);
    await v.close();
    await closeRig(r);
  });

  test('a write into a partly loaded block keeps the bytes it did not write', async () => {
    const { dir, data, r, v } = await written('write');
    await read(v, 4 * BS + SUB, 10);
    const patch = randomBytes(SUB);
    await v.write(4 * BS + 7 * SUB, patch, false);
    patch.copy(data, 4 * BS + 7 * SUB);
    assert.ok((await read(v, 4 * BS, BS)).equals(data.subarray(4 * BS, 5 * BS)));
    await v.close();
    await closeRig(r);
    const again = await rig(dir, r.committed);
    const reopened = await Volume.open(
      identity,
      r.committed.generation,
      r.committed.root,
      null,
      again.services,
    );
    assert.ok((await read(reopened, 0, 8 * BS)).equals(data));
    await reopened.close();
    await closeRig(again);
  });

  test('a format 1 store reads back; after a whole read its blocks are read in 4 KiB', async () => {
    const { dir, data, r, v } = await written('format1');
    await v.close();
    await closeRig(r);
    // What format 1 code leaves: the same data and slots files, no sub-sums, format 1.
    await rm(join(dir, SUBSUMS_FILE));
    const layout = JSON.parse(await readFile(join(dir, 'store.json'), 'utf8')) as object;
    await writeFile(join(dir, 'store.json'), JSON.stringify({ ...layout, format: 1 }));
    let old = await rig(dir, r.committed);
    let reopened = await Volume.open(
      identity,
      r.committed.generation,
      r.committed.root,
      null,
      old.services,
    );
    // No entry yet: the block is read whole (and checked against its xxh64).
    assert.ok(
      (await read(reopened, 6 * BS + 2 * SUB, SUB)).equals(
        data.subarray(6 * BS + 2 * SUB, 6 * BS + 3 * SUB),
      ),
    );
    assert.deepEqual(masks(old.cache), [0xffff]);
    assert.ok((await read(reopened, 0, 8 * BS)).equals(data));
    await reopened.close();
    await closeRig(old);
    // That whole read wrote the block's entry: a cold 4 KiB read of it now loads 4 KiB.
    old = await rig(dir, r.committed);
    reopened = await Volume.open(
      identity,
      r.committed.generation,
      r.committed.root,
      null,
      old.services,
    );
    assert.ok(
      (await read(reopened, 6 * BS + 2 * SUB, SUB)).equals(
        data.subarray(6 * BS + 2 * SUB, 6 * BS + 3 * SUB),
      ),
    );
    assert.deepEqual(masks(old.cache), [1 << 2]);
    await reopened.close();
    await closeRig(old);
  });
});
