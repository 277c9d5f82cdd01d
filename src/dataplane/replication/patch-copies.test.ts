/**
 * Patches between nodes, on DiskPeerBackend over real slot stores: a patch
 * stored over the receiver's own base (PUT_PATCHES) reads back whole with
 * its tree hash (GET) and in part (GET_RANGE); every disagreement with the
 * base stores nothing; a tree-hashed whole block travels to a node without
 * the base (PUT_BLOCKS with BLOCK_TREE_HASH); a base every version let go
 * of is held for its patches and found through the older one; a base that
 * is itself a patch (or the spilled patch of the same ref) is gone over to
 * its own base, keeping its other sub-blocks; all of it over TBP too, and
 * after a reopen.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { ChecksumError } from '../../common/errors.js';
import { hasher, type Hasher } from '../blocks/hash.js';
import { LocalSlotStore } from '../blocks/slot-store.js';
import {
  SUB_BLOCK_SIZE,
  encodeSubsums,
  sealSubsums,
  subsumsEntrySize,
  subsumsMatch,
  treeHashInto,
} from '../blocks/sub-sums.js';
import { wireHashMatches } from '../peer/backend.js';
import { PeerClient } from '../peer/client.js';
import { PeerServer } from '../peer/server.js';
import {
  BLOCK_TREE_HASH,
  STATUS_CHECKSUM,
  STATUS_NOT_FOUND,
  STATUS_OK,
  encodePatchSums,
  type WirePatch,
} from '../peer/wire.js';
import { CLUSTER, blockBytes, makeBlock, quietLogger } from '../../../test/support/peer-helpers.js';
import { FEATURE_PATCHES } from '../../model/node-features.js';
import { ClusterBlocks } from './cluster-blocks.js';
import { DiskPeerBackend } from './disk-backend.js';
import { ClusterPlacement } from './placement.js';

const BS = 64 * 1024;
const INDEX = 6;
const baseRef = { volumeId: 3, generation: 1, index: INDEX };
const refAt = (generation: number) => ({ volumeId: 3, generation, index: INDEX });

async function node(t: TestContext, name: string) {
  const dir = await mkdtemp(join(tmpdir(), `torus-patch-copies-${name}-`));
  await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 32 * BS });
  const fx = { dir, store: await LocalSlotStore.open(dir), backend: undefined! as DiskPeerBackend };
  fx.backend = new DiskPeerBackend(fx.store, name, quietLogger(), await hasher());
  t.after(async () => {
    await fx.backend.close();
    await fx.store.close();
    await rm(dir, { recursive: true, force: true });
  });
  return fx;
}

/**
 * The patch a writer sends for `block` (whole, as the volume sees it) over
 * a base, holding sub-blocks `present`: the entry of the whole block sealed
 * with its tree hash, and the present sub-blocks' bytes.
 */
function patchOf(
  hash: Hasher,
  block: Buffer,
  generation: number,
  present: number,
  older = { volumeId: 0, generation: 0 },
): WirePatch & { tree: { lo: number; hi: number } } {
  const entry = new Uint8Array(subsumsEntrySize(BS));
  encodeSubsums(entry, block, 0, 0, hash);
  const tree = new Uint32Array(2);
  treeHashInto(entry, hash, tree);
  sealSubsums(entry, tree[0], tree[1], hash);
  const parts: Buffer[] = [];
  for (let k = 0; k < BS / SUB_BLOCK_SIZE; k++)
    if (present & (1 << k))
      parts.push(block.subarray(k * SUB_BLOCK_SIZE, (k + 1) * SUB_BLOCK_SIZE));
  return {
    ref: refAt(generation),
    base: { volumeId: 3, generation: 1 },
    older,
    present,
    entry,
    data: Buffer.concat(parts),
    tree: { lo: tree[0], hi: tree[1] },
  };
}

/** `block` with sub-blocks `mask` overwritten by `fill`. */
function written(block: Buffer, mask: number, fill: number): Buffer {
  const out = Buffer.from(block);
  for (let k = 0; k < 16; k++)
    if (mask & (1 << k)) out.fill(fill, k * SUB_BLOCK_SIZE, (k + 1) * SUB_BLOCK_SIZE);
  return out;
}

describe('patches between nodes', { timeout: 30_000 }, () => {
  it('a patch over the receiver’s base reads back whole and in part, checked by its tree hash', async (t) => {
    const hash = await hasher();
    const a = await node(t, 'a');
    const baseBytes = blockBytes(1, BS);
    await a.backend.putBlocks([await makeBlock(baseRef, baseBytes)]);
    const v2 = written(baseBytes, 0b10_0100, 0x22);
    const p = patchOf(hash, v2, 2, 0b10_0100);
    const used = a.store.usedSlots;
    assert.deepEqual([...(await a.backend.putPatches([p])).statuses], [STATUS_OK]);
    assert.equal(a.store.usedSlots, used + 1, 'one slot, holding two sub-blocks');

    const whole = (await a.backend.getBlock(p.ref))!;
    assert.equal(whole.flags, BLOCK_TREE_HASH);
    assert.deepEqual([whole.hashLo, whole.hashHi], [p.tree.lo, p.tree.hi]);
    assert.ok(Buffer.from(whole.data).equals(v2));
    assert.ok(wireHashMatches(hash, whole, p.tree.lo, p.tree.hi));
    assert.ok(!wireHashMatches(hash, { ...whole, flags: 0 }, p.tree.lo, p.tree.hi));

    // Sub-blocks 1..4: 1 and 3-4 from the base, 2 from the patch.
    const range = (await a.backend.getRange({ ref: p.ref, offset: 4096, length: 4 * 4096 }))!;
    assert.ok(range.entry && subsumsMatch(range.entry, p.tree.lo, p.tree.hi, hash));
    assert.ok(Buffer.from(range.block.data).equals(v2.subarray(4096, 5 * 4096)));
  });

  it('a patch that disagrees with itself or with the base stores nothing', async (t) => {
    const hash = await hasher();
    const a = await node(t, 'a');
    const baseBytes = blockBytes(1, BS);
    await a.backend.putBlocks([await makeBlock(baseRef, baseBytes)]);
    const good = patchOf(hash, written(baseBytes, 0b1, 0x33), 2, 0b1);
    const flipped = { ...good, data: Buffer.from(good.data) };
    flipped.data[7] ^= 1;
    // Sub-block 1 changed too, but not sent: the entry's sum for it is not the base's.
    const unsent = { ...patchOf(hash, written(baseBytes, 0b11, 0x33), 2, 0b11), present: 0b1 };
    unsent.data = unsent.data.subarray(0, SUB_BLOCK_SIZE);
    const badSeal = { ...good, entry: Uint8Array.from(good.entry) };
    badSeal.entry[20] ^= 1; // a sum: the entry's own check fails
    const elsewhere = { ...good, base: { volumeId: 3, generation: 0 }, ref: refAt(1) };
    const used = a.store.usedSlots;
    const { statuses } = await a.backend.putPatches([flipped, unsent, badSeal, elsewhere]);
    assert.deepEqual(
      [...statuses],
      [STATUS_CHECKSUM, STATUS_CHECKSUM, STATUS_CHECKSUM, STATUS_NOT_FOUND],
    );
    assert.equal(a.store.usedSlots, used);
    assert.equal(await a.backend.getBlock(good.ref), undefined);
    // The base is not pinned by any of them: dropped, it is freed, not held.
    await a.backend.deleteBlocks([baseRef]);
    assert.equal(a.store.heldSlots, 0);
  });

  it('a tree-hashed block travels whole to a node without the base, and is checked by its tree hash', async (t) => {
    const hash = await hasher();
    const a = await node(t, 'a');
    const b = await node(t, 'b');
    const baseBytes = blockBytes(1, BS);
    await a.backend.putBlocks([await makeBlock(baseRef, baseBytes)]);
    const v2 = written(baseBytes, 0b1000, 0x44);
    const p = patchOf(hash, v2, 2, 0b1000);
    await a.backend.putPatches([p]);
    const whole = (await a.backend.getBlock(p.ref))!;
    await b.backend.putBlocks([whole]);
    assert.equal(
      b.store.isPatch(b.store.lookup(3, 2, INDEX)!),
      true,
      'kept as a patch holding all',
    );
    assert.equal(b.store.needsBase(b.store.lookup(3, 2, INDEX)!), false);
    const copy = (await b.backend.getBlock(p.ref))!;
    assert.equal(copy.flags, BLOCK_TREE_HASH);
    assert.ok(Buffer.from(copy.data).equals(v2));
    const range = (await b.backend.getRange({ ref: p.ref, offset: 0, length: 8192 }))!;
    assert.ok(range.entry && subsumsMatch(range.entry, p.tree.lo, p.tree.hi, hash));
    // The same bytes under the xxh64's flag, or under the tree flag with the xxh64: refused.
    const xxh = hash.hash64(v2);
    await assert.rejects(
      b.backend.putBlocks([{ ...whole, ref: refAt(5), hashLo: xxh.lo, hashHi: xxh.hi }]),
      ChecksumError,
    );
    await assert.rejects(
      b.backend.putBlocks([{ ...whole, ref: refAt(5), flags: 0 }]),
      ChecksumError,
    );
    // And a patch over it: a whole-present patch is a base like a whole block.
    const v3 = written(v2, 0b1, 0x55);
    const p3 = { ...patchOf(hash, v3, 3, 0b1), base: { volumeId: 3, generation: 2 } };
    assert.deepEqual([...(await b.backend.putPatches([p3])).statuses], [STATUS_OK]);
    assert.ok(Buffer.from((await b.backend.getBlock(p3.ref))!.data).equals(v3));
  });

  it('a base every version let go of is held for its patches, found through the older one, and freed with the last', async (t) => {
    const hash = await hasher();
    const a = await node(t, 'a');
    const baseBytes = blockBytes(1, BS);
    await a.backend.putBlocks([await makeBlock(baseRef, baseBytes)]);
    const v2 = written(baseBytes, 0b1, 0x66);
    await a.backend.putPatches([patchOf(hash, v2, 2, 0b1)]);
    await a.backend.deleteBlocks([baseRef]); // GC: no version names generation 1 any more
    assert.equal(a.store.heldSlots, 1);
    assert.ok(Buffer.from((await a.backend.getBlock(refAt(2)))!.data).equals(v2));
    // Generation 3 over the same base, holding the older patch's sub-block and a new one.
    const v3 = written(v2, 0b100, 0x77);
    const without = patchOf(hash, v3, 3, 0b101);
    assert.deepEqual([...(await a.backend.putPatches([without])).statuses], [STATUS_NOT_FOUND]);
    const via = patchOf(hash, v3, 3, 0b101, { volumeId: 3, generation: 2 });
    assert.deepEqual([...(await a.backend.putPatches([via])).statuses], [STATUS_OK]);
    await a.backend.deleteBlocks([refAt(2)]);
    assert.ok(Buffer.from((await a.backend.getBlock(refAt(3)))!.data).equals(v3));
    assert.equal(a.store.heldSlots, 1, 'still the base of generation 3');
    await a.backend.deleteBlocks([refAt(3)]);
    await a.store.whenReleased();
    assert.equal(a.store.heldSlots, 0);
    assert.equal(a.store.usedSlots, 0);
  });

  it('a patch naming a patch as its base goes over that one’s base, keeping its other sub-blocks', async (t) => {
    const hash = await hasher();
    const a = await node(t, 'a');
    const baseBytes = blockBytes(1, BS);
    await a.backend.putBlocks([await makeBlock(baseRef, baseBytes)]);
    const v2 = written(baseBytes, 0b11, 0x12);
    await a.backend.putPatches([patchOf(hash, v2, 2, 0b11)]);
    // A writer without a copy: the map names generation 2, and only sub-block 1 is sent.
    const v3 = written(v2, 0b10, 0x13);
    const p3 = { ...patchOf(hash, v3, 3, 0b10), base: { volumeId: 3, generation: 2 } };
    assert.deepEqual([...(await a.backend.putPatches([p3])).statuses], [STATUS_OK]);
    const slot = a.store.lookup(3, 3, INDEX)!;
    assert.equal(a.store.presentOf(slot), 0b11, 'sub-block 0 kept from generation 2');
    assert.equal(a.store.baseOf(slot), a.store.lookup(3, 1, INDEX), 'over generation 1, whole');
    assert.ok(Buffer.from((await a.backend.getBlock(p3.ref))!.data).equals(v3));
    // A sub-block the sender changed but did not send: the kept one disagrees with the entry.
    const v4 = written(v2, 0b11, 0x14);
    const lying = { ...patchOf(hash, v4, 4, 0b11), base: { volumeId: 3, generation: 2 } };
    lying.present = 0b10;
    lying.data = lying.data.subarray(SUB_BLOCK_SIZE);
    assert.deepEqual([...(await a.backend.putPatches([lying])).statuses], [STATUS_CHECKSUM]);
  });

  it('a patch of the same generation as its base replaces that spilled patch; never a whole block', async (t) => {
    const hash = await hasher();
    const a = await node(t, 'a');
    const baseBytes = blockBytes(1, BS);
    await a.backend.putBlocks([await makeBlock(baseRef, baseBytes)]);
    const spilled = written(baseBytes, 0b100, 0x21);
    await a.backend.putPatches([patchOf(hash, spilled, 2, 0b100)]);
    const first = a.store.lookup(3, 2, INDEX)!;
    // Written again before the commit, by a writer holding no copy: over "generation 2" itself.
    const again = written(spilled, 0b1000, 0x22);
    const p = { ...patchOf(hash, again, 2, 0b1000), base: { volumeId: 3, generation: 2 } };
    assert.deepEqual([...(await a.backend.putPatches([p])).statuses], [STATUS_OK]);
    const now = a.store.lookup(3, 2, INDEX)!;
    assert.notEqual(now, first, 'a new slot replaced the spilled patch');
    assert.equal(a.store.presentOf(now), 0b1100);
    assert.ok(Buffer.from((await a.backend.getBlock(p.ref))!.data).equals(again));
    await a.store.whenReleased();
    assert.equal(a.store.usedSlots, 2, 'the base and the new patch');
    // A whole block of generation 5 is no base for generation 5.
    await a.backend.putBlocks([await makeBlock(refAt(5), baseBytes)]);
    const self = { ...patchOf(hash, again, 5, 0b1000), base: { volumeId: 3, generation: 5 } };
    assert.deepEqual([...(await a.backend.putPatches([self])).statuses], [STATUS_NOT_FOUND]);
  });

  it('from a writer without the base: the receiver makes the entry from its own, and answers the tree hash', async (t) => {
    const hash = await hasher();
    const a = await node(t, 'a');
    const baseBytes = blockBytes(1, BS);
    const base = await makeBlock(baseRef, baseBytes);
    await a.backend.putBlocks([base]);
    /** What such a writer sends: sub-blocks `mask` of `block`, their sums, the base's hash as its map has it. */
    const sumsPatch = (
      block: Buffer,
      generation: number,
      mask: number,
      baseGeneration: number,
      baseHash: { hashLo: number; hashHi: number },
    ) => {
      const full = patchOf(hash, block, generation, mask);
      const sums: number[] = [];
      for (let k = 0; k < 16; k++)
        if (mask & (1 << k))
          sums.push(hash.hash32(block.subarray(k * SUB_BLOCK_SIZE, (k + 1) * SUB_BLOCK_SIZE)));
      return {
        patch: {
          ...full,
          base: { volumeId: 3, generation: baseGeneration },
          entry: encodePatchSums(baseHash.hashLo, baseHash.hashHi, sums),
        },
        tree: full.tree,
      };
    };
    const v2 = written(baseBytes, 0b110, 0x31);
    const two = sumsPatch(v2, 2, 0b110, 1, base);
    const stale = sumsPatch(v2, 2, 0b110, 1, { hashLo: base.hashLo ^ 1, hashHi: base.hashHi });
    const flipped = sumsPatch(v2, 2, 0b110, 1, base);
    flipped.patch.data = Buffer.from(flipped.patch.data);
    flipped.patch.data[5] ^= 1;
    const refused = await a.backend.putPatches([stale.patch, flipped.patch]);
    assert.deepEqual(
      [...refused.statuses],
      [STATUS_NOT_FOUND, STATUS_CHECKSUM],
      'another base; a damaged sub-block',
    );
    const stored = await a.backend.putPatches([two.patch]);
    assert.deepEqual([...stored.statuses], [STATUS_OK]);
    assert.deepEqual(
      [...stored.hashes],
      [two.tree.lo, two.tree.hi],
      'the tree hash the writer would have made',
    );
    assert.ok(Buffer.from((await a.backend.getBlock(refAt(2)))!.data).equals(v2));
    // Over that patch as the map names it (generation 2, its tree hash): kept sub-blocks stay.
    const v3 = written(v2, 0b1_0000, 0x32);
    const three = sumsPatch(v3, 3, 0b1_0000, 2, { hashLo: two.tree.lo, hashHi: two.tree.hi });
    const over = await a.backend.putPatches([three.patch]);
    assert.deepEqual([...over.hashes], [three.tree.lo, three.tree.hi]);
    assert.equal(a.store.presentOf(a.store.lookup(3, 3, INDEX)!), 0b1_0110);
    assert.ok(Buffer.from((await a.backend.getBlock(refAt(3)))!.data).equals(v3));
  });

  it('over TBP, and after a reopen; a node without patches answers BAD_REQUEST', async (t) => {
    const hash = await hasher();
    const a = await node(t, 'a');
    const server = new PeerServer(a.backend, {
      clusterId: CLUSTER,
      nodeId: 'a',
      log: quietLogger(),
    });
    const { port } = await server.listen('127.0.0.1', 0);
    t.after(() => server.close({ drainMs: 500 }));
    const client = new PeerClient({
      host: '127.0.0.1',
      port,
      clusterId: CLUSTER,
      nodeId: 'writer',
      log: quietLogger(),
    });
    t.after(() => client.close());
    const baseBytes = blockBytes(1, BS);
    await client.putBlocks([await makeBlock(baseRef, baseBytes)]);
    const v2 = written(baseBytes, 0b11_0000_0000, 0x88);
    const p = patchOf(hash, v2, 2, 0b11_0000_0000);
    const missing = { ...p, ref: { ...p.ref, index: INDEX + 1 } };
    assert.deepEqual(
      [...(await client.putPatches([p, missing])).statuses],
      [STATUS_OK, STATUS_NOT_FOUND],
    );
    await client.sync();
    const got = (await client.getBlock(p.ref))!;
    assert.equal(got.flags, BLOCK_TREE_HASH);
    assert.ok(Buffer.from(got.data).equals(v2));
    const part = (await client.getRange({ ref: p.ref, offset: 8 * 4096, length: 4096 }))!;
    assert.ok(Buffer.from(part.block.data).equals(v2.subarray(8 * 4096, 9 * 4096)));

    await server.close({ drainMs: 500 });
    await a.backend.close();
    await a.store.close();
    a.store = await LocalSlotStore.open(a.dir);
    a.backend = new DiskPeerBackend(a.store, 'a', quietLogger(), hash);
    assert.ok(Buffer.from((await a.backend.getBlock(p.ref))!.data).equals(v2), 'after a reopen');

    // A backend without putPatches (a node from before it) behind a server.
    const older = Object.create(a.backend) as DiskPeerBackend;
    Object.defineProperty(older, 'putPatches', { value: undefined });
    const oldServer = new PeerServer(older, {
      clusterId: CLUSTER,
      nodeId: 'old',
      log: quietLogger(),
    });
    const old = await oldServer.listen('127.0.0.1', 0);
    t.after(() => oldServer.close({ drainMs: 500 }));
    const oldClient = new PeerClient({
      host: '127.0.0.1',
      port: old.port,
      clusterId: CLUSTER,
      nodeId: 'writer',
      log: quietLogger(),
    });
    t.after(() => oldClient.close());
    await assert.rejects(oldClient.putPatches([p]), /does not store patches/);
  });

  it('a cluster writes patches only while every live node says it takes them', async () => {
    const self = '00000000-0000-4000-8000-000000000001';
    const peer = (n: number, features?: string[]) => ({
      uuid: `00000000-0000-4000-8000-00000000000${n}`,
      address: `127.0.0.1:${40000 + n}`,
      ...(features ? { features } : {}),
    });
    const placement = new ClusterPlacement(self, { clusterId: CLUSTER, nodeId: self });
    const cluster = new ClusterBlocks(placement, await hasher(), quietLogger());
    assert.equal(cluster.patchesEnabled, true, 'on by default');
    placement.update(undefined, [peer(1), peer(2, [FEATURE_PATCHES]), peer(3, [FEATURE_PATCHES])]);
    assert.equal(cluster.patches, 'replicated', 'this node’s own record does not count');
    placement.update(undefined, [peer(1), peer(2, [FEATURE_PATCHES]), peer(3)]);
    assert.equal(cluster.patches, undefined, 'a node from before patches is live');
    placement.update(undefined, [
      peer(2, [FEATURE_PATCHES]),
      peer(3, ['something-else', FEATURE_PATCHES]),
    ]);
    assert.equal(cluster.patches, 'replicated', 'it left');
    cluster.patchesEnabled = false;
    assert.equal(cluster.patches, undefined);
  });
});
