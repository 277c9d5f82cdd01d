/**
 * Patches in the slot store (patches.ts, slot-store.ts): a base outlives
 * every version that names it while a patch over it is stored (held), and
 * goes with its last patch; a pin a failed write never used frees a held
 * base; patches find their bases again at open from their records; the
 * record helpers and run splitting byte for byte.
 */
import assert from 'node:assert/strict';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { InvariantError } from '../../common/assert.js';
import { hasher } from './hash.js';
import {
  fillPatchFields,
  forEachSourceRun,
  isPatchRecord,
  patchBaseOf,
  patchPresent,
  subBlockCount,
  wantedRunEnd,
} from './patches.js';
import { RECORD_PATCH, RECORD_SIZE, fillRecord } from './record.js';
import { LocalSlotStore } from './slot-store.js';

const BS = 64 * 1024;

test('runs by source: one run per stretch of sub-blocks from the patch or from its base', () => {
  const runs: string[] = [];
  forEachSourceRun(0b0110_0001, 16, (first, end, inPatch) =>
    runs.push(`${first}-${end}${inPatch ? 'p' : 'b'}`),
  );
  assert.deepEqual(runs, ['0-1p', '1-5b', '5-7p', '7-16b']);
  const all: string[] = [];
  forEachSourceRun(0xffff_ffff, 32, (first, end, inPatch) => all.push(`${first}-${end}${inPatch}`));
  assert.deepEqual(all, ['0-32true']);
  assert.equal(subBlockCount(0), 0);
  assert.equal(subBlockCount(0b1011), 3);
  assert.equal(subBlockCount(0xffff_ffff), 32);
});

test('a run of wanted sub-blocks ends where one is not wanted or comes from the other place', () => {
  // Wanted 1–6; the patch holds 3–4 and 6, the base the rest.
  const wanted = 0b111_1110;
  const present = 0b101_1000;
  const runs: number[][] = [];
  for (let first = 0; first < 32; first++) {
    if ((wanted & (1 << first)) === 0) continue;
    const end = wantedRunEnd(wanted, present, first);
    runs.push([first, end]);
    first = end - 1;
  }
  assert.deepEqual(runs, [
    [1, 3],
    [3, 5],
    [5, 6],
    [6, 7],
  ]);
  assert.equal(wantedRunEnd(0xffff_ffff, 0xffff_ffff, 0), 32, 'a whole mask is one run to the end');
  assert.equal(wantedRunEnd(0b1, 0, 0), 1);
});

test('a patch record: flag, base and present mask where record.ts says', () => {
  const records = new Uint8Array(3 * RECORD_SIZE);
  const record = new DataView(records.buffer, RECORD_SIZE, RECORD_SIZE);
  fillRecord(record, { volumeId: 5, generation: 9, index: 3 }, RECORD_PATCH, 1, 2);
  fillPatchFields(record, { volumeId: 4, generation: 7 }, 0x8001);
  assert.ok(isPatchRecord(records, 1));
  assert.equal(isPatchRecord(records, 0), false);
  assert.deepEqual(patchBaseOf(records, 1), { volumeId: 4, generation: 7 });
  assert.equal(patchPresent(records, 1), 0x8001);
  // Bytes 32..43 of the record (the nonce's place): base volume, base generation, present, little-endian.
  assert.deepEqual(
    [...records.subarray(RECORD_SIZE + 32, RECORD_SIZE + 44)],
    [4, 0, 0, 0, 7, 0, 0, 0, 0x01, 0x80, 0, 0],
  );
});

describe('patches in the slot store', { timeout: 30_000 }, () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'torus-patch-store-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  const baseRef = { volumeId: 1, generation: 1, index: 6 };
  const patchRef = (generation: number) => ({ volumeId: 1, generation, index: 6 });

  /** A store with a whole block at baseRef; returns its slot. */
  async function withBase(name: string) {
    const dir = join(root, name);
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 32 * BS });
    const store = await LocalSlotStore.open(dir);
    const base = store.allocate();
    await store.writeBlock(base, baseRef, Buffer.alloc(BS, 1), 0);
    return { dir, store, base };
  }

  /** Bind a patch over `base` as the volume does: pin, allocate, (a worker writes it), bind. */
  function bindPatch(store: LocalSlotStore, base: number, generation: number): number {
    store.pinBase(base);
    const slot = store.allocate();
    store.bind(slot, patchRef(generation), base);
    return slot;
  }

  test('a released base is held while a patch over it is stored, and freed with the last one', async () => {
    const { store, base } = await withBase('held');
    const free = store.freeSlots;
    const first = bindPatch(store, base, 2);
    bindPatch(store, base, 3);
    assert.equal(store.baseOf(first), base);
    assert.equal(store.baseOf(base), -1);
    assert.equal(store.patchSlots, 2);
    store.release(baseRef);
    assert.equal(store.heldSlots, 1);
    assert.equal(store.lookup(1, 1, 6), undefined, 'no version can find a held base');
    assert.equal([...store.blocks()].length, 2, 'nor GC or scrub');
    store.release(patchRef(2));
    await store.whenReleased();
    assert.equal(store.heldSlots, 1, 'one patch is left');
    assert.equal(store.patchSlots, 1);
    store.release(patchRef(3));
    await store.whenReleased();
    assert.equal(store.heldSlots, 0);
    assert.equal(store.patchSlots, 0);
    assert.equal(store.freeSlots, free + 1, 'base and both patches free');
    await store.close();
  });

  test('a pin no patch took frees a held base; pinning a slot that holds nothing is a bug', async () => {
    const { store, base } = await withBase('pins');
    const free = store.freeSlots;
    store.pinBase(base);
    store.release(baseRef);
    assert.equal(store.heldSlots, 1);
    store.unpinBase(base); // the patch's write failed
    await store.whenReleased();
    assert.equal(store.heldSlots, 0);
    assert.equal(store.freeSlots, free + 1);
    assert.throws(() => store.pinBase(base), InvariantError);
    assert.throws(() => store.unpinBase(base), InvariantError);
    await store.close();
  });

  test('replacing a spilled patch of a version keeps the base pinned by the new one', async () => {
    const { store, base } = await withBase('respill');
    bindPatch(store, base, 2);
    const again = bindPatch(store, base, 2); // the same block spilled again for the same version
    assert.equal(store.lookup(1, 2, 6), again);
    await store.whenReleased();
    store.release(baseRef);
    assert.equal(store.heldSlots, 1, 'the new patch holds it');
    store.release(patchRef(2));
    await store.whenReleased();
    assert.equal(store.heldSlots, 0);
    await store.close();
  });

  test('at open a patch finds its base from its record; one whose base is gone is counted', async () => {
    const { dir, store, base } = await withBase('reopen');
    const hash = await hasher();
    // Records as a worker writes them (patch-write.ts); only records matter here.
    const writePatchRecord = (slot: number, generation: number, baseGeneration: number) => {
      const record = store.record(slot);
      fillRecord(record, patchRef(generation), RECORD_PATCH, 0, 0);
      fillPatchFields(record, { volumeId: 1, generation: baseGeneration }, 1);
      hash.stampRecord(record);
    };
    store.pinBase(base);
    const patch = store.allocate();
    writePatchRecord(patch, 2, 1);
    store.bind(patch, patchRef(2), base);
    const orphan = store.allocate();
    writePatchRecord(orphan, 3, 99);
    store.bind(orphan, { volumeId: 1, generation: 3, index: 6 });
    // The in-memory records out to the table, as a worker's record writes put them.
    const slots = await open(join(dir, 'slots'), 'r+');
    await slots.write(new Uint8Array(store.records), 0, store.slotCount * RECORD_SIZE, 0);
    await slots.close();
    await store.close();
    const reopened = await LocalSlotStore.open(dir);
    assert.equal(reopened.baseOf(reopened.lookup(1, 2, 6)!), base);
    assert.ok(reopened.isPatch(reopened.lookup(1, 2, 6)!));
    assert.equal(reopened.patchesWithoutBase, 1);
    // The base is bound again (open knows no versions); released, it is held by its patch.
    reopened.release(baseRef);
    assert.equal(reopened.heldSlots, 1);
    await reopened.close();
  });
});
