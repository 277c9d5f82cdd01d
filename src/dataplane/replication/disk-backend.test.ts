/**
 * DiskPeerBackend over a real LocalSlotStore in a temporary directory (one per
 * test, removed after): puts and gets with every record field, the refusals
 * (checksum, size, full store) storing nothing, delete/has/list, a reopen
 * rebuilding everything from the slot table, shared syncs, shutdown, and the
 * whole path through a real PeerServer and PeerClient over TBP.
 */
import assert from 'node:assert/strict';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { ChecksumError, IoError, StoreFullError } from '../../common/errors.js';
import { hasher } from '../blocks/hash.js';
import { RECORD_MAP_PAGE, RECORD_SEALED } from '../blocks/record.js';
import { MAP_PAGE_BIT, type BlockRef } from '../../model/block-ref.js';
import { LocalSlotStore } from '../blocks/slot-store.js';
import { PeerClient } from '../peer/client.js';
import { PeerStatusError, PeerWrongClusterError } from '../peer/errors.js';
import { PeerServer } from '../peer/server.js';
import {
  CLUSTER,
  blockBytes,
  capturingLogger,
  makeBlock,
  quietLogger,
} from '../../../test/support/peer-helpers.js';
import {
  STATUS_BAD_REQUEST,
  STATUS_CHECKSUM,
  STATUS_NO_SPACE,
  STATUS_SHUTTING_DOWN,
  statusOfError,
  type WireBlock,
} from '../peer/wire.js';
import { DiskPeerBackend } from './disk-backend.js';

const BS = 4096;
const NODE = 'node-disk';
const ref = (index: number, volumeId = 1, generation = 1): BlockRef => ({
  volumeId,
  generation,
  index,
});

interface Fixture {
  dir: string;
  store: LocalSlotStore;
  backend: DiskPeerBackend;
}

/** A fresh store of `slots` blocks in its own temporary directory, closed and removed after the test. */
async function fixture(
  t: TestContext,
  options: { slots?: number; blockSize?: number; log?: ReturnType<typeof quietLogger> } = {},
): Promise<Fixture> {
  const blockSize = options.blockSize ?? BS;
  const dir = await mkdtemp(join(tmpdir(), 'torus-disk-backend-'));
  await LocalSlotStore.create(dir, { blockSize, capacityBytes: (options.slots ?? 64) * blockSize });
  const fx = {
    dir,
    store: await LocalSlotStore.open(dir),
    backend: undefined as unknown as DiskPeerBackend,
  };
  fx.backend = new DiskPeerBackend(fx.store, NODE, options.log ?? quietLogger(), await hasher());
  t.after(async () => {
    await fx.backend.close();
    await fx.store.close();
    await rm(dir, { recursive: true, force: true });
  });
  return fx;
}

/** Reopen the store as after a restart: index and records rebuilt from the slot table. */
async function reopen(fx: Fixture): Promise<void> {
  await fx.backend.close();
  await fx.store.close();
  fx.store = await LocalSlotStore.open(fx.dir);
  fx.backend = new DiskPeerBackend(fx.store, NODE, quietLogger(), await hasher());
}

async function sealedBlock(
  r: BlockRef,
  seed: number,
  size = BS,
  flags = RECORD_SEALED,
): Promise<WireBlock> {
  const block = await makeBlock(r, blockBytes(seed, size), flags);
  block.nonce = Buffer.from('nonce-' + String(seed).padStart(6, '0'));
  block.tag = Buffer.from('tag-' + String(seed).padStart(12, '0'));
  return block;
}

function assertSameBlock(got: WireBlock | undefined, want: WireBlock): void {
  assert.ok(got, `block ${want.ref.volumeId}/${want.ref.generation}/${want.ref.index} expected`);
  assert.deepEqual(got.ref, want.ref);
  assert.equal(got.flags, want.flags);
  assert.equal(got.hashLo, want.hashLo >>> 0);
  assert.equal(got.hashHi, want.hashHi >>> 0);
  assert.deepEqual(Buffer.from(got.nonce), Buffer.from(want.nonce));
  assert.deepEqual(Buffer.from(got.tag), Buffer.from(want.tag));
  assert.ok(Buffer.from(got.data).equals(Buffer.from(want.data)), 'same bytes');
}

const flip = (block: WireBlock, at = 100): WireBlock => {
  const data = Buffer.from(block.data);
  data[at] ^= 1;
  return { ...block, data };
};

describe('DiskPeerBackend', () => {
  it(
    'stores and returns blocks with their flags, hash, nonce and tag; unsealed ones keep no nonce or tag',
    { timeout: 10_000 },
    async (t) => {
      const { backend, store } = await fixture(t);
      const sealed = await sealedBlock(ref(1), 1);
      const plain = await makeBlock(ref(2), blockBytes(2, BS));
      plain.nonce = Buffer.alloc(12, 0x77); // meaningless without RECORD_SEALED: not stored
      plain.tag = Buffer.alloc(16, 0x77);
      const page = await sealedBlock(ref(MAP_PAGE_BIT + 3), 3, BS, RECORD_SEALED | RECORD_MAP_PAGE);
      await backend.putBlocks([sealed, plain, page]);
      assert.equal(store.usedSlots, 3);

      assertSameBlock(await backend.getBlock(ref(1)), sealed);
      assertSameBlock(await backend.getBlock(ref(MAP_PAGE_BIT + 3)), page);
      assertSameBlock(await backend.getBlock(ref(2)), {
        ...plain,
        nonce: Buffer.alloc(12),
        tag: Buffer.alloc(16),
      });
      assert.equal(
        await backend.getBlock(ref(1, 1, 2)),
        undefined,
        'another generation is another block',
      );
      assert.deepEqual(backend.info(), {
        uuid: NODE,
        capacityBytes: 64 * BS,
        usedBytes: 3 * BS,
        blocks: 3,
      });

      // The data returned is the caller's own: changing it changes nothing stored.
      const got = (await backend.getBlock(ref(1)))!;
      (got.data as Buffer).fill(0);
      (got.nonce as Buffer).fill(0);
      assertSameBlock(await backend.getBlock(ref(1)), sealed);
    },
  );

  it('re-putting a held ref replaces its copy without growing', { timeout: 10_000 }, async (t) => {
    const { backend, store } = await fixture(t);
    const block = await sealedBlock(ref(5), 5);
    await backend.putBlocks([block]);
    const first = store.lookup(1, 1, 5);
    await backend.putBlocks([block]);
    assert.notEqual(store.lookup(1, 1, 5), first, 'written to a new slot, then bound');
    assert.equal(store.usedSlots, 1);
    assertSameBlock(await backend.getBlock(ref(5)), block);
  });

  it(
    'refuses a batch holding a block that does not match its hash, and stores none of it',
    { timeout: 10_000 },
    async (t) => {
      const { backend, store } = await fixture(t);
      const good = await makeBlock(ref(1), blockBytes(1, BS));
      const bad = flip(await makeBlock(ref(2), blockBytes(2, BS)));
      const free = store.freeSlots;
      await assert.rejects(
        backend.putBlocks([good, bad]),
        (err: Error) =>
          err instanceof ChecksumError &&
          /checksum mismatch for vol 1 gen 1 block 2/.test(err.message),
      );
      assert.equal(statusOfError(new ChecksumError('1', 2, 'x')), STATUS_CHECKSUM);
      assert.deepEqual(await backend.hasBlocks([ref(1), ref(2)]), [false, false]);
      assert.equal(store.usedSlots, 0);
      assert.equal(store.freeSlots, free, 'no slot taken');
      // A hash naming other bytes is the same refusal: the sender's hash is what is checked.
      await assert.rejects(
        backend.putBlocks([{ ...good, hashHi: good.hashHi ^ 0x80000000 }]),
        ChecksumError,
      );
      await backend.putBlocks([good]);
      assert.deepEqual(await backend.hasBlocks([ref(1), ref(2)]), [true, false]);
    },
  );

  it(
    'refuses a block of another size with EINVAL (BAD_REQUEST), storing nothing',
    { timeout: 10_000 },
    async (t) => {
      const { backend, store } = await fixture(t);
      for (const size of [BS - 1, BS * 2, 1]) {
        const odd = await makeBlock(ref(size), Buffer.alloc(size, 7));
        const refusal = await backend
          .putBlocks([await makeBlock(ref(0), blockBytes(0, BS)), odd])
          .then(
            () => undefined,
            (err: unknown) => err,
          );
        assert.ok(refusal instanceof IoError && refusal.errno === 'EINVAL', String(refusal));
        assert.match(
          refusal.message,
          new RegExp(`a block of ${size} bytes; this node stores blocks of ${BS}`),
        );
        assert.equal(statusOfError(refusal), STATUS_BAD_REQUEST);
      }
      assert.equal(store.usedSlots, 0);
    },
  );

  it(
    'a full store refuses with StoreFullError (NO_SPACE); what it holds stays intact',
    { timeout: 10_000 },
    async (t) => {
      const { backend, store } = await fixture(t, { slots: 16 });
      const blocks = await Promise.all(
        Array.from({ length: 15 }, (_, i) => sealedBlock(ref(i), i)),
      );
      await backend.putBlocks(blocks);
      // One slot left: a batch of two gets none.
      const two = [await sealedBlock(ref(100), 100), await sealedBlock(ref(101), 101)];
      const refusal = await backend.putBlocks(two).then(
        () => undefined,
        (err: unknown) => err,
      );
      assert.ok(refusal instanceof StoreFullError, String(refusal));
      assert.equal(statusOfError(refusal), STATUS_NO_SPACE);
      assert.deepEqual(await backend.hasBlocks(two.map((b) => b.ref)), [false, false]);
      assert.equal(store.freeSlots, 1, 'the slot taken for the first was given back');
      await backend.putBlocks([two[0]]);
      await assert.rejects(backend.putBlocks([two[1]]), StoreFullError);
      // Nothing of the refused puts landed in a held block's slot.
      for (const block of [...blocks, two[0]])
        assertSameBlock(await backend.getBlock(block.ref), block);
      // Space comes back once a delete's free record is written (sync waits for it).
      assert.equal(await backend.deleteBlocks([ref(0)]), 1);
      await backend.sync();
      await backend.putBlocks([two[1]]);
      assertSameBlock(await backend.getBlock(two[1].ref), two[1]);
    },
  );

  it(
    "deletes, answers has, and lists every block or one volume's",
    { timeout: 10_000 },
    async (t) => {
      const { backend } = await fixture(t);
      const blocks = [
        ...(await Promise.all([0, 1, 2].map((i) => sealedBlock(ref(i, 7), i)))),
        ...(await Promise.all([0, 1].map((i) => makeBlock(ref(i, 8, 3), blockBytes(10 + i, BS))))),
        await makeBlock(ref(MAP_PAGE_BIT, 7), blockBytes(20, BS), RECORD_MAP_PAGE),
      ];
      await backend.putBlocks(blocks);
      const listed = async (volumeId?: number) => {
        const out = [];
        for await (const entry of backend.listBlocks(volumeId === undefined ? {} : { volumeId }))
          out.push(entry);
        return out.sort((a, b) => a.ref.volumeId - b.ref.volumeId || a.ref.index - b.ref.index);
      };
      const all = await listed();
      assert.equal(all.length, 6);
      assert.deepEqual(
        all,
        [...blocks]
          .sort((a, b) => a.ref.volumeId - b.ref.volumeId || a.ref.index - b.ref.index)
          .map((b) => ({
            ref: b.ref,
            flags: b.flags,
            hashLo: b.hashLo >>> 0,
            hashHi: b.hashHi >>> 0,
            length: BS,
          })),
      );
      assert.deepEqual(
        (await listed(8)).map((e) => e.ref),
        [ref(0, 8, 3), ref(1, 8, 3)],
      );
      assert.deepEqual(await listed(9), []);

      assert.deepEqual(
        await backend.hasBlocks([ref(0, 7), ref(5, 7), ref(1, 8, 3), ref(1, 8, 2)]),
        [true, false, true, false],
      );
      assert.equal(
        await backend.deleteBlocks([ref(0, 7), ref(5, 7), ref(0, 7), ref(MAP_PAGE_BIT, 7)]),
        2,
        'each held block counted once',
      );
      assert.deepEqual(await backend.hasBlocks([ref(0, 7), ref(MAP_PAGE_BIT, 7), ref(1, 7)]), [
        false,
        false,
        true,
      ]);
      assert.equal(await backend.getBlock(ref(0, 7)), undefined);
      assert.deepEqual(
        (await listed(7)).map((e) => e.ref.index),
        [1, 2],
      );
      assert.equal(backend.info().blocks, 4);
    },
  );

  it(
    'after a sync, everything survives a reopen of the store: index and records rebuilt',
    { timeout: 10_000 },
    async (t) => {
      const fx = await fixture(t);
      const blocks = [
        await sealedBlock(ref(1, 3, 9), 1),
        await makeBlock(ref(2, 3, 9), blockBytes(2, BS)),
        await sealedBlock(ref(MAP_PAGE_BIT + 1, 3, 9), 3, BS, RECORD_SEALED | RECORD_MAP_PAGE),
        await sealedBlock(ref(4, 3, 9), 4),
      ];
      await fx.backend.putBlocks(blocks);
      await fx.backend.putBlocks([blocks[0]]); // replaced: the old copy's free record must win after reopen
      await fx.backend.deleteBlocks([blocks[3].ref]);
      await fx.backend.sync();
      await reopen(fx);
      assert.equal(fx.store.usedSlots, 3);
      for (const block of blocks.slice(0, 3))
        assertSameBlock(await fx.backend.getBlock(block.ref), block);
      assert.equal(await fx.backend.getBlock(blocks[3].ref), undefined);
      const listed = [];
      for await (const entry of fx.backend.listBlocks({ volumeId: 3 }))
        listed.push(entry.ref.index);
      assert.deepEqual(
        listed.sort((a, b) => a - b),
        [1, 2, MAP_PAGE_BIT + 1],
      );
    },
  );

  it(
    'serves stored bytes as they are, logging a damaged local copy instead of hiding it',
    { timeout: 10_000 },
    async (t) => {
      const { log, lines } = capturingLogger();
      const fx = await fixture(t, { log });
      const block = await makeBlock(ref(1), blockBytes(1, BS));
      await fx.backend.putBlocks([block]);
      const slot = fx.store.lookup(1, 1, 1)!;
      const file = await open(fx.store.dataPath, 'r+');
      await file.write(Buffer.from([block.data[10] ^ 0xff]), 0, 1, slot * BS + 10); // bit rot under the store
      await file.close();
      const got = (await fx.backend.getBlock(ref(1)))!;
      assert.equal(
        got.hashLo,
        block.hashLo >>> 0,
        'the recorded hash, which the receiver will check',
      );
      assert.equal(got.data[10], block.data[10] ^ 0xff);
      assert.ok(lines().some((l) => l.level === 40 && /local copy is damaged/.test(String(l.msg))));
    },
  );

  it(
    'shares syncs: callers arriving while one runs wait for one more, not one each',
    { timeout: 10_000 },
    async (t) => {
      const { backend, store } = await fixture(t);
      let calls = 0;
      let release!: () => void;
      const original = store.sync.bind(store);
      store.sync = async () => {
        calls++;
        if (calls === 1) await new Promise<void>((resolve) => (release = resolve));
        return original();
      };
      const first = backend.sync();
      await new Promise((resolve) => setImmediate(resolve));
      // These come while the first runs, which may have begun before their puts: they need another.
      const later = [backend.sync(), backend.sync(), backend.sync()];
      assert.equal(calls, 1);
      release();
      await first;
      await Promise.all(later);
      assert.equal(calls, 2, 'one more sync for all three');
      await backend.sync();
      assert.equal(calls, 3);
    },
  );

  it(
    'close() waits for running requests and refuses new ones with ESHUTDOWN (SHUTTING_DOWN)',
    { timeout: 10_000 },
    async (t) => {
      const { backend, store } = await fixture(t);
      const put = backend.putBlocks([await makeBlock(ref(1), blockBytes(1, BS))]);
      assert.equal(store.lookup(1, 1, 1), undefined, 'still writing');
      await backend.close();
      assert.notEqual(
        store.lookup(1, 1, 1),
        undefined,
        'the running put had finished when close resolved',
      );
      await put;
      const refusal = await backend.hasBlocks([ref(1)]).then(
        () => undefined,
        (err: unknown) => err,
      );
      assert.ok(refusal instanceof IoError && refusal.errno === 'ESHUTDOWN', String(refusal));
      assert.equal(statusOfError(refusal), STATUS_SHUTTING_DOWN);
    },
  );
});

describe('DiskPeerBackend behind a PeerServer (TBP)', () => {
  it(
    'puts, gets, syncs and refuses over real sockets; the synced blocks survive a reopen',
    { timeout: 20_000 },
    async (t) => {
      const block64 = 64 * 1024;
      const fx = await fixture(t, { slots: 32, blockSize: block64 });
      let server = new PeerServer(fx.backend, {
        clusterId: CLUSTER,
        nodeId: NODE,
        log: quietLogger(),
      });
      const { port } = await server.listen('127.0.0.1', 0);
      t.after(() => server.close({ drainMs: 500 }));
      const client = new PeerClient({
        host: '127.0.0.1',
        port,
        clusterId: CLUSTER,
        nodeId: 'writer',
        expectedNodeId: NODE,
        log: quietLogger(),
      });
      t.after(() => client.close());

      const blocks = [
        await sealedBlock(ref(0, 4, 2), 0, block64),
        await makeBlock(ref(1, 4, 2), blockBytes(1, block64)),
        await sealedBlock(ref(MAP_PAGE_BIT, 4, 2), 2, block64, RECORD_SEALED | RECORD_MAP_PAGE),
      ];
      await client.putBlocks(blocks);
      for (const block of blocks) assertSameBlock(await client.getBlock(block.ref), block);
      assert.equal(await client.getBlock(ref(9, 4, 2)), undefined);
      assert.deepEqual(await client.hasBlocks([ref(0, 4, 2), ref(9, 4, 2)]), [true, false]);
      // By hash: held only with the hash its record has (a stale copy under the same ref is not).
      const [, plain] = blocks;
      const byHash = (lo: number, hi: number) =>
        client.hasBlocks([plain.ref, ref(9, 4, 2)], Uint32Array.from([lo, hi, lo, hi]));
      assert.deepEqual(await byHash(plain.hashLo, plain.hashHi), [true, false]);
      assert.deepEqual(await byHash(plain.hashLo, plain.hashHi ^ 1), [false, false]);
      await client.sync();

      // Refusals come back as statuses, and nothing of them is stored.
      const damaged = flip(await makeBlock(ref(5, 4, 2), blockBytes(5, block64)));
      await assert.rejects(
        client.putBlocks([damaged]),
        (err: Error) =>
          err instanceof PeerStatusError && err.status === STATUS_CHECKSUM && err.retryable,
      );
      const small = await makeBlock(ref(6, 4, 2), blockBytes(6, 4096));
      await assert.rejects(
        client.putBlocks([small]),
        (err: Error) =>
          err instanceof PeerStatusError && err.status === STATUS_BAD_REQUEST && !err.retryable,
      );
      const tooMany = await Promise.all(
        Array.from({ length: 30 }, (_, i) =>
          makeBlock(ref(100 + i, 4, 2), blockBytes(100 + i, block64)),
        ),
      );
      await assert.rejects(
        client.putBlocks(tooMany),
        (err: Error) =>
          err instanceof PeerStatusError && err.status === STATUS_NO_SPACE && !err.retryable,
      );
      assert.deepEqual(await client.hasBlocks([damaged.ref, small.ref, tooMany[0].ref]), [
        false,
        false,
        false,
      ]);
      assert.equal(await client.deleteBlocks([blocks[1].ref]), 1);
      await client.sync();

      const stranger = new PeerClient({
        host: '127.0.0.1',
        port,
        clusterId: 'another-cluster',
        nodeId: 'x',
        log: quietLogger(),
      });
      t.after(() => stranger.close());
      await assert.rejects(stranger.hasBlocks([blocks[0].ref]), PeerWrongClusterError);

      // Restart the node's side: server, backend and store.
      await client.close();
      await server.close({ drainMs: 500 });
      await reopen(fx);
      server = new PeerServer(fx.backend, { clusterId: CLUSTER, nodeId: NODE, log: quietLogger() });
      const again = await server.listen('127.0.0.1', 0);
      const reader = new PeerClient({
        host: '127.0.0.1',
        port: again.port,
        clusterId: CLUSTER,
        nodeId: 'reader',
        log: quietLogger(),
      });
      t.after(() => reader.close());
      assertSameBlock(await reader.getBlock(blocks[0].ref), blocks[0]);
      assertSameBlock(await reader.getBlock(blocks[2].ref), blocks[2]);
      assert.equal(await reader.getBlock(blocks[1].ref), undefined, 'the delete was synced too');
    },
  );
});
