/**
 * The peer gRPC service through real grpc-js clients: the PeerGrpcClient
 * wrapper, and the bare generic client for what the wrapper would never send.
 */
import { describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import type { BlockRef } from '../../model/block-ref.js';
import type { PeerBlockBackend } from './backend.js';
import {
  PeerStatusError,
  PeerTimeoutError,
  PeerWrongClusterError,
  PeerUnavailableError,
} from './errors.js';
import {
  CLUSTER_METADATA_KEY,
  PEER_GRPC_DEFINITION,
  PeerGrpcClient,
  fromGrpcCode,
  toGrpcCode,
} from './grpc.js';
import { MemoryPeerBackend } from '../../../test/support/memory-peer-backend.js';
import { PeerServer } from './server.js';
import {
  CLUSTER,
  FaultLayer,
  blockBytes,
  closedPort,
  makeBlock,
  quietLogger,
} from '../../../test/support/peer-helpers.js';
import * as w from './wire.js';

async function startGrpc(t: TestContext, backend: PeerBlockBackend): Promise<number> {
  const server = new PeerServer(backend, { clusterId: CLUSTER, log: quietLogger() });
  const port = await server.listenGrpc('127.0.0.1', 0);
  t.after(() => server.close({ drainMs: 500 }));
  return port;
}

function grpcClient(
  t: TestContext,
  port: number,
  clusterId = CLUSTER,
  timeoutMs?: number,
): PeerGrpcClient {
  const c = new PeerGrpcClient({
    address: `127.0.0.1:${port}`,
    clusterId,
    nodeId: 'client-node',
    timeoutMs,
  });
  t.after(() => c.close());
  return c;
}

const ref = (index: number, volumeId = 1): BlockRef => ({ volumeId, generation: 1, index });

describe('peer gRPC service', () => {
  it('says who the node is and what it holds', { timeout: 10_000 }, async (t) => {
    const backend = new MemoryPeerBackend({ uuid: 'node-a', capacityBytes: 1 << 20 });
    const one = await makeBlock(ref(1), blockBytes(1, 4096));
    await backend.putBlocks([one, await makeBlock(ref(2), blockBytes(2, 4096))]);
    const c = grpcClient(t, await startGrpc(t, backend));
    assert.deepEqual(await c.info(), {
      uuid: 'node-a',
      clusterId: CLUSTER,
      capacityBytes: 1 << 20,
      usedBytes: 8192,
      blocks: 2,
    });
    assert.deepEqual(await c.hasBlocks([ref(1), ref(3), ref(2), ref(1, 2)]), [
      true,
      false,
      true,
      false,
    ]);
    assert.deepEqual(await c.hasBlocks([]), []);
    // By hash: held with that hash only.
    const hashes = Uint32Array.from([one.hashLo, one.hashHi, one.hashLo, one.hashHi]);
    assert.deepEqual(await c.hasBlocks([ref(1), ref(2)], hashes), [true, false]);
  });

  it(
    'streams a listing of every block, in several messages, and of one volume',
    { timeout: 20_000 },
    async (t) => {
      const backend = new MemoryPeerBackend({ uuid: 'node-a' });
      const blocks = await Promise.all(
        Array.from({ length: 20_000 }, (_, i) =>
          makeBlock(ref(i, i % 3 === 0 ? 7 : 1), blockBytes(i, 16)),
        ),
      );
      for (let i = 0; i < blocks.length; i += 1000)
        await backend.putBlocks(blocks.slice(i, i + 1000));
      const c = grpcClient(t, await startGrpc(t, backend));

      const seen = new Map<number, w.ListedBlock>();
      for await (const entry of c.listBlocks()) {
        assert.ok(!seen.has(entry.ref.index), 'each block once');
        seen.set(entry.ref.index, entry);
      }
      assert.equal(seen.size, 20_000); // 3 messages of at most 8192 entries
      for (const b of [blocks[0], blocks[8191], blocks[8192], blocks[19_999]]) {
        assert.deepEqual(seen.get(b.ref.index), {
          ref: b.ref,
          flags: 0,
          hashLo: b.hashLo,
          hashHi: b.hashHi,
          length: 16,
        });
      }

      let seven = 0;
      for await (const entry of c.listBlocks({ volumeId: 7 })) {
        assert.equal(entry.ref.volumeId, 7);
        seven++;
      }
      assert.equal(seven, blocks.filter((b) => b.ref.volumeId === 7).length);

      // A reader that stops early cancels the stream; the service is fine afterwards.
      for await (const entry of c.listBlocks()) {
        assert.ok(entry);
        break;
      }
      assert.equal((await c.info()).blocks, 20_000);
    },
  );

  it(
    'carries get, put and delete as a fallback, with the same checks as TBP',
    { timeout: 10_000 },
    async (t) => {
      const backend = new MemoryPeerBackend({ uuid: 'node-a' });
      const c = grpcClient(t, await startGrpc(t, backend));
      const block = await makeBlock(ref(1), blockBytes(1, 65536));
      await c.putBlocks([block]);
      const got = await c.getBlock(ref(1));
      assert.ok(got && Buffer.from(got.data).equals(block.data));
      assert.equal(got.hashLo, block.hashLo);
      assert.equal(await c.getBlock(ref(2)), undefined);

      const bad = await makeBlock(ref(2), blockBytes(2, 4096));
      bad.hashLo ^= 1;
      const err = await c.putBlocks([bad]).then(
        () => assert.fail('must fail'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof PeerStatusError, String(err));
      assert.equal(err.status, w.STATUS_CHECKSUM);
      assert.equal(backend.size, 1);

      assert.equal(await c.deleteBlocks([ref(1), ref(2)]), 1);
      assert.equal(backend.size, 0);
    },
  );

  it(
    'refuses calls from another cluster, or without a cluster id',
    { timeout: 10_000 },
    async (t) => {
      const port = await startGrpc(t, new MemoryPeerBackend({ uuid: 'node-a' }));
      await assert.rejects(grpcClient(t, port, 'other-cluster').info(), PeerWrongClusterError);
      await assert.rejects(
        (async () => {
          for await (const _ of grpcClient(t, port, 'other-cluster').listBlocks())
            assert.fail('nothing listed');
        })(),
        PeerWrongClusterError,
      );

      // A bare grpc-js client: no metadata at all, then a malformed request.
      const Raw = grpc.makeGenericClientConstructor(PEER_GRPC_DEFINITION, 'Peer');
      const raw = new Raw(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
      t.after(() => raw.close());
      const call = (metadata: grpc.Metadata, request: Buffer) =>
        new Promise<grpc.ServiceError | null>((resolve) =>
          raw.hasBlocks(
            request,
            metadata,
            { deadline: Date.now() + 5000 },
            (err: grpc.ServiceError | null) => resolve(err),
          ),
        );
      const missing = await call(new grpc.Metadata(), w.encodeRefList([ref(1)]));
      assert.equal(missing?.code, grpc.status.FAILED_PRECONDITION);
      assert.match(missing!.details, /missing torus-cluster-id/);
      const metadata = new grpc.Metadata();
      metadata.set(CLUSTER_METADATA_KEY, CLUSTER);
      const malformed = await call(metadata, Buffer.from('xx'));
      assert.equal(malformed?.code, grpc.status.INVALID_ARGUMENT);
      assert.match(malformed!.details, /ref list without a count/);
    },
  );

  it(
    'meets deadlines with PeerTimeoutError and a missing service with PeerUnavailableError',
    { timeout: 10_000 },
    async (t) => {
      const layer = new FaultLayer(new MemoryPeerBackend({ uuid: 'node-a' }));
      let open!: () => void;
      layer.gate = new Promise((resolve) => (open = resolve));
      t.after(() => open());
      const c = grpcClient(t, await startGrpc(t, layer), CLUSTER, 200);
      const started = Date.now();
      await assert.rejects(c.hasBlocks([ref(1)]), PeerTimeoutError);
      assert.ok(Date.now() - started < 1000);
      open();

      await assert.rejects(
        grpcClient(t, await closedPort(), CLUSTER, 1000).info(),
        (e: unknown) => e instanceof PeerUnavailableError || e instanceof PeerTimeoutError,
      );
    },
  );

  it('maps every TBP status to a gRPC code and back', () => {
    for (const status of [
      w.STATUS_NOT_FOUND,
      w.STATUS_CHECKSUM,
      w.STATUS_NO_SPACE,
      w.STATUS_BAD_REQUEST,
      w.STATUS_INTERNAL,
      w.STATUS_WRONG_CLUSTER,
      w.STATUS_SHUTTING_DOWN,
    ]) {
      assert.equal(fromGrpcCode(toGrpcCode(status)), status, w.statusName(status));
    }
    assert.equal(toGrpcCode(w.STATUS_CHECKSUM), grpc.status.DATA_LOSS);
    assert.equal(fromGrpcCode(grpc.status.UNKNOWN), w.STATUS_INTERNAL);
  });
});
