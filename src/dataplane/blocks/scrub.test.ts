/**
 * Scrubber over a real LocalSlotStore whose data file is damaged on disk
 * behind its back: the bad copy is found, rewritten from a good copy when
 * one can be fetched (and the store then reads right), counted and left in
 * place when none can; good blocks are never called bad.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { IoError } from '../../common/errors.js';
import { quietLogger } from '../../../test/support/peer-helpers.js';
import { MAP_PAGE_BIT, type BlockRef } from '../../model/block-ref.js';
import { Scrubber } from './scrub.js';
import { LocalSlotStore } from './slot-store.js';

const BS = 4096;

describe('Scrubber', { timeout: 30_000 }, () => {
  let root: string;
  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'torus-scrub-'));
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  async function storeWithBlocks(name: string, count: number) {
    const dir = join(root, name);
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 64 * BS });
    const store = await LocalSlotStore.open(dir);
    const blocks = new Map<number, { ref: BlockRef; bytes: Buffer }>();
    for (let i = 0; i < count; i++) {
      const ref = { volumeId: 7, generation: 1, index: i === count - 1 ? MAP_PAGE_BIT + 1 : i };
      const bytes = randomBytes(BS);
      const slot = store.allocate();
      await store.writeBlock(slot, ref, bytes, 0);
      blocks.set(slot, { ref, bytes });
    }
    await store.sync();
    return { store, blocks };
  }

  /** Flip bytes of a slot on disk, as rot or a stray write would. */
  async function damage(store: LocalSlotStore, slot: number): Promise<void> {
    const file = await open(store.dataPath, 'r+');
    try {
      await file.write(Buffer.from('rotten bytes'), 0, 12, slot * BS + 100);
    } finally {
      await file.close();
    }
  }

  test('finds a damaged copy and rewrites it from a good one; good copies pass', async () => {
    const { store, blocks } = await storeWithBlocks('repair', 10);
    try {
      const [badSlot, { ref, bytes }] = [...blocks][3];
      await damage(store, badSlot);
      const fetched: string[] = [];
      const scrubber = new Scrubber({
        store,
        rateBytesPerSecond: 100 * 2 ** 20,
        intervalMs: 0,
        log: quietLogger(),
        async fetchGood(want, _lo, _hi, dest) {
          fetched.push(`${want.volumeId}/${want.generation}/${want.index}`);
          dest.set(blocks.get([...blocks].find(([, b]) => b.ref.index === want.index)![0])!.bytes);
        },
      });
      await scrubber.scrubNow();
      assert.deepEqual(fetched, [`7/1/${ref.index}`], 'only the damaged block is fetched');
      assert.deepEqual(
        {
          bad: scrubber.stats.bad,
          repaired: scrubber.stats.repaired,
          unrepaired: scrubber.stats.unrepaired,
          passes: scrubber.stats.passes,
        },
        { bad: 1, repaired: 1, unrepaired: 0, passes: 1 },
      );
      // Every block, and the rewritten copy again if its fresh slot came later in the pass.
      const firstPass = scrubber.stats.checked;
      assert.ok(firstPass === 10 || firstPass === 11, `checked ${firstPass}`);
      const now = store.lookup(ref.volumeId, ref.generation, ref.index)!;
      assert.notEqual(now, badSlot, 'rewritten to a fresh slot; the bad one released');
      const back = new Uint8Array(BS);
      await store.readBlock(now, back);
      assert.ok(Buffer.from(back).equals(bytes), 'the store reads the good bytes');
      await scrubber.scrubNow();
      assert.equal(scrubber.stats.bad, 1, 'a second pass finds nothing more');
      assert.equal(scrubber.stats.checked - firstPass, 10);
      await scrubber.close();
    } finally {
      await store.close();
    }
  });

  test('with no good copy to be had, the bad copy is counted and left in place', async () => {
    const { store, blocks } = await storeWithBlocks('alone', 4);
    try {
      const [badSlot, { ref }] = [...blocks][0];
      await damage(store, badSlot);
      const single = new Scrubber({
        store,
        rateBytesPerSecond: 100 * 2 ** 20,
        intervalMs: 0,
        log: quietLogger(),
      });
      await single.scrubNow();
      assert.deepEqual(
        [single.stats.bad, single.stats.repaired, single.stats.unrepaired],
        [1, 0, 1],
      );
      const unreachable = new Scrubber({
        store,
        rateBytesPerSecond: 100 * 2 ** 20,
        intervalMs: 0,
        log: quietLogger(),
        fetchGood: async () => {
          throw new IoError('EIO', 'no good copy on any replica');
        },
      });
      await unreachable.scrubNow();
      assert.deepEqual(
        [unreachable.stats.bad, unreachable.stats.repaired, unreachable.stats.unrepaired],
        [1, 0, 1],
      );
      assert.equal(
        store.lookup(ref.volumeId, ref.generation, ref.index),
        badSlot,
        'still there for a later pass',
      );
    } finally {
      await store.close();
    }
  });

  test('an unreadable copy (EIO from the disk) counts as bad and is rewritten, and the pass goes on', async () => {
    const { store, blocks } = await storeWithBlocks('eio', 6);
    try {
      const [badSlot, { ref, bytes }] = [...blocks][1];
      const readBlock = store.readBlock.bind(store);
      store.readBlock = async (slot, dest) => {
        if (slot === badSlot) throw new IoError('EIO', 'read of a bad sector');
        return readBlock(slot, dest);
      };
      const scrubber = new Scrubber({
        store,
        rateBytesPerSecond: 100 * 2 ** 20,
        intervalMs: 0,
        log: quietLogger(),
        fetchGood: async (_ref, _lo, _hi, dest) => dest.set(bytes),
      });
      await scrubber.scrubNow();
      assert.deepEqual(
        [scrubber.stats.bad, scrubber.stats.repaired, scrubber.stats.passes],
        [1, 1, 1],
      );
      assert.ok(scrubber.stats.checked >= 6, 'every block of the pass was looked at');
      assert.notEqual(
        store.lookup(ref.volumeId, ref.generation, ref.index),
        badSlot,
        'moved off the unreadable slot',
      );
    } finally {
      await store.close();
    }
  });

  test('a pass keeps to its rate, and close() ends it', async () => {
    const { store } = await storeWithBlocks('paced', 8);
    try {
      // 8 blocks at 4 blocks a second: about 1.75 s (the first block is free).
      const scrubber = new Scrubber({
        store,
        rateBytesPerSecond: 4 * BS,
        intervalMs: 0,
        log: quietLogger(),
      });
      const started = performance.now();
      const pass = scrubber.scrubNow();
      await new Promise((resolve) => setTimeout(resolve, 600));
      assert.ok(
        scrubber.stats.running && scrubber.stats.checked <= 4,
        `paced: ${scrubber.stats.checked} of 8 checked after 0.6 s`,
      );
      await scrubber.close();
      await pass;
      assert.ok(
        performance.now() - started < 5000,
        'close() ends the pass rather than letting it run on',
      );
      assert.equal(scrubber.stats.passes, 0, 'an interrupted pass is not counted');
    } finally {
      await store.close();
    }
  });
});
