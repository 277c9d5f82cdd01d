/**
 * Sub-block reads from replicas (GET_RANGE) through the real pool workers
 * against real PeerServers on the on-disk backend: only the wanted 4 KiB
 * sub-blocks land in the cache slot, each checked; a replica whose range
 * fails its sum is passed over for the next; a replica whose sub-sums entry
 * does not fit the block's hash is asked for the whole block, which lands
 * whole (`whole` reported). Small misses (a span of at most 16 KiB) are
 * fetched by the main thread (inline-remote-misses.ts) with the same
 * HedgedRead: the same cases hold there.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { logger } from '../../common/log.js';
import { hasher, type Hasher } from '../blocks/hash.js';
import { LocalSlotStore } from '../blocks/slot-store.js';
import { SUB_BLOCK_SIZE } from '../blocks/sub-sums.js';
import { PeerServer } from '../peer/server.js';
import type { PeerBlockBackend } from '../peer/backend.js';
import type { BlockRange, RangeReply } from '../peer/wire.js';
import { DiskPeerBackend } from '../replication/disk-backend.js';
import type { PeerTarget } from '../replication/placement.js';
import { blockBytes } from '../../../test/support/peer-helpers.js';
import { DataPool } from './data-pool.js';
import { READ_OK } from './tasks.js';

const BS = 64 * 1024;
const BLOCKS = 8;
const CLUSTER = 'range-test-cluster';
const VOLUME = 5;
const quiet = logger('range-reads-test');
const identity = { clusterId: CLUSTER, nodeId: randomUUID() };
/** Sub-blocks 2, 3 and 9 of each block: a 32 KiB span, read by the workers. */
const MASK = (1 << 2) | (1 << 3) | (1 << 9);
/** Sub-blocks 5 and 6: an 8 KiB span, fetched by the main thread. */
const SMALL = (1 << 5) | (1 << 6);

/** The disk backend with its GET_RANGE answers changed by `tamper`. */
function tampered(inner: DiskPeerBackend, tamper: (reply: RangeReply) => void): PeerBlockBackend {
  return Object.assign(Object.create(inner) as DiskPeerBackend, {
    async getRange(range: BlockRange) {
      const reply = await inner.getRange(range);
      if (reply?.entry) tamper(reply);
      return reply;
    },
  });
}

describe('pool workers: sub-block reads from replicas (GET_RANGE)', { timeout: 60_000 }, () => {
  let root: string;
  let hash: Hasher;
  const data: Buffer[] = [];
  const hashes: { lo: number; hi: number }[] = [];
  const cleanups: (() => Promise<void>)[] = [];
  let local: LocalSlotStore;
  const cache = new SharedArrayBuffer(BLOCKS * BS);

  before(async () => {
    root = await mkdtemp(join(tmpdir(), 'torus-range-reads-'));
    hash = await hasher();
    for (let i = 0; i < BLOCKS; i++) {
      data.push(blockBytes(i + 100, BS));
      hashes.push(hash.hash64(data[i]));
    }
    await LocalSlotStore.create(join(root, 'local'), { blockSize: BS, capacityBytes: 16 * BS });
    local = await LocalSlotStore.open(join(root, 'local'));
  });
  after(async () => {
    for (const c of cleanups.reverse()) await c();
    await local.close();
    await rm(root, { recursive: true, force: true });
  });

  /** A peer on its own disk store holding every block; `wrap` changes what it serves. */
  async function peer(
    name: string,
    wrap?: (b: DiskPeerBackend) => PeerBlockBackend,
  ): Promise<PeerTarget> {
    const dir = join(root, `${name}-${cleanups.length}`);
    await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 16 * BS });
    const store = await LocalSlotStore.open(dir);
    const uuid = randomUUID();
    const backend = new DiskPeerBackend(store, uuid, quiet, hash);
    await backend.putBlocks(
      data.map((bytes, i) => ({
        ref: { volumeId: VOLUME, generation: 1, index: i },
        flags: 0,
        hashLo: hashes[i].lo,
        hashHi: hashes[i].hi,
        nonce: Buffer.alloc(12),
        tag: Buffer.alloc(16),
        data: bytes,
      })),
    );
    const server = new PeerServer(wrap ? wrap(backend) : backend, {
      clusterId: CLUSTER,
      nodeId: uuid,
      log: quiet,
    });
    const { port } = await server.listen('127.0.0.1', 0);
    cleanups.push(async () => {
      await server.close({ drainMs: 200 });
      await backend.close();
      await store.close();
    });
    return { uuid, host: '127.0.0.1', port };
  }

  interface Parts {
    results: { status: number; whole: boolean }[];
    /** Misses the main thread fetched itself. */
    onMain: number;
  }

  /** Read every block's `mask` sub-blocks into slot = index from `peers` in that order, the first `likely` of them its holders. */
  async function readParts(
    peers: PeerTarget[],
    mask = MASK,
    likely = peers.length,
  ): Promise<Parts> {
    new Uint8Array(cache).fill(0xee);
    const pool = new DataPool(
      {
        cache,
        blockSize: BS,
        records: local.records,
        dataPath: local.dataPath,
        slotsPath: local.slotsPath,
      },
      2,
      4,
    );
    try {
      const results = await Promise.all(
        data.map(
          (_, i) =>
            new Promise<{ status: number; whole: boolean }>((resolve) =>
              pool.read({
                volumeId: VOLUME,
                key: null,
                cacheSlot: i,
                storeSlot: -1,
                generation: 1,
                index: i,
                hashLo: hashes[i].lo,
                hashHi: hashes[i].hi,
                // Block i's candidates start at peer i % likely (the pool rotates them), so every holder is asked first for some.
                remote: { identity, peers, candidates: peers.map((_, k) => k), likely },
                subBlocks: mask,
                done: (status, _reason, _localBad, whole) => resolve({ status, whole: !!whole }),
              }),
            ),
        ),
      );
      return { results, onMain: pool.inlineMissCounts.remote };
    } finally {
      await pool.close();
    }
  }

  function assertParts(i: number, whole: boolean, mask = MASK): void {
    const slot = Buffer.from(cache, i * BS, BS);
    for (let j = 0; j < BS / SUB_BLOCK_SIZE; j++) {
      const got = slot.subarray(j * SUB_BLOCK_SIZE, (j + 1) * SUB_BLOCK_SIZE);
      const want = data[i].subarray(j * SUB_BLOCK_SIZE, (j + 1) * SUB_BLOCK_SIZE);
      if (whole || mask & (1 << j)) assert.ok(got.equals(want), `block ${i} sub-block ${j}`);
      else
        assert.ok(
          got.every((b) => b === 0xee),
          `block ${i} sub-block ${j} left alone`,
        );
    }
  }

  for (const [mask, where] of [
    [MASK, 'workers'],
    [SMALL, 'main thread'],
  ] as const) {
    const expectOnMain = where === 'main thread' ? BLOCKS : 0;

    test(`${where}: only the wanted sub-blocks land, checked`, async () => {
      const { results, onMain } = await readParts([await peer('a'), await peer('b')], mask);
      results.forEach(({ status, whole }, i) => {
        assert.equal(status, READ_OK, `block ${i}`);
        assert.equal(whole, false);
        assertParts(i, false, mask);
      });
      assert.equal(onMain, expectOnMain);
    });

    test(`${where}: a replica whose bytes fail their sum is passed over; one whose entry does not fit is asked whole`, async () => {
      const flipped = await peer('flipped', (b) =>
        tampered(b, (reply) => {
          const copy = Buffer.from(reply.block.data);
          copy[10] ^= 0xff; // in the first wanted sub-block (the range starts there)
          reply.block = { ...reply.block, data: copy };
        }),
      );
      const stale = await peer('stale', (b) =>
        tampered(b, (reply) => {
          const entry = Uint8Array.from(reply.entry!);
          entry[5] ^= 0xff; // the block hash it names
          reply.entry = entry;
        }),
      );
      // Only the flipped and the stale replica: each block needs the stale one's whole copy.
      const { results, onMain } = await readParts([flipped, stale], mask);
      results.forEach(({ status, whole }, i) => {
        assert.equal(status, READ_OK, `block ${i}`);
        assert.equal(whole, true, `block ${i} came whole from the replica with the stale entry`);
        assertParts(i, true, mask);
      });
      assert.equal(onMain, expectOnMain);
    });

    test(`${where}: a spare (a candidate past the likely holders) is asked only when no holder answers`, async () => {
      let spareAsked = 0;
      // Holds nothing, as a spare after a write with every target up.
      const spare = await peer('spare', (b) =>
        Object.assign(Object.create(b) as DiskPeerBackend, {
          getRange() {
            spareAsked++;
            return Promise.resolve(undefined);
          },
          getBlock: () => Promise.resolve(undefined),
        }),
      );
      const holders = [await peer('a'), await peer('b')];
      const { results } = await readParts([...holders, spare], mask, 2);
      results.forEach(({ status }, i) => assert.equal(status, READ_OK, `block ${i}`));
      assert.equal(spareAsked, 0, 'no first ask went to the spare');
      // The spare stays a candidate: with no holder left it is asked.
      const empty = await peer('empty', (b) =>
        Object.assign(Object.create(b) as DiskPeerBackend, {
          getRange: () => Promise.resolve(undefined),
          getBlock: () => Promise.resolve(undefined),
        }),
      );
      const alone = await readParts([empty, spare], mask, 1);
      alone.results.forEach(({ status }, i) => assert.notEqual(status, READ_OK, `block ${i}`));
      assert.equal(spareAsked, BLOCKS, 'each block asked the spare once its holder had nothing');
    });
  }
});
