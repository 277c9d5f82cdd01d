/**
 * GET_RANGE end to end over real sockets: a PeerServer on the on-disk
 * backend (a real LocalSlotStore of 64 KiB blocks) answers part of a plain
 * block with its sub-sums entry, which checks against the block's xxh64; a
 * sealed block, and a backend without getRange, answer whole; a node from
 * before GET_RANGE (a raw server that answers opcode 8 with BAD_REQUEST, as
 * TBP 1 always has) is asked GET_BLOCK instead, once per connection.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { hasher } from '../blocks/hash.js';
import { RECORD_SEALED } from '../blocks/record.js';
import { LocalSlotStore } from '../blocks/slot-store.js';
import { SUB_BLOCK_SIZE, subSum, subsumsMatch } from '../blocks/sub-sums.js';
import { DiskPeerBackend } from '../replication/disk-backend.js';
import { CLUSTER, blockBytes, makeBlock, quietLogger } from '../../../test/support/peer-helpers.js';
import { MemoryPeerBackend } from '../../../test/support/memory-peer-backend.js';
import { PeerClient } from './client.js';
import type { PeerBlockBackend } from './backend.js';
import { PeerServer } from './server.js';
import * as w from './wire.js';

const BS = 64 * 1024;
const NODE = 'node-range';
const REF = { volumeId: 3, generation: 1, index: 7 };

async function serve(t: TestContext, backend: PeerBlockBackend): Promise<PeerClient> {
  const server = new PeerServer(backend, { clusterId: CLUSTER, nodeId: NODE, log: quietLogger() });
  const { port } = await server.listen('127.0.0.1', 0);
  t.after(() => server.close({ drainMs: 500 }));
  return client(t, port);
}

function client(t: TestContext, port: number): PeerClient {
  const c = new PeerClient({
    host: '127.0.0.1',
    port,
    clusterId: CLUSTER,
    nodeId: 'reader',
    log: quietLogger(),
  });
  t.after(() => c.close());
  return c;
}

async function diskBackend(t: TestContext): Promise<DiskPeerBackend> {
  const dir = await mkdtemp(join(tmpdir(), 'torus-get-range-'));
  await LocalSlotStore.create(dir, { blockSize: BS, capacityBytes: 16 * BS });
  const store = await LocalSlotStore.open(dir);
  const backend = new DiskPeerBackend(store, NODE, quietLogger(), await hasher());
  t.after(async () => {
    await backend.close();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  return backend;
}

describe('peer GET_RANGE', { timeout: 30_000 }, () => {
  it('lands block data on an 8-byte boundary, small and large (fast copies into the cache)', async (t) => {
    const backend = await diskBackend(t);
    const block = await makeBlock(REF, blockBytes(4, BS));
    await backend.putBlocks([block]);
    const peer = await serve(t, backend);
    // Several, so both the slab's carving and the pool's buffers are seen more than once.
    for (let round = 0; round < 3; round++) {
      const range = await peer.getRange({ ref: REF, offset: 4096, length: 4096 });
      assert.ok(range?.entry);
      assert.equal(
        range.block.data.byteOffset % 8,
        0,
        `range data at ${range.block.data.byteOffset}`,
      );
      const whole = await peer.getBlock(REF);
      assert.ok(whole);
      assert.equal(whole.data.byteOffset % 8, 0, `block data at ${whole.data.byteOffset}`);
      assert.deepEqual(Buffer.from(whole.data), block.data);
    }
  });

  it('serves part of a plain block with the entry that checks it', async (t) => {
    const backend = await diskBackend(t);
    const block = await makeBlock(REF, blockBytes(1, BS));
    await backend.putBlocks([block]);
    const peer = await serve(t, backend);
    const hash = await hasher();

    const reply = await peer.getRange({ ref: REF, offset: 2 * SUB_BLOCK_SIZE, length: 8192 });
    assert.ok(reply?.entry, 'range form');
    assert.equal(reply.offset, 8192);
    assert.deepEqual(Buffer.from(reply.block.data), block.data.subarray(8192, 16384));
    assert.ok(subsumsMatch(reply.entry, block.hashLo, block.hashHi, hash), 'entry fits the xxh64');
    for (const j of [2, 3]) {
      const at = j * SUB_BLOCK_SIZE - reply.offset;
      const bytes = reply.block.data.subarray(at, at + SUB_BLOCK_SIZE);
      assert.equal(hash.hash32(bytes), subSum(reply.entry, j), `sub-block ${j}`);
    }
    // Not held: undefined, as GET_BLOCK.
    assert.equal(
      await peer.getRange({ ref: { ...REF, index: 8 }, offset: 0, length: 4096 }),
      undefined,
    );
  });

  it('answers a sealed block whole, with its nonce and tag', async (t) => {
    const backend = await diskBackend(t);
    const sealed = await makeBlock(REF, blockBytes(2, BS), RECORD_SEALED);
    sealed.nonce = Buffer.from('nonce-000002');
    sealed.tag = Buffer.from('tag-000000000002');
    await backend.putBlocks([sealed]);
    const peer = await serve(t, backend);
    const reply = await peer.getRange({ ref: REF, offset: 0, length: 4096 });
    assert.ok(reply && reply.entry === undefined, 'whole form');
    assert.equal(reply.offset, 0);
    assert.deepEqual(Buffer.from(reply.block.data), sealed.data);
    assert.deepEqual(Buffer.from(reply.block.tag), sealed.tag);
    assert.equal(reply.block.flags, RECORD_SEALED);
  });

  it('is served whole from getBlock by a backend without getRange', async (t) => {
    const backend = new MemoryPeerBackend({ uuid: NODE });
    const block = await makeBlock(REF, blockBytes(3, BS));
    await backend.putBlocks([block]);
    const peer = await serve(t, backend);
    const reply = await peer.getRange({ ref: REF, offset: 4096, length: 4096 });
    assert.ok(reply && reply.entry === undefined);
    assert.deepEqual(Buffer.from(reply.block.data), block.data);
  });

  it('asks a node from before GET_RANGE for whole blocks instead, after its first refusal', async (t) => {
    const block = await makeBlock(REF, blockBytes(4, BS));
    const { peer, opcodes } = await oldNode(t, block);

    for (let i = 0; i < 2; i++) {
      const reply = await peer.getRange({ ref: REF, offset: 0, length: 4096 });
      assert.ok(reply && reply.entry === undefined, 'whole form');
      assert.deepEqual(Buffer.from(reply.block.data), block.data);
    }
    assert.deepEqual(opcodes, [w.OP_HELLO, w.OP_GET_RANGE, w.OP_GET_BLOCK, w.OP_GET_BLOCK]);
  });

  it('asks a node from before copy hashes HAS_BLOCKS by ref instead, after its first refusal', async (t) => {
    const block = await makeBlock(REF, blockBytes(5, BS));
    const { peer, opcodes } = await oldNode(t, block);
    const hashes = Uint32Array.from([block.hashLo, block.hashHi]);
    for (let i = 0; i < 2; i++) assert.deepEqual(await peer.hasBlocks([REF], hashes), [true]);
    // Refused once by hash, then asked by ref: the refused request and the next.
    assert.deepEqual(opcodes, [w.OP_HELLO, w.OP_HAS_BLOCKS, w.OP_HAS_BLOCKS, w.OP_HAS_BLOCKS]);
  });
});

/** A client of a TBP 1 node (speakTbp1) serving `block`, and the opcodes that node was sent. */
async function oldNode(t: TestContext, block: w.WireBlock) {
  const opcodes: number[] = [];
  const sockets: Socket[] = [];
  const old = createServer((socket) => {
    sockets.push(socket);
    speakTbp1(socket, block, opcodes);
  });
  await new Promise<void>((resolve) => old.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    old.close();
  });
  return { peer: client(t, (old.address() as { port: number }).port), opcodes };
}

/**
 * A TBP 1 node from before GET_RANGE, reduced to what the test needs: HELLO,
 * GET_BLOCK of the one block, HAS_BLOCKS by ref (every ref held), and
 * BAD_REQUEST "unknown opcode" for anything else (session.ts's answer to an
 * opcode it does not know).
 */
function speakTbp1(socket: Socket, block: w.WireBlock, opcodes: number[]): void {
  let buffered = Buffer.alloc(0);
  socket.on('error', () => undefined);
  socket.on('data', (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= w.HEADER_SIZE) {
      const length = w.headerPayloadLength(buffered, 0);
      if (buffered.length < w.HEADER_SIZE + length) return;
      const op = w.headerOpcode(buffered, 0);
      const id = w.headerRequestId(buffered, 0);
      const payload = buffered.subarray(w.HEADER_SIZE, w.HEADER_SIZE + length);
      buffered = buffered.subarray(w.HEADER_SIZE + length);
      opcodes.push(op);
      if (op === w.OP_HELLO) {
        socket.write(w.encodeHelloReply(id, { clusterId: CLUSTER, nodeId: NODE }));
      } else if (op === w.OP_GET_BLOCK) {
        const head = Buffer.alloc(w.BLOCK_REPLY_HEAD_SIZE);
        w.encodeBlockReplyHead(head, 0, id, block);
        socket.write(Buffer.concat([head, block.data]));
      } else if (op === w.OP_HAS_BLOCKS) {
        // Refs only: a longer payload (copy hashes) is a mis-sized ref list to it.
        try {
          socket.write(
            w.encodeBitmapReply(
              id,
              w.decodeRefs(payload).map(() => true),
            ),
          );
        } catch (err) {
          socket.write(w.encodeErrorReply(op, id, w.STATUS_BAD_REQUEST, (err as Error).message));
        }
      } else {
        socket.write(w.encodeErrorReply(op, id, w.STATUS_BAD_REQUEST, `unknown opcode ${op}`));
      }
    }
  });
}
