/**
 * InlineMisses over a real store and cache: a small plain miss is read and
 * checked on the calling thread; a damaged one is left to the pool (false,
 * nothing answered); what does not qualify (sealed, whole, too large, no
 * local copy) never is; and a slow disk turns synchronous reads into reads
 * in libuv's pool (one probe in 32 still here), checked the same way.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { hasher } from '../blocks/hash.js';
import { InlineReads } from '../blocks/inline-reads.js';
import { OFF_HASH_HI, OFF_HASH_LO } from '../blocks/record.js';
import { SUB_BLOCK_SIZE } from '../blocks/sub-sums.js';
import { SlotState } from '../cache/block-cache.js';
import { Volume, type VolumeIdentity } from '../volume/volume.js';
import { closeVolumeRig, volumeRig, type VolumeRig } from '../../../test/support/volume-rig.js';
import { INLINE_MISS_SYNC_MS, InlineMisses, type MissRead } from './inline-misses.js';
import { READ_OK } from './tasks.js';

const BS = 64 * 1024;
const SUB = SUB_BLOCK_SIZE;
const identity: VolumeIdentity = {
  id: 5,
  name: 'inl',
  size: 4 * BS,
  blockSize: BS,
  encrypted: false,
};

describe('inline misses', { timeout: 30_000 }, () => {
  let root: string;
  let r: VolumeRig;
  let data: Buffer;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'torus-inline-miss-'));
    r = await volumeRig(join(root, 'store'), {
      blockSize: BS,
      capacityBytes: 4 * 1024 * 1024,
      cacheBytes: 1024 * 1024,
      workers: 1,
    });
    const v = await Volume.open(identity, 0, undefined, null, r.services);
    data = randomBytes(4 * BS);
    await v.write(0, data, false);
    await v.close();
  });
  after(async () => {
    await closeVolumeRig(r);
    await rm(root, { recursive: true, force: true });
  });

  const toWorkers = () => assert.fail('nothing here goes to the workers');
  const setup = () => ({
    cache: r.cache.buffer,
    blockSize: BS,
    records: r.store.records,
    dataPath: r.store.dataPath,
    slotsPath: r.store.slotsPath,
  });

  /**
   * A miss of sub-blocks `mask` of block `index`, into a fresh Loading cache
   * slot when it is to be read (else none: only asked whether it qualifies);
   * what done() got.
   */
  function miss(index: number, mask: number, extra: Partial<MissRead> = {}, toRead = false) {
    const storeSlot = r.store.lookup(identity.id, r.committed.generation, index)!;
    const record = r.store.record(storeSlot);
    const answers: number[] = [];
    const cacheSlot = toRead
      ? r.cache.acquire(
          { evicted: () => undefined, writeBack: () => undefined },
          1000 + index,
          SlotState.Loading,
        )
      : -1;
    const read: MissRead = {
      key: null,
      cacheSlot,
      storeSlot,
      hashLo: record.getUint32(OFF_HASH_LO, true),
      hashHi: record.getUint32(OFF_HASH_HI, true),
      subBlocks: mask,
      done: (status) => answers.push(status),
      ...extra,
    };
    return { read, answers, cacheSlot, storeSlot };
  }

  test('a small plain miss is read and checked here; a damaged one is left to the pool', async () => {
    const inline = new InlineMisses(setup(), await hasher(), toWorkers);
    const good = miss(1, 0b100, {}, true);
    assert.ok(inline.qualifies(good.read));
    assert.ok(inline.read(good.read));
    assert.deepEqual(good.answers, [READ_OK]);
    assert.ok(
      r.cache
        .view(good.cacheSlot)
        .subarray(2 * SUB, 3 * SUB)
        .equals(data.subarray(BS + 2 * SUB, BS + 3 * SUB)),
    );
    const bad = miss(2, 0b1000, {}, true);
    const file = await open(r.store.dataPath, 'r+');
    await file.write(
      Buffer.from([data[2 * BS + 3 * SUB + 9] ^ 0xff]),
      0,
      1,
      bad.storeSlot * BS + 3 * SUB + 9,
    );
    await file.close();
    assert.equal(inline.read(bad.read), false, 'left to the pool, which reports it');
    assert.deepEqual(bad.answers, []);
    assert.equal(inline.inline, 1);
    inline.close();
  });

  test('sealed, whole, larger than 16 KiB or not stored here: never inline', async () => {
    const inline = new InlineMisses(setup(), await hasher(), toWorkers);
    assert.equal(inline.qualifies(miss(0, 1, { key: new Uint8Array(32) }).read), false);
    assert.equal(inline.qualifies(miss(0, r.cache.wholeMask).read), false);
    assert.equal(inline.qualifies(miss(0, 0b11111).read), false, '20 KiB');
    assert.equal(inline.qualifies(miss(0, 1, { storeSlot: -1 }).read), false);
    assert.ok(inline.qualifies(miss(0, 0b1111).read), '16 KiB');
    inline.close();
  });

  test("a slower disk: misses are read in libuv's pool and checked; one in 32 is still read here", async () => {
    const policy = new InlineReads(INLINE_MISS_SYNC_MS);
    let sentToWorkers: (m: MissRead) => void = () => assert.fail('sent to the workers early');
    const inline = new InlineMisses(setup(), await hasher(), (m) => sentToWorkers(m), policy);
    assert.ok(inline.fromMemory);
    assert.ok(inline.synchronously());
    for (let i = 0; i < 32; i++) policy.took(INLINE_MISS_SYNC_MS * 4);
    assert.equal(inline.fromMemory, false, 'a disk, not memory');
    let here = 0;
    for (let i = 0; i < 64; i++) if (inline.synchronously()) here++;
    assert.equal(here, 2, 'one probe in 32');

    // Two sub-blocks of block 1: answered once their pread is back, and right.
    const good = miss(1, 0b0110, {}, true);
    assert.ok(inline.qualifies(good.read));
    const answered = new Promise<number>((resolve) => (good.read.done = resolve));
    assert.ok(inline.start(good.read));
    assert.equal(await answered, READ_OK);
    assert.ok(
      r.cache
        .view(good.cacheSlot)
        .subarray(SUB, 3 * SUB)
        .equals(data.subarray(BS + SUB, BS + 3 * SUB)),
    );
    assert.equal(inline.async, 1);

    // Block 2's sub-block 3 was damaged by the first test: the workers get it, unanswered.
    const bad = miss(2, 0b1000, {}, true);
    const toWorkers = new Promise<MissRead>((resolve) => (sentToWorkers = resolve));
    assert.ok(inline.start(bad.read));
    assert.equal(await toWorkers, bad.read);
    assert.deepEqual(bad.answers, []);
    assert.equal(inline.async, 1);
    inline.close();
  });
});
