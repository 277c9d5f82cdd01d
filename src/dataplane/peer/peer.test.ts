/**
 * PeerServer and PeerClient over real sockets on 127.0.0.1 (ports from
 * listen(0)), against the memory backend, with fault layers, raw hostile
 * sockets, silent servers and a peer process frozen with SIGSTOP. Every test
 * has a timeout and closes what it started.
 */
import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { MAP_PAGE_BIT, type BlockRef } from '../../model/block-ref.js';
import { RECORD_MAP_PAGE, RECORD_SEALED } from '../blocks/record.js';
import { PeerClient, type PeerClientOptions } from './client.js';
import {
  PeerError,
  PeerStatusError,
  PeerTimeoutError,
  PeerUnavailableError,
  PeerWrongClusterError,
  PeerIdentityError,
} from './errors.js';
import { MemoryPeerBackend } from '../../../test/support/memory-peer-backend.js';
import { PeerServer, type PeerServerOptions } from './server.js';
import type { PeerBlockBackend } from './backend.js';
import {
  CLUSTER,
  FaultLayer,
  RawPeer,
  blockBytes,
  capturingLogger,
  closedPort,
  makeBlock,
  quietLogger,
  silentServer,
  sleep,
  startChildPeer,
  until,
} from '../../../test/support/peer-helpers.js';
import * as w from './wire.js';

async function startServer(
  t: TestContext,
  backend: PeerBlockBackend,
  options: Partial<PeerServerOptions> = {},
): Promise<{ server: PeerServer; port: number }> {
  const server = new PeerServer(backend, { clusterId: CLUSTER, log: quietLogger(), ...options });
  const { port } = await server.listen('127.0.0.1', 0);
  t.after(() => server.close({ drainMs: 500 }));
  return { server, port };
}

function client(
  t: TestContext,
  port: number,
  options: Partial<PeerClientOptions> = {},
): PeerClient {
  const c = new PeerClient({
    host: '127.0.0.1',
    port,
    clusterId: CLUSTER,
    nodeId: 'client-node',
    log: quietLogger(),
    ...options,
  });
  t.after(() => c.close());
  return c;
}

const ref = (index: number, volumeId = 1, generation = 1): BlockRef => ({
  volumeId,
  generation,
  index,
});
const hello = (id = 1) => w.encodeHello(id, { clusterId: CLUSTER, nodeId: 'raw' });

function assertSameBlock(got: w.WireBlock | undefined, want: w.WireBlock): void {
  assert.ok(got, 'block expected');
  assert.deepEqual(got.ref, want.ref);
  assert.equal(got.flags, want.flags);
  assert.equal(got.hashLo, want.hashLo);
  assert.equal(got.hashHi, want.hashHi);
  assert.deepEqual(Buffer.from(got.nonce), Buffer.from(want.nonce));
  assert.deepEqual(Buffer.from(got.tag), Buffer.from(want.tag));
  assert.ok(Buffer.from(got.data).equals(Buffer.from(want.data)), 'same bytes');
}

describe('peer protocol: round trips', () => {
  it(
    'puts, gets, checks, deletes and pings through real sockets',
    { timeout: 10_000 },
    async (t) => {
      const backend = new MemoryPeerBackend({ uuid: 'node-a' });
      const { port } = await startServer(t, backend);
      const c = client(t, port, { expectedNodeId: 'node-a' });

      const sealed = await makeBlock(ref(1), blockBytes(1, 4096), RECORD_SEALED);
      sealed.nonce = Buffer.from('0123456789ab');
      sealed.tag = Buffer.from('0123456789abcdef');
      const big = await makeBlock(ref(2), blockBytes(2, 256 * 1024));
      const page = await makeBlock(ref(MAP_PAGE_BIT + 7), blockBytes(3, 4096), RECORD_MAP_PAGE);
      await c.putBlocks([sealed, big, page]);
      assert.equal(c.connected, true);
      assert.deepEqual(c.identity, { clusterId: CLUSTER, nodeId: 'node-a' });
      assert.equal(backend.size, 3);

      assertSameBlock(await c.getBlock(ref(1)), sealed);
      assertSameBlock(await c.getBlock(ref(2)), big);
      assertSameBlock(await c.getBlock(ref(MAP_PAGE_BIT + 7)), page);
      assert.equal(await c.getBlock(ref(99)), undefined);
      assert.deepEqual(await c.hasBlocks([ref(1), ref(99), ref(2), ref(1, 1, 2)]), [
        true,
        false,
        true,
        false,
      ]);
      assert.deepEqual(await c.hasBlocks([]), []);
      assert.equal(await c.deleteBlocks([ref(1), ref(99), ref(2)]), 2);
      assert.deepEqual(await c.hasBlocks([ref(1), ref(2), ref(MAP_PAGE_BIT + 7)]), [
        false,
        false,
        true,
      ]);
      assert.equal(typeof (await c.ping()), 'number');
      assert.equal(backend.info().usedBytes, 4096);
    },
  );

  it(
    'serves the same when reading the default way (reuseReadBuffer off)',
    { timeout: 10_000 },
    async (t) => {
      const backend = new MemoryPeerBackend({ uuid: 'node-a' });
      const { port } = await startServer(t, backend, { reuseReadBuffer: false });
      const c = client(t, port);
      const blocks = await Promise.all(
        [4096, 65536, 300_000].map((size, i) => makeBlock(ref(i), blockBytes(i, size))),
      );
      await Promise.all(blocks.map((b) => c.putBlocks([b])));
      for (const b of blocks) assertSameBlock(await c.getBlock(b.ref), b);
      await assert.rejects(
        c.putBlocks([{ ...blocks[0], hashLo: blocks[0].hashLo ^ 1 }]),
        PeerStatusError,
      );
    },
  );

  it(
    'moves a batch as big as a frame allows, and refuses a bigger one before sending',
    { timeout: 20_000 },
    async (t) => {
      const backend = new MemoryPeerBackend({ uuid: 'node-a' });
      const { port } = await startServer(t, backend);
      const c = client(t, port, { putTimeoutMs: 10_000 });
      // 255 blocks of 64 KiB plus their descriptors fit in 16 MiB; 256 do not.
      const blocks = await Promise.all(
        Array.from({ length: 255 }, (_, i) => makeBlock(ref(i), blockBytes(i, 65536))),
      );
      await c.putBlocks(blocks);
      assert.equal(backend.size, 255);
      assertSameBlock(await c.getBlock(ref(254)), blocks[254]);
      await assert.rejects(
        c.putBlocks([...blocks, await makeBlock(ref(255), blockBytes(255, 65536))]),
        RangeError,
      );
      assert.equal(c.outstanding, 0);
    },
  );

  it(
    'rejects alone a queued put whose blocks were spoiled before the connection was up',
    { timeout: 10_000 },
    async (t) => {
      const { port } = await startServer(t, new MemoryPeerBackend({ uuid: 'node-a' }));
      const c = client(t, port);
      const good = await makeBlock(ref(1), blockBytes(1, 4096));
      const spoiled = await makeBlock(ref(2), blockBytes(2, 4096));
      const first = c.putBlocks([good]); // connects; both wait for HELLO
      const second = c.putBlocks([spoiled]);
      spoiled.nonce = Buffer.alloc(3);
      const refused = assert.rejects(second, RangeError);
      await first;
      await refused;
      assert.deepEqual(await c.hasBlocks([ref(1), ref(2)]), [true, false]);
    },
  );

  it(
    'pipelines 1000 outstanding requests and pairs replies that come back out of order',
    { timeout: 20_000 },
    async (t) => {
      const memory = new MemoryPeerBackend({ uuid: 'node-a' });
      const blocks = await Promise.all(
        Array.from({ length: 1000 }, (_, i) => makeBlock(ref(i), blockBytes(i, 4096))),
      );
      await memory.putBlocks(blocks);
      const layer = new FaultLayer(memory);
      // Scrambled service times: request i takes (i * 37) % 29 ms.
      layer.delay = (op, r) => (op === 'get' ? (r!.index * 37) % 29 : 0);
      const { port } = await startServer(t, layer);
      const c = client(t, port, { getTimeoutMs: 10_000 });
      await c.ping();

      const order: number[] = [];
      const gets = blocks.map((b, i) => c.getBlock(b.ref).then((got) => (order.push(i), got)));
      assert.equal(c.outstanding, 1000, 'all 1000 outstanding at once');
      const got = await Promise.all(gets);
      got.forEach((g, i) => assertSameBlock(g, blocks[i]));
      assert.ok(
        layer.maxRunning >= 900,
        `the server ran them concurrently (max ${layer.maxRunning} at once)`,
      );
      assert.notDeepEqual(
        order,
        [...order].sort((a, b) => a - b),
        'replies arrived out of order',
      );
      assert.equal(c.outstanding, 0);
    },
  );
});

/** A memory backend whose sync() snapshots what it holds: which refs a SYNC made "durable". */
class SyncRecorder extends MemoryPeerBackend {
  syncs = 0;
  durable = new Set<string>();
  override async sync(): Promise<void> {
    this.syncs++;
    for await (const listed of this.listBlocks({}))
      this.durable.add(`${listed.ref.volumeId}/${listed.ref.generation}/${listed.ref.index}`);
  }
}

describe('peer protocol: SYNC', () => {
  it(
    'answers once the backend has synced, covering puts made through any connection',
    { timeout: 10_000 },
    async (t) => {
      const backend = new SyncRecorder({ uuid: 'node-a' });
      const layer = new FaultLayer(backend);
      layer.delay = (op) => (op === 'sync' ? 150 : 0);
      const { port } = await startServer(t, layer);
      const writer = client(t, port);
      const syncer = client(t, port);
      await writer.putBlocks([
        await makeBlock(ref(1), blockBytes(1, 4096)),
        await makeBlock(ref(2), blockBytes(2, 4096)),
      ]);
      assert.equal(backend.durable.size, 0);
      const started = performance.now();
      await syncer.sync();
      assert.ok(performance.now() - started >= 140, 'the reply waited for the backend');
      assert.equal(backend.syncs, 1);
      assert.deepEqual(
        [...backend.durable].sort(),
        ['1/1/1', '1/1/2'],
        "the other connection's puts are covered",
      );
    },
  );

  it('has its own deadline; a slow sync is not a dead peer', { timeout: 10_000 }, async (t) => {
    const layer = new FaultLayer(new MemoryPeerBackend({ uuid: 'node-a' }));
    layer.delay = (op) => (op === 'sync' ? 600 : 0);
    const { port } = await startServer(t, layer);
    // Shorter than the sync takes: only the explicit deadline may cut it, not deadAfterMs or the other defaults.
    const c = client(t, port, { timeoutMs: 100, deadAfterMs: 200 });
    await c.sync();
    await assert.rejects(
      c.sync({ timeoutMs: 100 }),
      (err: Error) => err instanceof PeerTimeoutError && err.op === 'OP_SYNC',
    );
    await sleep(300); // past deadAfterMs: the PING probe was answered, so the connection stays
    assert.equal(c.connected, true);
    assert.equal(typeof (await c.ping()), 'number');
  });

  it(
    'answers a SYNC with a payload BAD_REQUEST, a backend failure with its status, and goes on',
    { timeout: 10_000 },
    async (t) => {
      const layer = new FaultLayer(new MemoryPeerBackend({ uuid: 'node-a' }));
      let failNext = false;
      const inner = layer.inner;
      layer.sync = async () => {
        if (failNext) throw Object.assign(new Error('fdatasync failed'), { code: 'EIO' });
        return inner.sync();
      };
      const { port } = await startServer(t, layer);
      const raw = await RawPeer.connect(port);
      t.after(() => raw.destroy());
      raw.write(hello());
      assert.equal((await raw.next()).status, w.STATUS_OK);
      const withPayload = Buffer.alloc(w.HEADER_SIZE + 2);
      w.encodeHeader(withPayload, 0, w.OP_SYNC, 0, 0, 2, 2);
      const sync = Buffer.alloc(w.HEADER_SIZE);
      w.encodeEmptyFrame(sync, 0, w.OP_SYNC, 0, 3);
      raw.write(withPayload, sync);
      const replies = new Map([await raw.next(), await raw.next()].map((r) => [r.id, r]));
      assert.equal(replies.get(2)!.status, w.STATUS_BAD_REQUEST);
      assert.match(replies.get(2)!.payload.toString(), /SYNC with a payload/);
      assert.deepEqual(
        [
          replies.get(3)!.opcode,
          replies.get(3)!.flags,
          replies.get(3)!.status,
          replies.get(3)!.payload.length,
        ],
        [w.OP_SYNC, w.FLAG_REPLY, w.STATUS_OK, 0],
      );

      failNext = true;
      const c = client(t, port);
      await assert.rejects(
        c.sync(),
        (err: Error) =>
          err instanceof PeerStatusError &&
          err.status === w.STATUS_INTERNAL &&
          err.retryable &&
          /fdatasync failed/.test(err.message),
      );
      failNext = false;
      await c.sync();
      assert.equal(raw.closed, false);
    },
  );
});

describe('peer protocol: integrity and refusals', () => {
  it(
    'refuses a put whose bytes do not match their hash with CHECKSUM, and stores nothing of it',
    { timeout: 10_000 },
    async (t) => {
      const backend = new MemoryPeerBackend({ uuid: 'node-a' });
      const { port } = await startServer(t, backend);
      const c = client(t, port);
      const good = await makeBlock(ref(1), blockBytes(1, 4096));
      const bad = await makeBlock(ref(2), blockBytes(2, 4096));
      bad.data = Buffer.from(bad.data);
      bad.data[100] ^= 1; // one bit flipped after hashing

      const err = await c.putBlocks([good, bad]).then(
        () => assert.fail('put must fail'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof PeerStatusError, String(err));
      assert.equal(err.status, w.STATUS_CHECKSUM);
      assert.equal(err.retryable, true);
      assert.match(err.message, /checksum mismatch for vol 1 gen 1 block 2/);
      assert.equal(backend.size, 0);
      assert.deepEqual(await c.hasBlocks([ref(1), ref(2)]), [false, false]);
      // The connection is fine: the good block alone goes through.
      await c.putBlocks([good]);
      assert.deepEqual(await c.hasBlocks([ref(1)]), [true]);
    },
  );

  it(
    'answers NO_SPACE when the backend is full, storing nothing of the batch',
    { timeout: 10_000 },
    async (t) => {
      const backend = new MemoryPeerBackend({ uuid: 'node-a', capacityBytes: 10_000 });
      const { port } = await startServer(t, backend);
      const c = client(t, port);
      const blocks = await Promise.all(
        [1, 2, 3].map((i) => makeBlock(ref(i), blockBytes(i, 4096))),
      );
      const err = await c.putBlocks(blocks).then(
        () => assert.fail('put must fail'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof PeerStatusError);
      assert.equal(err.status, w.STATUS_NO_SPACE);
      assert.equal(err.retryable, false);
      assert.equal(backend.size, 0);
    },
  );

  it(
    'refuses a peer of another cluster, and a node answering under another id',
    { timeout: 10_000 },
    async (t) => {
      const { log, lines } = capturingLogger();
      const { port } = await startServer(t, new MemoryPeerBackend({ uuid: 'node-a' }), { log });
      const stranger = client(t, port, { clusterId: 'other-cluster' });
      const err = await stranger.ping().then(
        () => assert.fail('must be refused'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof PeerWrongClusterError, String(err));
      assert.equal(err.retryable, false);
      assert.ok(
        lines().some(
          (l) =>
            l.msg === 'refusing a peer of another cluster' && l.peerCluster === 'other-cluster',
        ),
      );

      const confused = client(t, port, { expectedNodeId: 'node-b' });
      await assert.rejects(confused.ping(), PeerIdentityError);
    },
  );

  it(
    'answers a bad request with BAD_REQUEST and keeps serving the connection',
    { timeout: 10_000 },
    async (t) => {
      const { port } = await startServer(t, new MemoryPeerBackend({ uuid: 'node-a' }));
      const raw = await RawPeer.connect(port);
      t.after(() => raw.destroy());
      raw.write(hello(1));
      assert.equal((await raw.next()).status, w.STATUS_OK);

      const unknownOp = Buffer.alloc(w.HEADER_SIZE + 3);
      w.encodeHeader(unknownOp, 0, 99, 0, 0, 2, 3);
      const zeroBlocks = Buffer.alloc(w.HEADER_SIZE + 4);
      w.encodeHeader(zeroBlocks, 0, w.OP_PUT_BLOCKS, 0, 0, 3, 4);
      const badFlags = Buffer.alloc(w.HEADER_SIZE);
      w.encodeHeader(badFlags, 0, w.OP_PING, 0x80, 0, 4, 0);
      const badRef = Buffer.alloc(w.HEADER_SIZE + 16);
      w.encodeHeader(badRef, 0, w.OP_GET_BLOCK, 0, 0, 5, 16);
      badRef.writeUInt32BE(0xffffffff, w.HEADER_SIZE + 8);
      const ping = Buffer.alloc(w.HEADER_SIZE);
      w.encodeEmptyFrame(ping, 0, w.OP_PING, 0, 6);
      raw.write(unknownOp, zeroBlocks, badFlags, badRef, hello(7), ping);

      const replies = [];
      for (let i = 0; i < 6; i++) replies.push(await raw.next());
      const byId = new Map(replies.map((r) => [r.id, r]));
      assert.equal(byId.get(2)!.status, w.STATUS_BAD_REQUEST);
      assert.match(byId.get(2)!.payload.toString(), /unknown opcode 99/);
      assert.equal(byId.get(3)!.status, w.STATUS_BAD_REQUEST);
      assert.match(byId.get(3)!.payload.toString(), /PUT_BLOCKS of 0 blocks/);
      assert.equal(byId.get(4)!.status, w.STATUS_BAD_REQUEST);
      assert.equal(byId.get(5)!.status, w.STATUS_BAD_REQUEST);
      assert.match(byId.get(5)!.payload.toString(), /2\^53/);
      assert.equal(byId.get(7)!.status, w.STATUS_BAD_REQUEST);
      assert.match(byId.get(7)!.payload.toString(), /HELLO twice/);
      assert.equal(byId.get(6)!.status, w.STATUS_OK);
      assert.equal(raw.closed, false);
    },
  );
});

describe('peer protocol: framing errors close only that connection', () => {
  const header = (mutate: (buf: Buffer) => void, payload = 0) => {
    const buf = Buffer.alloc(w.HEADER_SIZE + payload);
    w.encodeHeader(buf, 0, w.OP_PING, 0, 0, 9, payload);
    mutate(buf);
    return buf;
  };
  const cases: [string, () => Buffer[], boolean][] = [
    ['garbage bytes', () => [Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')], true],
    ['bad magic', () => [header((b) => b.writeUInt32BE(0xdeadbeef, 0))], true],
    ['unknown version', () => [header((b) => (b[4] = 9))], true],
    ['oversize length', () => [header((b) => b.writeUInt32BE(w.MAX_PAYLOAD_BYTES + 1, 12))], true],
    ['a reply sent to the server', () => [header((b) => (b[6] = w.FLAG_REPLY))], true],
    [
      'a truncated frame (peer closes mid-payload)',
      () => [header((b) => b.writeUInt32BE(100, 12), 10)],
      true,
    ],
    ['a request before HELLO', () => [header(() => {})], false],
  ];

  for (const [name, frames, afterHello] of cases) {
    it(
      `${name}: closed and logged with the remote address; other clients unaffected`,
      { timeout: 10_000 },
      async (t) => {
        const { log, lines } = capturingLogger();
        const backend = new MemoryPeerBackend({ uuid: 'node-a' });
        const { server, port } = await startServer(t, backend, { log });
        const good = client(t, port);
        const block = await makeBlock(ref(1), blockBytes(1, 4096));
        await good.putBlocks([block]);

        const raw = await RawPeer.connect(port);
        t.after(() => raw.destroy());
        if (afterHello) {
          raw.write(hello());
          assert.equal((await raw.next()).status, w.STATUS_OK);
        }
        raw.write(...frames());
        if (name.startsWith('a truncated')) raw.socket.end();
        await raw.waitClosed();

        const warning = lines().find((l) => String(l.msg).startsWith('framing error'));
        assert.ok(warning, 'a framing error is logged');
        assert.equal(warning.remote, `127.0.0.1:${raw.localPort}`);
        // The other connection never noticed.
        assertSameBlock(await good.getBlock(ref(1)), block);
        assert.equal(good.connected, true);
        await until(() => server.connectionCount === 1, 2000, 'the bad connection to be gone');
      },
    );
  }

  it(
    'a connection that never says HELLO is closed after the HELLO deadline',
    { timeout: 10_000 },
    async (t) => {
      const { port } = await startServer(t, new MemoryPeerBackend({ uuid: 'node-a' }), {
        helloTimeoutMs: 200,
      });
      const raw = await RawPeer.connect(port);
      t.after(() => raw.destroy());
      const started = performance.now();
      await raw.waitClosed(2000);
      assert.ok(performance.now() - started >= 150);
    },
  );
});

describe('peer protocol: backpressure', () => {
  for (const [name, limits, size, expected] of [
    ['requests', { maxInflightRequests: 4 }, 4096, 4],
    ['bytes', { maxInflightBytes: 100_000 }, 40_000, 3],
  ] as const) {
    it(
      `stops reading the socket at the in-flight ${name} limit and resumes as requests settle`,
      { timeout: 10_000 },
      async (t) => {
        const layer = new FaultLayer(new MemoryPeerBackend({ uuid: 'node-a' }));
        let open!: () => void;
        layer.gate = new Promise((resolve) => (open = resolve));
        const { port } = await startServer(t, layer, { sessionLimits: limits });
        const c = client(t, port, { putTimeoutMs: 5000 });
        await c.ping();
        const blocks = await Promise.all(
          Array.from({ length: 20 }, (_, i) => makeBlock(ref(i), blockBytes(i, size))),
        );
        const puts = blocks.map((b) => c.putBlocks([b]));
        await sleep(200);
        assert.equal(layer.running, expected, `the server holds at ${expected} in flight`);
        layer.gate = undefined;
        open();
        await Promise.all(puts);
        assert.equal(layer.maxRunning, expected);
        assert.deepEqual(
          await c.hasBlocks(blocks.map((b) => b.ref)),
          blocks.map(() => true),
        );
      },
    );
  }
});

describe('peer client: deadlines, dead peers, reconnection', () => {
  it(
    'rejects with PeerUnavailableError when nothing listens, then backs off instead of hammering',
    { timeout: 10_000 },
    async (t) => {
      const c = client(t, await closedPort());
      const err = await c.ping().then(
        () => assert.fail('must fail'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof PeerUnavailableError, String(err));
      assert.equal(err.retryable, true);
      await assert.rejects(c.ping(), /not reconnecting for another/);
    },
  );

  it(
    'times out against a server that accepts but never answers',
    { timeout: 10_000 },
    async (t) => {
      const silent = await silentServer();
      t.after(() => silent.close());
      const c = client(t, silent.port, { getTimeoutMs: 200, connectTimeoutMs: 2000 });
      const started = performance.now();
      const err = await c.getBlock(ref(1)).then(
        () => assert.fail('must time out'),
        (e: unknown) => e,
      );
      const elapsed = performance.now() - started;
      assert.ok(err instanceof PeerTimeoutError, String(err));
      assert.equal(err.op, 'OP_GET_BLOCK');
      assert.ok(elapsed >= 195 && elapsed < 200 + 150, `rejected after ${elapsed.toFixed(0)} ms`);
    },
  );

  it(
    'keeps the connection after a timeout, and closes it once the peer stays silent for deadAfterMs',
    { timeout: 10_000 },
    async (t) => {
      const received: number[] = [];
      // Answers HELLO like a peer, then reads everything and says nothing.
      const mute = await silentServer((socket) => {
        let helloDone = false;
        socket.on('data', (chunk: Buffer) => {
          for (let at = 0; at + w.HEADER_SIZE <= chunk.length;) {
            received.push(w.headerOpcode(chunk, at));
            if (!helloDone) {
              helloDone = true;
              socket.write(
                w.encodeHelloReply(w.headerRequestId(chunk, at), {
                  clusterId: CLUSTER,
                  nodeId: 'mute',
                }),
              );
            }
            at += w.HEADER_SIZE + w.headerPayloadLength(chunk, at);
          }
        });
      });
      t.after(() => mute.close());
      const c = client(t, mute.port, { getTimeoutMs: 200, deadAfterMs: 500 });
      await assert.rejects(c.getBlock(ref(1)), PeerTimeoutError);
      assert.equal(c.connected, true, 'one timeout does not kill the connection');
      await until(() => received.includes(w.OP_PING), 1000, 'a PING probe after the timeout');
      const started = performance.now();
      await until(() => !c.connected, 2000, 'the silent connection to be declared dead');
      // Silence is counted from the GET (sent ~200 ms before the probe): dead ~500 ms after it.
      assert.ok(performance.now() - started < 500, 'declared dead in time');
    },
  );

  it(
    'does not kill a slow but alive peer: its PING answers while the request is late',
    { timeout: 10_000 },
    async (t) => {
      const memory = new MemoryPeerBackend({ uuid: 'node-a' });
      const block = await makeBlock(ref(1), blockBytes(1, 4096));
      await memory.putBlocks([block]);
      const layer = new FaultLayer(memory);
      layer.delay = (op) => (op === 'get' ? 700 : 0);
      const { port } = await startServer(t, layer);
      const c = client(t, port, { getTimeoutMs: 200, deadAfterMs: 400 });
      await c.ping();
      await assert.rejects(c.getBlock(ref(1)), PeerTimeoutError);
      await sleep(800);
      assert.equal(c.connected, true, 'still connected');
      assert.equal(c.lateReplies, 1, 'the late reply came and was dropped');
      layer.delay = () => 0;
      assertSameBlock(await c.getBlock(ref(1)), block);
    },
  );

  it(
    'detects a frozen peer process (SIGSTOP) by its deadline, then recovers after SIGCONT',
    { timeout: 20_000 },
    async (t) => {
      const peer = await startChildPeer('frozen-node');
      t.after(() => peer.stop());
      const c = client(t, peer.tbpPort, {
        getTimeoutMs: 300,
        connectTimeoutMs: 500,
        deadAfterMs: 600,
        reconnectBackoffMs: { min: 50, max: 200 },
      });
      const block = await makeBlock(ref(1), blockBytes(1, 65536));
      await c.putBlocks([block]);
      assertSameBlock(await c.getBlock(ref(1)), block);

      peer.child.kill('SIGSTOP');
      await sleep(50);
      const started = performance.now();
      await assert.rejects(c.getBlock(ref(1)), PeerTimeoutError);
      const elapsed = performance.now() - started;
      assert.ok(elapsed < 300 + 200, `timed out after ${elapsed.toFixed(0)} ms`);

      await until(() => !c.connected, 3000, 'the frozen connection to be declared dead');
      // A new attempt connects at TCP level (the kernel still accepts) but gets no HELLO: it fails in time, never hangs.
      const again = performance.now();
      const err = await c.getBlock(ref(1)).then(
        () => assert.fail('frozen'),
        (e: unknown) => e,
      );
      assert.ok(
        err instanceof PeerTimeoutError || err instanceof PeerUnavailableError,
        String(err),
      );
      assert.ok(performance.now() - again < 800);

      peer.child.kill('SIGCONT');
      const deadline = Date.now() + 5000;
      for (;;) {
        try {
          assertSameBlock(await c.getBlock(ref(1)), block);
          break;
        } catch (e) {
          if (!(e instanceof PeerError) || Date.now() > deadline) throw e;
          await sleep(50);
        }
      }
      assert.equal(c.connected, true);
    },
  );

  it('reconnects when the connection is lost', { timeout: 10_000 }, async (t) => {
    const backend = new MemoryPeerBackend({ uuid: 'node-a' });
    const block = await makeBlock(ref(1), blockBytes(1, 4096));
    await backend.putBlocks([block]);
    const first = new PeerServer(backend, { clusterId: CLUSTER, log: quietLogger() });
    const { port } = await first.listen('127.0.0.1', 0);
    const c = client(t, port);
    assertSameBlock(await c.getBlock(ref(1)), block);
    await first.close({ drainMs: 100 });
    await until(() => !c.connected, 2000, 'the client to notice');
    const second = new PeerServer(backend, { clusterId: CLUSTER, log: quietLogger() });
    await second.listen('127.0.0.1', port);
    t.after(() => second.close({ drainMs: 100 }));
    assertSameBlock(await c.getBlock(ref(1)), block);
  });
});

describe('peer server: close', () => {
  it(
    'drains: in-flight requests are answered, new ones refused, then everything closes',
    { timeout: 10_000 },
    async (t) => {
      const memory = new MemoryPeerBackend({ uuid: 'node-a' });
      const block = await makeBlock(ref(1), blockBytes(1, 4096));
      await memory.putBlocks([block]);
      const layer = new FaultLayer(memory);
      layer.delay = (op) => (op === 'get' ? 300 : 0);
      const server = new PeerServer(layer, { clusterId: CLUSTER, log: quietLogger() });
      const { port } = await server.listen('127.0.0.1', 0);
      const c = client(t, port);
      await c.ping();
      const inflight = Array.from({ length: 5 }, () => c.getBlock(ref(1)));
      await until(() => layer.running === 5, 2000, 'requests to reach the backend');
      const closed = server.close({ drainMs: 3000 });
      const late = await c.getBlock(ref(1)).then(
        () => assert.fail('refused'),
        (e: unknown) => e,
      );
      assert.ok(late instanceof PeerError && late.retryable, String(late));
      for (const got of await Promise.all(inflight)) assertSameBlock(got, block);
      await closed;
      assert.equal(server.connectionCount, 0);
      await until(() => !c.connected, 2000, 'the client to see the end');
    },
  );
});
