/**
 * torusd serving its store to peers: a real etcd, real ./bin/torusd nodes
 * started with --etcd, each listening for TBP on its --peer-address, and a
 * PeerClient in the test talking to them as another node of the cluster
 * would — HELLO with the cluster id and the node's uuid, a block put, read
 * back and synced, refusals, a port already taken, and a killed node.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { MAP_PAGE_BIT } from '../src/model/block-ref.js';
import { RECORD_MAP_PAGE, RECORD_SEALED } from '../src/dataplane/blocks/record.js';
import { PeerClient } from '../src/dataplane/peer/client.js';
import {
  PeerStatusError,
  PeerUnavailableError,
  PeerWrongClusterError,
} from '../src/dataplane/peer/errors.js';
import { blockBytes, makeBlock, quietLogger } from './support/peer-helpers.js';
import { STATUS_BAD_REQUEST } from '../src/dataplane/peer/wire.js';
import { freePorts, until } from './cluster-fixture.js';
import { etcdMissing, startEtcd, type EtcdServer } from './etcd-server.js';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

/** The cluster's block size unless init says otherwise. */
const BLOCK = 64 * 1024;

describe(
  'torusd serves its store to peers over TBP',
  { skip: etcdMissing(), timeout: 90_000 },
  () => {
    let etcd: EtcdServer;
    let hostPort: string;
    let ports: number[];
    let clusterId: string;
    const dirs: string[] = [];
    const nodes: TorusdProcess[] = [];
    const clients: PeerClient[] = [];
    let one: TorusdProcess;
    let two: TorusdProcess;
    let uuids: string[];
    let volumeId: number;

    before(async () => {
      etcd = await startEtcd();
      hostPort = etcd.endpoint.replace(/^http:\/\//, '');
      const init = await runCli('torusctl', ['-C', hostPort, 'init']);
      assert.equal(init.code, 0, init.stderr);
      ports = await freePorts(2);
      // Blocks put below belong to a real volume, as every peer put does: GC
      // on the nodes frees blocks of volumes the catalog does not list (and
      // keeps those of generations above the committed one, as here).
      const created = await runCli('torusctl', [
        '-C',
        hostPort,
        'volume',
        'create-block',
        'peer-put',
        '64MiB',
        '-o',
        'json',
      ]);
      assert.equal(created.code, 0, created.stderr);
      volumeId = (JSON.parse(created.stdout) as { id: number }).id;
    });

    after(async () => {
      await Promise.all(clients.map((c) => c.close()));
      await Promise.all(nodes.map((n) => n.stop('SIGKILL')));
      await etcd?.stop();
      await Promise.all(dirs.map(removeDir));
    });

    async function newDir(label: string): Promise<string> {
      const dir = await makeDataDir(label);
      dirs.push(dir);
      return dir;
    }

    async function startNode(peerAddress: string): Promise<TorusdProcess> {
      const node = await startTorusd({
        dataDir: await newDir('peer'),
        size: '256MiB',
        args: [
          '--cache-size',
          '32MiB',
          '--workers',
          '1',
          '--etcd',
          hostPort,
          '--peer-address',
          peerAddress,
        ],
      });
      nodes.push(node);
      return node;
    }

    function client(
      port: number,
      options: { clusterId?: string; expectedNodeId?: string } = {},
    ): PeerClient {
      const c = new PeerClient({
        host: '127.0.0.1',
        port,
        clusterId: options.clusterId ?? clusterId,
        nodeId: 'test-client',
        expectedNodeId: options.expectedNodeId,
        log: quietLogger(),
      });
      clients.push(c);
      return c;
    }

    test('two nodes listen on their --peer-address and answer HELLO as their uuid in the cluster', async () => {
      // Both spellings of the flag: a URL, and a bare HOST:PORT.
      [one, two] = await Promise.all([
        startNode(`http://127.0.0.1:${ports[0]}`),
        startNode(`127.0.0.1:${ports[1]}`),
      ]);
      uuids = await Promise.all(
        [one, two].map(async (n) => (await readFile(join(n.dataDir, 'node-id'), 'utf8')).trim()),
      );
      clusterId = (
        JSON.parse(await readFile(join(one.dataDir, 'cluster'), 'utf8')) as { clusterId: string }
      ).clusterId;
      // torusd prints this line after "torusd listening" (which startTorusd
      // waits for), in a write of its own: it may arrive a moment later.
      const listening = new RegExp(
        `peer protocol \\(TBP\\) listening on 127\\.0\\.0\\.1:${ports[0]} for cluster ${clusterId.replace(/[.]/g, '\\.')}`,
      );
      await until('the TBP listening line', async () =>
        listening.test(one!.output()) ? true : undefined,
      );

      for (const [i, port] of ports.entries()) {
        const c = client(port, { expectedNodeId: uuids[i] });
        assert.equal(typeof (await c.ping()), 'number');
        assert.deepEqual(c.identity, { clusterId, nodeId: uuids[i] });
      }
      const peers = await runCli('torusctl', ['-C', hostPort, 'list-peers', '-o', 'json']);
      assert.equal(peers.code, 0, peers.stderr);
      const addresses = new Map(
        (JSON.parse(peers.stdout).peers as { uuid: string; address: string }[]).map((p) => [
          p.uuid,
          p.address,
        ]),
      );
      assert.equal(addresses.get(uuids[0]), `http://127.0.0.1:${ports[0]}`);
      assert.equal(
        addresses.get(uuids[1]),
        `http://127.0.0.1:${ports[1]}`,
        'HOST:PORT is registered as a URL',
      );
    });

    test('a block put to node 1 reads back whole, is synced, and is on node 1 only', async () => {
      const c1 = client(ports[0], { expectedNodeId: uuids[0] });
      const c2 = client(ports[1], { expectedNodeId: uuids[1] });
      const data = await makeBlock({ volumeId, generation: 7, index: 3 }, blockBytes(3, BLOCK));
      const sealed = await makeBlock(
        { volumeId, generation: 7, index: 4 },
        blockBytes(4, BLOCK),
        RECORD_SEALED,
      );
      sealed.nonce = Buffer.from('twelve-bytes');
      sealed.tag = Buffer.from('sixteen-bytes-ok');
      const page = await makeBlock(
        { volumeId, generation: 7, index: MAP_PAGE_BIT + 1 },
        blockBytes(5, BLOCK),
        RECORD_MAP_PAGE,
      );
      await c1.putBlocks([data, sealed, page]);
      await c1.sync();

      for (const want of [data, sealed, page]) {
        const got = await c1.getBlock(want.ref);
        assert.ok(got, 'held by node 1');
        assert.deepEqual(
          [got.flags, got.hashLo, got.hashHi],
          [want.flags, want.hashLo, want.hashHi],
        );
        assert.deepEqual(Buffer.from(got.nonce), Buffer.from(want.nonce));
        assert.deepEqual(Buffer.from(got.tag), Buffer.from(want.tag));
        assert.ok(Buffer.from(got.data).equals(want.data), 'same bytes');
      }
      assert.deepEqual(
        await c2.hasBlocks([data.ref, sealed.ref, page.ref]),
        [false, false, false],
        'a peer put lands on the node it was sent to, nowhere else',
      );
      assert.equal(await c2.getBlock(data.ref), undefined);
      await c2.sync();

      // A block of another size than the cluster's is a bad request; the connection goes on.
      const small = await makeBlock({ volumeId, generation: 7, index: 9 }, blockBytes(9, 4096));
      await assert.rejects(
        c1.putBlocks([small]),
        (err: Error) =>
          err instanceof PeerStatusError && err.status === STATUS_BAD_REQUEST && !err.retryable,
      );
      assert.deepEqual(await c1.hasBlocks([small.ref, data.ref]), [false, true]);

      const status = await runCli('torusctl', ['--data-dir', one.dataDir, 'status']);
      assert.equal(status.code, 0, status.stderr);
      const reported = JSON.parse(status.stdout) as {
        used: number;
        cluster: { peerListen: string };
      };
      assert.equal(reported.used, 3 * BLOCK, "the received blocks are in the node's store");
      assert.equal(reported.cluster.peerListen, `127.0.0.1:${ports[0]}`);
    });

    test('a node of another cluster is refused at HELLO', async () => {
      const stranger = client(ports[0], { clusterId: '2001-01-01T00:00:00.000Z' });
      await assert.rejects(
        stranger.ping(),
        (err: Error) =>
          err instanceof PeerWrongClusterError &&
          !err.retryable &&
          /belongs to cluster/.test(err.message),
      );
    });

    test('a peer port already in use is a start-up error naming --peer-address; nothing registers', async () => {
      const dataDir = await newDir('taken');
      const r = await runCli('torusd', [
        '--data-dir',
        dataDir,
        '--size',
        '256MiB',
        '--nbd',
        '127.0.0.1:0',
        '--cache-size',
        '32MiB',
        '--workers',
        '1',
        '--etcd',
        hostPort,
        '--peer-address',
        `http://127.0.0.1:${ports[1]}`,
      ]);
      assert.equal(r.code, 1, r.stderr);
      assert.match(
        r.stderr,
        new RegExp(
          `--peer-address http://127\\.0\\.0\\.1:${ports[1]}: cannot listen on 127\\.0\\.0\\.1:${ports[1]} for the peer protocol: the port is already in use`,
        ),
      );
      const uuid = (await readFile(join(dataDir, 'node-id'), 'utf8')).trim();
      const peers = await runCli('torusctl', ['-C', hostPort, 'list-peers', '-o', 'json']);
      assert.equal(
        (JSON.parse(peers.stdout).peers as { uuid: string }[]).some((p) => p.uuid === uuid),
        false,
      );
      // Node 2 never noticed.
      assert.equal(typeof (await client(ports[1]).ping()), 'number');
    });

    test('kill -9: requests to that node fail fast with PeerUnavailableError; SIGTERM closes the port too', async () => {
      const c2 = client(ports[1]);
      await c2.ping();
      await two.stop('SIGKILL');
      let started = performance.now();
      await assert.rejects(c2.ping(), PeerUnavailableError);
      await assert.rejects(
        c2.hasBlocks([{ volumeId: 1, generation: 1, index: 1 }]),
        PeerUnavailableError,
      );
      assert.ok(
        performance.now() - started < 1000,
        `noticed in ${Math.round(performance.now() - started)} ms, not by a deadline`,
      );

      const c1 = client(ports[0]);
      await c1.ping();
      assert.equal(await one.stop('SIGTERM'), 0);
      started = performance.now();
      await assert.rejects(c1.ping(), PeerUnavailableError);
      assert.ok(performance.now() - started < 1000);
    });
  },
);
