/**
 * INTENT_APPEND / INTENT_SEAL / INTENT_COVERED end to end over real
 * sockets: a PeerServer whose backend holds a real HolderLog answers a
 * client's appends, a seal in pages (records that check), refuses a
 * sealed-out writer with FENCED and a bad record with CHECKSUM; a backend
 * without a holder log answers BAD_REQUEST and the connection goes on.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { hasher, type Hasher } from '../blocks/hash.js';
import { HolderLog, MIN_HOLDER_LOG_BYTES } from '../intent-log/holder-log.js';
import { CLUSTER, quietLogger } from '../../../test/support/peer-helpers.js';
import { MemoryPeerBackend } from '../../../test/support/memory-peer-backend.js';
import { PeerClient } from './client.js';
import { PeerStatusError } from './errors.js';
import { PeerServer } from './server.js';
import * as w from './wire.js';

function record(hash: Hasher, token: number, seq: number, length = 4096): Buffer {
  const bytes = Buffer.alloc(w.INTENT_RECORD_HEADER_BYTES + length);
  w.encodeIntentHeader(bytes, 0, { volumeId: 5, flags: 0, token, seq, offset: 0, length });
  bytes.fill(seq, w.INTENT_RECORD_HEADER_BYTES);
  w.stampIntentRecord(bytes, 0, hash);
  return bytes;
}

async function serve(t: TestContext, holder: HolderLog | undefined): Promise<PeerClient> {
  const backend = new MemoryPeerBackend({ uuid: 'holder' });
  if (holder) Object.assign(backend, { intents: holder });
  const server = new PeerServer(backend, {
    clusterId: CLUSTER,
    nodeId: 'holder',
    log: quietLogger(),
  });
  const { port } = await server.listen('127.0.0.1', 0);
  const client = new PeerClient({
    host: '127.0.0.1',
    port,
    clusterId: CLUSTER,
    nodeId: 'writer',
    log: quietLogger(),
  });
  t.after(async () => {
    await client.close();
    await server.close({ drainMs: 500 });
  });
  return client;
}

const statusOf = (status: number) => (err: unknown) =>
  err instanceof PeerStatusError && err.status === status;

describe('peer intent ops', { timeout: 30_000 }, () => {
  it('appends, seals in pages, fences the sealed-out writer, drops what is covered', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'torus-intents-'));
    const holder = await HolderLog.open(dir, MIN_HOLDER_LOG_BYTES, quietLogger());
    t.after(async () => {
      await holder.close();
      await rm(dir, { recursive: true, force: true });
    });
    const hash = await hasher();
    const peer = await serve(t, holder);

    assert.deepEqual(await peer.appendIntents([record(hash, 3, 1), record(hash, 3, 2)]), {
      pressure: false,
    });
    const big = w.MAX_INTENT_LENGTH;
    for (let seq = 3; seq <= 6; seq++) await peer.appendIntents([record(hash, 3, seq, big)]);

    const seqs: number[] = [];
    for (let skip = 0; ;) {
      const page = await peer.sealIntents({ volumeId: 5, token: 4, skip });
      for (const r of page.records) {
        assert.ok(w.intentRecordIntact(r, hash), 'a held record arrives intact');
        assert.equal(r.payload[0], r.seq);
        seqs.push(r.seq);
      }
      skip += page.records.length;
      if (!page.more) break;
      assert.ok(page.records.length > 0);
    }
    assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6]);

    await assert.rejects(peer.appendIntents([record(hash, 3, 7)]), statusOf(w.STATUS_FENCED));
    const bad = record(hash, 4, 1);
    bad[60] ^= 1;
    await assert.rejects(peer.appendIntents([bad]), statusOf(w.STATUS_CHECKSUM));
    await peer.appendIntents([record(hash, 4, 1)]);

    await peer.intentsCovered({ volumeId: 5, token: 4, seq: 1 });
    const after = await peer.sealIntents({ volumeId: 5, token: 5, skip: 0 });
    assert.deepEqual(
      after.records.map((r) => `${r.token}/${r.seq}`),
      ['4/1'],
    );
  });

  it('a node without a holder log answers BAD_REQUEST and goes on serving', async (t) => {
    const hash = await hasher();
    const peer = await serve(t, undefined);
    await assert.rejects(peer.appendIntents([record(hash, 1, 1)]), statusOf(w.STATUS_BAD_REQUEST));
    await assert.rejects(
      peer.sealIntents({ volumeId: 5, token: 2, skip: 0 }),
      statusOf(w.STATUS_BAD_REQUEST),
    );
    assert.ok((await peer.ping()) >= 0);
  });

  it('refuses on the client what no holder would take, sending nothing', async (t) => {
    const hash = await hasher();
    const peer = await serve(t, undefined);
    const other = Buffer.from(record(hash, 2, 1));
    await assert.rejects(
      peer.appendIntents([record(hash, 1, 1), other]),
      /one volume and one token/,
    );
    await assert.rejects(peer.appendIntents([]), /0 records/);
    assert.ok((await peer.ping()) >= 0, 'the connection is in step');
  });
});
