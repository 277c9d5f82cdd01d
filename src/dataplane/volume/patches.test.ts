/**
 * Patches over the real store, cache and pool (blocks/patches.ts): a 4 KiB
 * write into a stored block is written back as that 4 KiB over the old
 * block, reads back after a commit and a restart (whole and by sub-block),
 * replaces an older patch keeping its sub-blocks, and lets its base go only
 * with its last patch; a block written in more than half, a missing
 * sub-sums entry, a store short of room and an encrypted volume get whole
 * blocks; a damaged patch
 * or base is an error, never data, read whole or in part. A patch read
 * whole is checked by its tree hash and leaves its entry as it was (it
 * used to be rewritten by every such read).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ChecksumError } from '../../common/errors.js';
import { OFF_HASH_HI, OFF_HASH_LO } from '../blocks/record.js';
import { SUB_BLOCK_SIZE, SUBSUMS_FILE } from '../blocks/sub-sums.js';
import { closeVolumeRig, volumeRig, type VolumeRig } from '../../../test/support/volume-rig.js';
import { PATCH_MIN_FREE_SHARE } from './patch-plan.js';
import { Volume, type VolumeIdentity, type VolumeServices } from './volume.js';

const BS = 64 * 1024;
const SUB = SUB_BLOCK_SIZE;
const BLOCKS = 8;
const identity: VolumeIdentity = {
  id: 9,
  name: 'patched',
  size: BLOCKS * BS,
  blockSize: BS,
  encrypted: false,
};

function rig(dir: string, committed?: VolumeRig['committed']) {
  return volumeRig(dir, {
    blockSize: BS,
    capacityBytes: 16 * 1024 * 1024,
    cacheBytes: 8 * 1024 * 1024,
    workers: 1,
    committed,
  });
}

/** The slot holding block `index` of the committed version, and whether it is a patch. */
function stored(r: VolumeRig, v: Volume, index: number) {
  const entry = v.committedMap.lookup(index)!;
  const slot = r.store.lookup(identity.id, entry.generation, index)!;
  assert.notEqual(slot, undefined, `block ${index} is stored`);
  return {
    slot,
    patch: r.store.isPatch(slot),
    present: r.store.presentOf(slot),
    base: r.store.baseOf(slot),
  };
}

async function readAll(v: Volume): Promise<Buffer> {
  const back = Buffer.alloc(BLOCKS * BS);
  await v.read(0, back);
  return back;
}

describe('patches', { timeout: 60_000 }, () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'torus-patches-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  /** A volume of random blocks, committed, reopened with a cold cache; `expected` follows every write made through `put`. */
  async function storedVolume(
    name: string,
    key: Uint8Array | null = null,
    services: Partial<VolumeServices> = {},
  ) {
    const dir = join(root, name);
    let r = await rig(dir);
    Object.assign(r.services, services);
    const named = key ? { ...identity, encrypted: true } : identity;
    const writer = await Volume.open(named, 0, undefined, key, r.services);
    const expected = randomBytes(BLOCKS * BS);
    await writer.write(0, expected, false);
    await writer.close();
    let v = await Volume.open(named, r.committed.generation, r.committed.root, key, r.services);
    const put = async (offset: number, length: number) => {
      const bytes = randomBytes(length);
      bytes.copy(expected, offset);
      await v.write(offset, bytes, false);
    };
    const close = async () => {
      await v.close();
      await closeVolumeRig(r);
    };
    /** Close everything and open it again from disk: a restart. */
    const restart = async () => {
      await close();
      r = await rig(dir, r.committed);
      Object.assign(r.services, services);
      v = await Volume.open(named, r.committed.generation, r.committed.root, key, r.services);
    };
    return {
      dir,
      expected,
      put,
      restart,
      close,
      get r() {
        return r;
      },
      get v() {
        return v;
      },
    };
  }

  test('a 4 KiB write is stored as that 4 KiB over the old block, and reads back after a restart', async () => {
    const t = await storedVolume('basic');
    const before = stored(t.r, t.v, 1);
    assert.equal(before.patch, false);
    await t.put(BS + 2 * SUB, SUB);
    await t.put(3 * BS + 15 * SUB, SUB);
    await t.put(5 * BS, 2 * SUB);
    await t.v.commit();
    const one = stored(t.r, t.v, 1);
    assert.ok(one.patch, 'block 1 is a patch');
    assert.equal(one.present, 1 << 2);
    assert.equal(one.base, before.slot, 'over the block it replaced');
    assert.equal(stored(t.r, t.v, 3).present, 1 << 15);
    assert.equal(stored(t.r, t.v, 5).present, 0b11);
    assert.equal(t.r.store.heldSlots, 3, 'the three old blocks are kept as bases');
    assert.ok((await readAll(t.v)).equals(t.expected), 'read back from the cache');

    await t.restart();
    const again = stored(t.r, t.v, 1);
    assert.equal(again.base, before.slot, 'the base found again from the records');
    // Sub-block reads, from the patch's own slot and from its base's, cold.
    const part = Buffer.alloc(2 * SUB);
    await t.v.read(BS + 2 * SUB, part);
    assert.ok(part.equals(t.expected.subarray(BS + 2 * SUB, BS + 4 * SUB)));
    await t.v.read(5 * BS + SUB, part);
    assert.ok(part.equals(t.expected.subarray(5 * BS + SUB, 5 * BS + 3 * SUB)));
    assert.ok((await readAll(t.v)).equals(t.expected), 'whole blocks read back after a restart');
    // The store's own reader (scrub, fsck) checks a patch by its tree hash.
    const record = t.r.store.record(again.slot);
    const buffer = Buffer.alloc(BS);
    assert.deepEqual(await t.r.store.readBlock(again.slot, buffer), {
      lo: record.getUint32(OFF_HASH_LO, true),
      hi: record.getUint32(OFF_HASH_HI, true),
    });
    assert.ok(buffer.equals(t.expected.subarray(BS, 2 * BS)));
    await t.close();
  });

  test("a patch over a patch takes the older one's sub-blocks and base; a whole write frees both", async () => {
    const t = await storedVolume('layers');
    const original = stored(t.r, t.v, 2).slot;
    await t.put(2 * BS + 4 * SUB, SUB);
    await t.v.commit();
    const first = stored(t.r, t.v, 2);
    await t.restart(); // cold: the older patch's sub-block comes from the store
    // Open finds the base as any block; the node's start-up GC releases it (no map names it): held.
    t.r.store.release(t.r.store.refOf(original));
    assert.equal(t.r.store.heldSlots, 1);
    await t.put(2 * BS + 9 * SUB, SUB);
    await t.v.commit();
    const second = stored(t.r, t.v, 2);
    assert.ok(second.patch);
    assert.equal(second.present, (1 << 4) | (1 << 9));
    assert.equal(second.base, original, 'the same base, not the older patch');
    assert.notEqual(second.slot, first.slot);
    assert.ok((await readAll(t.v)).equals(t.expected));
    await t.r.store.whenReleased(); // freeSlots leaves out a release batch being written
    const free = t.r.store.freeSlots;
    await t.put(2 * BS, BS);
    await t.v.commit();
    await t.r.store.whenReleased();
    assert.equal(stored(t.r, t.v, 2).patch, false);
    // The patch and its base go; one whole block comes.
    assert.equal(t.r.store.freeSlots, free + 1, 'patch and base freed, one slot taken');
    await t.restart();
    assert.ok((await readAll(t.v)).equals(t.expected));
    await t.close();
  });

  test('a patch not yet committed is written into in place: only the new sub-blocks', async () => {
    const t = await storedVolume('in-place');
    const original = stored(t.r, t.v, 4).slot;
    const next = () => t.r.store.lookup(identity.id, t.r.committed.generation + 1, 4);
    /** Spill (store for the next version, no commit) what is dirty. */
    const spill = async () => {
      t.v.writeBack();
      while (t.v.dirtyBlocks > 0 || next() === undefined) await sleep(5);
      await sleep(20); // the round's bookkeeping after its last block
    };
    await t.put(4 * BS + 1 * SUB, SUB);
    await spill();
    const spilled = next()!;
    assert.ok(t.r.store.isPatch(spilled));
    // Written again before any commit, in more than half of the block all told.
    for (const k of [3, 5, 7, 9, 11, 13, 15]) await t.put(4 * BS + k * SUB, SUB);
    await spill();
    assert.equal(next(), spilled, 'the same slot');
    await t.v.commit();
    const now = stored(t.r, t.v, 4);
    assert.equal(now.slot, spilled);
    assert.equal(now.present, 0b1010_1010_1010_1010);
    assert.equal(now.base, original);
    assert.ok((await readAll(t.v)).equals(t.expected));
    await t.restart();
    assert.ok((await readAll(t.v)).equals(t.expected), 'after a restart');

    // A whole block of the version being written, written into: a patch of every sub-block, no base.
    const six = () => t.r.store.lookup(identity.id, t.r.committed.generation + 1, 6);
    await t.put(6 * BS, BS);
    t.v.writeBack();
    while (t.v.dirtyBlocks > 0 || six() === undefined) await sleep(5);
    await sleep(20);
    const whole = six()!;
    assert.equal(t.r.store.isPatch(whole), false);
    // Evicted from the cache, as the cache's sweep would once it is clean.
    const { cache } = t.r;
    const block6 = t.expected.subarray(6 * BS, 7 * BS);
    let cached = -1;
    for (let slot = 0; slot < cache.slotCount; slot++)
      if (cache.state[slot] !== 0 && cache.view(slot).equals(block6)) cached = slot;
    assert.ok(cached >= 0);
    t.v.evicted(6, cached);
    cache.free(cached);
    await t.put(6 * BS + 8 * SUB, SUB);
    await t.v.commit();
    const wholePatch = stored(t.r, t.v, 6);
    assert.equal(wholePatch.slot, whole, 'written in place');
    assert.ok(wholePatch.patch);
    assert.equal(wholePatch.present, 0xffff);
    assert.equal(wholePatch.base, -1);
    await t.restart();
    assert.ok((await readAll(t.v)).equals(t.expected), 'a whole patch reads back after a restart');
    // And it is a base like any whole block (once out of the cache again).
    await t.restart();
    await t.put(6 * BS + 3 * SUB, SUB);
    await t.v.commit();
    const over = stored(t.r, t.v, 6);
    assert.equal(over.base, whole);
    assert.equal(over.present, 1 << 3);
    await t.restart();
    assert.ok((await readAll(t.v)).equals(t.expected));
    await t.close();
  });

  test("writes into more than half a block, or with the base's sub-sums lost, are stored whole", async () => {
    const t = await storedVolume('whole');
    await t.put(0, 9 * SUB);
    await t.v.commit();
    assert.equal(stored(t.r, t.v, 0).patch, false, 'more than half: whole');
    // Lose every sub-sums entry (a crash may; they are never synced): the patch is refused, the block completed.
    await t.restart();
    await truncate(join(t.dir, SUBSUMS_FILE), 0);
    await t.put(BS + 3 * SUB, SUB);
    await t.v.commit();
    assert.equal(stored(t.r, t.v, 1).patch, false, 'no entry for the base: whole');
    assert.ok((await readAll(t.v)).equals(t.expected));
    await t.close();
  });

  test('a store short of room gets whole blocks, which free the patches and bases they replace', async () => {
    const t = await storedVolume('short');
    await t.put(BS + 2 * SUB, SUB);
    await t.v.commit();
    assert.equal(stored(t.r, t.v, 1).patch, true, 'room enough: a patch');
    assert.equal(t.r.store.heldSlots, 1);
    // Take slots until less than an eighth of the store is free.
    const taken: number[] = [];
    while (t.r.store.freeSlots >= t.r.store.slotCount * PATCH_MIN_FREE_SHARE)
      taken.push(t.r.store.allocate('map-page'));
    await t.put(3 * BS + 5 * SUB, SUB);
    await t.put(BS + 7 * SUB, SUB);
    await t.v.commit();
    assert.equal(stored(t.r, t.v, 3).patch, false, 'short of room: whole');
    assert.equal(stored(t.r, t.v, 1).patch, false, 'a patch written again: whole');
    await t.r.store.whenReleased();
    assert.equal(t.r.store.heldSlots, 0, "the replaced patch's base is freed with it");
    assert.ok((await readAll(t.v)).equals(t.expected));
    for (const slot of taken) t.r.store.unallocate(slot);
    await t.close();
  });

  test('an encrypted volume stores whole blocks', async () => {
    const t = await storedVolume('sealed', randomBytes(32));
    await t.put(BS + 2 * SUB, SUB);
    await t.v.commit();
    assert.equal(stored(t.r, t.v, 1).patch, false);
    await t.restart();
    assert.ok((await readAll(t.v)).equals(t.expected));
    await t.close();
  });

  test('reads and writes of a block while its patch is being stored see every write', async () => {
    const t = await storedVolume('racing');
    await t.put(BS + 2 * SUB, SUB);
    // Hold the pool's writes back, so the patch's cache slot stays Flushing a while.
    const pool = t.r.services.pool;
    const writeBlocks = pool.writeBlocks.bind(pool);
    pool.writeBlocks = async (...args) => {
      await sleep(100);
      return writeBlocks(...args);
    };
    const committing = t.v.commit();
    await sleep(20);
    const sub = Buffer.alloc(SUB);
    const reading = t.v.read(BS + 5 * SUB, sub); // a sub-block the Flushing slot lacks: waits
    await t.put(BS + 7 * SUB, SUB); // whole sub-block: into a copy of the slot
    await t.put(BS + 9 * SUB + 100, 10); // part of one: the rest is read first
    await reading;
    assert.ok(sub.equals(t.expected.subarray(BS + 5 * SUB, BS + 6 * SUB)));
    await committing;
    pool.writeBlocks = writeBlocks;
    assert.ok((await readAll(t.v)).equals(t.expected), 'from the cache');
    await t.v.commit();
    await t.restart();
    assert.ok((await readAll(t.v)).equals(t.expected), 'after a restart');
    await t.close();
  });

  test('a damaged sub-block of a patch or of its base is an error for the reads that touch it', async () => {
    const t = await storedVolume('damaged');
    await t.put(BS + 2 * SUB, SUB);
    await t.v.commit();
    const { slot, base } = stored(t.r, t.v, 1);
    await t.v.close();
    const data = await open(join(t.dir, 'data'), 'r+');
    await data.write(Buffer.from('rot'), 0, 3, slot * BS + 2 * SUB + 100);
    await data.write(Buffer.from('rot'), 0, 3, base * BS + 7 * SUB + 100);
    await data.close();
    await t.restart();
    const sub = Buffer.alloc(SUB);
    await assert.rejects(t.v.read(BS + 2 * SUB, sub), ChecksumError);
    await assert.rejects(t.v.read(BS + 7 * SUB, sub), ChecksumError);
    await t.v.read(BS + 3 * SUB, sub);
    assert.ok(sub.equals(t.expected.subarray(BS + 3 * SUB, BS + 4 * SUB)), 'the rest still reads');
    await t.restart();
    await assert.rejects(t.v.read(BS, Buffer.alloc(BS)), ChecksumError, 'read whole, too');
    await t.close();
  });

  test('a patch read whole reads back right and leaves its sub-sums entry as it was', async () => {
    const t = await storedVolume('whole');
    await t.put(BS + 5 * SUB, SUB);
    await t.put(3 * BS + 15 * SUB, SUB);
    await t.v.commit();
    assert.equal(stored(t.r, t.v, 1).patch, true);
    await t.restart();
    const sums = join(t.dir, SUBSUMS_FILE);
    const before = { bytes: await readFile(sums), mtime: (await stat(sums)).mtimeMs };
    const back = await readAll(t.v);
    assert.ok(back.equals(t.expected), 'every block, patched or not, reads back');
    assert.ok((await readFile(sums)).equals(before.bytes));
    assert.equal((await stat(sums)).mtimeMs, before.mtime, 'nothing was written to the sub-sums');
    await t.close();
  });

  test('patches folded into whole blocks free their slots and their bases, and read the same', async () => {
    const t = await storedVolume('fold');
    await t.put(BS + 2 * SUB, SUB);
    await t.put(3 * BS + 15 * SUB, SUB);
    await t.put(5 * BS, 2 * SUB);
    await t.v.commit();
    assert.equal(t.r.store.patchSlots, 3);
    assert.equal(t.r.store.heldSlots, 3);
    await t.r.store.whenReleased();
    const free = t.r.store.freeSlots;
    // The patches' cache slots hold only what was written: the fold reads the rest from the store.
    // Blocks 2 and 4, whole, lie between patches: they are rewritten too, so 1..5 land as one run.
    assert.equal(await t.v.foldPatches(), 5);
    await t.r.store.whenReleased();
    const slots = [1, 2, 3, 4, 5].map((index) => stored(t.r, t.v, index));
    assert.deepEqual(
      slots.map((s) => s.patch),
      [false, false, false, false, false],
    );
    assert.deepEqual(
      slots.map((s) => s.slot - slots[0].slot),
      [0, 1, 2, 3, 4],
      'consecutive slots, in index order',
    );
    assert.equal(t.r.store.patchSlots, 0);
    assert.equal(t.r.store.heldSlots, 0, 'the bases went with their patches');
    assert.equal(
      t.r.store.freeSlots,
      free + 3,
      'eight slots freed (3 patches, 3 bases, 2 whole), five taken',
    );
    assert.ok((await readAll(t.v)).equals(t.expected), 'from the cache');
    assert.equal(await t.v.foldPatches(), 0, 'nothing left to fold');
    await t.restart();
    assert.equal(t.r.store.patchSlots, 0);
    assert.ok((await readAll(t.v)).equals(t.expected), 'after a restart');
    await t.close();
  });

  test('a quiet volume folds its patches on its own; a busy one waits', async () => {
    const t = await storedVolume('quiet', null, { foldQuietMs: 300 });
    await t.put(2 * BS + 6 * SUB, SUB);
    await t.v.commit();
    assert.equal(t.r.store.patchSlots, 1);
    const sub = Buffer.alloc(SUB);
    for (let i = 0; i < 20; i++) {
      await t.v.read(7 * BS, sub); // a request every 50 ms: never quiet for 300
      await sleep(50);
    }
    assert.equal(t.r.store.patchSlots, 1, 'not folded while requests come');
    const deadline = Date.now() + 10_000;
    while (t.r.store.patchSlots > 0 && Date.now() < deadline) await sleep(50);
    assert.equal(t.r.store.patchSlots, 0, 'folded once quiet');
    assert.equal(stored(t.r, t.v, 2).patch, false);
    await t.restart();
    assert.ok((await readAll(t.v)).equals(t.expected));
    await t.close();
  });

  test('4 KiB writes still in the cache when the volume goes quiet are committed as patches, then folded', async () => {
    let folded = 0;
    const t = await storedVolume('quiet-cached', null, {
      foldQuietMs: 300,
      onFold: (_volume, blocks) => (folded += blocks),
    });
    const generation = t.v.committedGeneration;
    await t.put(3 * BS + 9 * SUB, SUB); // no commit: a dirty slot holding one sub-block
    assert.equal(t.r.store.patchSlots, 0);
    const deadline = Date.now() + 10_000;
    while (folded === 0 && Date.now() < deadline) await sleep(50);
    assert.equal(folded, 1, 'committed as a patch, then folded');
    assert.equal(t.v.committedGeneration, generation + 2);
    assert.equal(stored(t.r, t.v, 3).patch, false);
    assert.equal(t.r.store.patchSlots, 0);
    await t.restart();
    assert.ok((await readAll(t.v)).equals(t.expected));
    await t.close();
  });

  test('patches a snapshot holds are not folded: the fold would only add slots', async () => {
    const t = await storedVolume('held');
    const commit = t.r.services.commit;
    // As a node's commit says when a snapshot holds every generation so far.
    t.r.services.commit = async (identity, generation, ...rest) => {
      await commit(identity, generation, ...rest);
      return generation;
    };
    await t.put(4 * BS + 3 * SUB, SUB);
    await t.v.commit();
    assert.equal(t.r.store.patchSlots, 1);
    assert.equal(await t.v.foldPatches(), 0);
    assert.equal(stored(t.r, t.v, 4).patch, true);
    await t.close();
  });

  test('reads and writes while patches are folded see every write', async () => {
    const t = await storedVolume('fold-racing');
    for (let index = 0; index < BLOCKS; index++) await t.put(index * BS + index * SUB, SUB);
    await t.v.commit();
    await t.restart(); // a cold cache: the fold and the reads below both load from the store
    await t.put(6 * BS + 12 * SUB, SUB); // a commit here, so the fold knows what is held
    await t.v.commit();
    assert.equal(t.r.store.patchSlots, BLOCKS);
    const folding = t.v.foldPatches();
    const reading = readAll(t.v);
    await t.put(3 * BS + 9 * SUB, SUB); // into a block the fold may have loaded: not folded then
    await t.put(BS + 100, 50); // part of a sub-block: loaded first
    const back = await reading;
    await folding;
    // What the read saw is what was there before the two writes, or after.
    for (let index = 0; index < BLOCKS; index++) {
      if (index === 1 || index === 3) continue;
      assert.ok(
        back
          .subarray(index * BS, (index + 1) * BS)
          .equals(t.expected.subarray(index * BS, (index + 1) * BS)),
      );
    }
    assert.ok((await readAll(t.v)).equals(t.expected), 'every write after the fold');
    await t.v.commit();
    await t.restart();
    assert.ok((await readAll(t.v)).equals(t.expected), 'after a restart');
    assert.ok(t.r.store.patchSlots <= 2, 'all but the blocks written meanwhile folded');
    await t.close();
  });
});
