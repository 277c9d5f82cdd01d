/**
 * Membership against the embedded metadata store (a real store with real
 * leases): node identity, ring compare-and-swap, registration with its lease
 * life cycle, and the peer table's view. The same code against etcd, through
 * the binaries, is test/cluster-cli.test.ts.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ConflictError, NotFoundError } from '../../common/errors.js';
import { logger } from '../../common/log.js';
import { openEmbeddedMetadataStore } from '../metadata/embedded/index.js';
import type { MetadataStore } from '../metadata/store.js';
import { eventually } from '../../../test/support/store-suite.js';
import { bindToCluster, loadOrCreateNodeId, readClusterBinding } from './node-identity.js';
import { decodePeerInfo, nodeKey, type PeerInfo } from './peer-info.js';
import { memberRows, PeerTable, readMembership } from './peer-table.js';
import { NodeRegistration } from './registration.js';
import {
  addMembers,
  casRing,
  decodeRing,
  initRing,
  readRing,
  removeMembers,
  RING_KEY,
  RingFormatError,
  RingVersionConflictError,
  setReplication,
} from './ring-store.js';

const quiet = logger('membership').child({}, { level: 'error' });
const tempDirs: string[] = [];
const stores: MetadataStore[] = [];

async function tempDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'torus-membership-'));
  tempDirs.push(dir);
  return dir;
}

async function store(): Promise<MetadataStore> {
  const meta = await openEmbeddedMetadataStore(join(await tempDir(), 'meta'), { log: quiet });
  stores.push(meta);
  return meta;
}

after(async () => {
  for (const meta of stores) await meta.close();
  await Promise.all(tempDirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

/** A store whose leases are never renewed: each runs out after its TTL, as when etcd is unreachable. */
function withoutKeepAlive(meta: MetadataStore): MetadataStore {
  return new Proxy(meta, {
    get(target, name, receiver) {
      if (name === 'grantLease')
        return (ttl: number) => target.grantLease(ttl, { keepAlive: false });
      const value = Reflect.get(target, name, receiver);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

const usage = () => ({ capacity: 256 * 2 ** 20, used: 2 ** 20 });

function startRegistration(
  meta: MetadataStore,
  overrides: Partial<Parameters<typeof NodeRegistration.start>[0]> = {},
) {
  return NodeRegistration.start({
    meta,
    uuid: randomUUID(),
    address: 'http://127.0.0.1:40000',
    usage,
    version: 'test',
    ttlSeconds: 1,
    log: quiet,
    ...overrides,
  });
}

describe('node identity', () => {
  it('is created once per data directory and kept across restarts', async () => {
    const dir = await tempDir();
    const first = await loadOrCreateNodeId(dir);
    assert.equal(first.created, true);
    const again = await loadOrCreateNodeId(dir);
    assert.deepEqual(again, { uuid: first.uuid, created: false });
    const other = await loadOrCreateNodeId(await tempDir());
    assert.notEqual(other.uuid, first.uuid, 'another (or a wiped) directory is another node');
  });

  it('concurrent creators agree on one uuid', async () => {
    const dir = await tempDir();
    const ids = await Promise.all(Array.from({ length: 8 }, () => loadOrCreateNodeId(dir)));
    assert.equal(new Set(ids.map((i) => i.uuid)).size, 1);
    assert.equal(ids.filter((i) => i.created).length, 1);
  });

  it('a damaged node-id file is refused, not replaced', async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'node-id'), 'not-a-uuid\n');
    await assert.rejects(loadOrCreateNodeId(dir), /node id file .* is damaged/);
  });

  it('a data directory bound to one cluster refuses another', async () => {
    const dir = await tempDir();
    assert.equal(await readClusterBinding(dir), undefined);
    assert.deepEqual(await bindToCluster(dir, { clusterId: 'A', etcd: '127.0.0.1:2379' }), {
      bound: true,
    });
    assert.deepEqual(await bindToCluster(dir, { clusterId: 'A', etcd: 'http://other:2379' }), {
      bound: false,
    });
    await assert.rejects(
      bindToCluster(dir, { clusterId: 'B', etcd: '127.0.0.1:2379' }),
      ConflictError,
    );
    assert.equal((await readClusterBinding(dir))?.clusterId, 'A');
  });
});

describe('ring storage', () => {
  const member = (weight = 100) => ({ uuid: randomUUID(), weight });

  it('init creates version 1 once; changes before init are refused', async () => {
    const meta = await store();
    assert.equal(await readRing(meta), undefined);
    await assert.rejects(casRing(meta, undefined, setReplication(3)), NotFoundError);
    const { ring, created } = await initRing(meta, { replication: 3 });
    assert.equal(created, true);
    assert.deepEqual(ring.description, { version: 1, type: 'ketama', replication: 3, members: [] });
    const again = await initRing(meta, { replication: 5 });
    assert.equal(again.created, false);
    assert.equal(again.ring.description.replication, 3, 'the existing ring wins');
    assert.equal(again.ring.modRevision, ring.modRevision);
  });

  it('every change is version + 1; a change that changes nothing writes nothing', async () => {
    const meta = await store();
    await initRing(meta);
    const a = member();
    const b = member();
    const added = await casRing(meta, undefined, addMembers([a, b]));
    assert.equal(added.changed, true);
    assert.equal(added.ring.description.version, 2);
    const revision = await meta.currentRevision();
    const same = await casRing(meta, undefined, addMembers([a]));
    assert.equal(same.changed, false);
    assert.equal(same.ring.description.version, 2);
    assert.equal(await meta.currentRevision(), revision, 'no write');
    const replicated = await casRing(meta, 2, setReplication(3));
    assert.equal(replicated.ring.description.version, 3);
    const removed = await casRing(meta, undefined, removeMembers([a.uuid]));
    assert.deepEqual(removed.ring.description.members, [b]);
    assert.equal(removed.ring.description.version, 4);
    assert.deepEqual((await readRing(meta))?.description, removed.ring.description);
  });

  it('an expected version that is no longer current is a conflict, not a retry', async () => {
    const meta = await store();
    await initRing(meta);
    await casRing(meta, 1, addMembers([member()]));
    await assert.rejects(
      casRing(meta, 1, setReplication(4)),
      (err: Error) =>
        err instanceof RingVersionConflictError && /version 2, not 1/.test(err.message),
    );
    assert.equal((await readRing(meta))?.description.replication, 2);
  });

  it('concurrent changes each land exactly once, with strictly sequential versions', async () => {
    const meta = await store();
    await initRing(meta);
    const versions: number[] = [];
    const watcher = await meta.watchPrefix(RING_KEY, {}, (e) =>
      versions.push(decodeRing(e.value).version),
    );
    const members = Array.from({ length: 4 }, () => member());
    const changes = await Promise.all(
      members.map((m) => casRing(meta, undefined, addMembers([m]), { attempts: 10 })),
    );
    const final = (await readRing(meta))!.description;
    assert.equal(final.version, 5);
    assert.deepEqual(
      new Set(final.members.map((m) => m.uuid)),
      new Set(members.map((m) => m.uuid)),
    );
    assert.deepEqual(changes.map((c) => c.ring.description.version).sort(), [2, 3, 4, 5]);
    await eventually('every version watched', () => versions.length === 4);
    assert.deepEqual(versions, [2, 3, 4, 5]);
    await watcher.close();
  });

  it('out of attempts under contention: ConflictError, and nothing written', async () => {
    const meta = await store();
    await initRing(meta);
    // Another writer touches the ring between every read and compare-and-swap.
    let txns = 0;
    const contended = new Proxy(meta, {
      get(target, name) {
        if (name === 'txn') {
          return async (request: Parameters<MetadataStore['txn']>[0]) => {
            txns++;
            const kv = (await target.get(RING_KEY))!;
            await target.put(RING_KEY, kv.value);
            return target.txn(request);
          };
        }
        const value = Reflect.get(target, name);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    await assert.rejects(
      casRing(contended, undefined, setReplication(3), { attempts: 3 }),
      (err: Error) => err instanceof ConflictError && /changed 3 times/.test(err.message),
    );
    assert.equal(txns, 3, 'bounded: one compare-and-swap per attempt');
    assert.deepEqual((await readRing(meta))?.description, {
      version: 1,
      type: 'ketama',
      replication: 2,
      members: [],
    });
  });

  it('invalid rings are refused on write and on read', async () => {
    const meta = await store();
    await initRing(meta);
    assert.throws(() => setReplication(0), RingFormatError);
    await assert.rejects(
      casRing(meta, undefined, (ring) => ({ ...ring, members: [{ uuid: 'x', weight: 1 }] })),
      RingFormatError,
    );
    const m = member();
    await assert.rejects(
      casRing(meta, undefined, (ring) => ({ ...ring, members: [m, m] })),
      /appears twice/,
    );
    assert.equal((await readRing(meta))?.description.version, 1, 'nothing written');
    await meta.put(RING_KEY, Buffer.from('{"version":0}'));
    await assert.rejects(readRing(meta), RingFormatError);
  });
});

describe('registration', () => {
  it('registers under a lease, reports usage periodically, and leaves at once on stop', async () => {
    const meta = await store();
    const reg = await startRegistration(meta, { updateIntervalMs: 100 });
    const key = nodeKey(reg.uuid);
    const kv = await meta.get(key);
    assert.ok(kv?.lease, 'attached to a lease');
    const info = decodePeerInfo(kv);
    assert.equal(info.address, 'http://127.0.0.1:40000');
    assert.equal(info.capacity, 256 * 2 ** 20);
    assert.equal(info.pid, process.pid);
    assert.equal(info.rebalanceRate, 0);
    await eventually(
      'a later report',
      async () => decodePeerInfo((await meta.get(key))!).lastSeen > info.lastSeen,
    );
    await reg.stop();
    assert.equal(await meta.get(key), undefined, 'gone as soon as stop() resolves');
    await reg.stop();
  });

  it('reports the rates its callback gives at each update (rounded, never negative)', async () => {
    const meta = await store();
    let rates = {
      rebalancing: true,
      rebalanceRate: 1234.6,
      replicationRate: -1,
      rebalancePending: 65536,
    };
    const reg = await startRegistration(meta, { updateIntervalMs: 50, rates: () => rates });
    const key = nodeKey(reg.uuid);
    const first = decodePeerInfo((await meta.get(key))!);
    assert.equal(first.rebalancing, true);
    assert.equal(first.rebalanceRate, 1235);
    assert.equal(first.replicationRate, 0);
    assert.equal(first.rebalancePending, 65536);
    rates = {
      rebalancing: false,
      rebalanceRate: 0,
      replicationRate: 5_000_000,
      rebalancePending: 0,
    };
    await eventually(
      'the new rates reported',
      async () => decodePeerInfo((await meta.get(key))!).replicationRate === 5_000_000,
    );
    assert.equal(decodePeerInfo((await meta.get(key))!).rebalancing, false);
    await reg.stop();
  });

  it('a lost lease is replaced and the node registered again', async () => {
    const meta = await store();
    const reg = await startRegistration(withoutKeepAlive(meta));
    const firstLease = reg.leaseId;
    let lost = 0;
    let again = 0;
    reg.on('lost', () => lost++);
    reg.on('registered', (_info: PeerInfo, isAgain: boolean) => isAgain && again++);
    await eventually('lost and registered again', () => lost >= 1 && again >= 1, 5000);
    assert.notEqual(reg.leaseId, firstLease);
    await eventually(
      'present again',
      async () => (await meta.get(nodeKey(reg.uuid))) !== undefined,
    );
    await reg.stop();
    assert.equal(await meta.get(nodeKey(reg.uuid)), undefined);
  });

  it('a uuid held by another live node is refused; a dead predecessor on this host is taken over', async () => {
    const meta = await store();
    const uuid = randomUUID();
    const elsewhere = await startRegistration(meta, { uuid, hostname: 'other-host', pid: 4242 });
    await assert.rejects(
      startRegistration(meta, { uuid }),
      (err: Error) =>
        err instanceof ConflictError &&
        /already registered by pid 4242 on other-host/.test(err.message),
    );
    await elsewhere.stop();

    const deadPid = spawnSync(process.execPath, ['-e', '0']).pid!;
    const predecessor = await startRegistration(meta, { uuid, pid: deadPid, ttlSeconds: 30 });
    const successor = await startRegistration(meta, { uuid });
    const info = decodePeerInfo((await meta.get(nodeKey(uuid)))!);
    assert.equal(info.instance, successor.instance);
    await predecessor.stop(); // revoking the old lease must not delete the successor's key
    assert.ok(await meta.get(nodeKey(uuid)), 'the successor stays registered');
    await successor.stop();
  });
});

describe('peer table', () => {
  it('follows registrations and the ring: Avail, OK, DOWN', async () => {
    const meta = await store();
    await initRing(meta, { replication: 2 });
    const table = await PeerTable.open(meta, { log: quiet });
    const events: string[] = [];
    table.on('peer-up', (p: PeerInfo) => events.push(`up ${p.uuid}`));
    table.on('peer-down', (uuid: string) => events.push(`down ${uuid}`));
    table.on('ring', (r) => events.push(`ring ${r?.version}`));
    assert.equal(table.ring()?.version, 1);
    assert.deepEqual(table.peers(), []);

    const a = await startRegistration(meta, { address: 'http://127.0.0.1:40000', ttlSeconds: 5 });
    const b = await startRegistration(meta, { address: 'http://127.0.0.1:40001', ttlSeconds: 5 });
    await eventually('both seen', () => table.peers().length === 2);
    assert.deepEqual(
      table.rows().map((r) => r.status),
      ['Avail', 'Avail'],
    );

    await casRing(
      meta,
      undefined,
      addMembers([
        { uuid: a.uuid, weight: 10 },
        { uuid: b.uuid, weight: 10 },
      ]),
    );
    await eventually('ring 2', () => table.ring()?.version === 2);
    assert.deepEqual(
      table.rows().map((r) => r.status),
      ['OK', 'OK'],
    );

    await b.stop();
    await eventually('b down', () => table.peers().length === 1);
    assert.deepEqual(
      table.rows().map((r) => [r.uuid, r.status]),
      [
        [a.uuid, 'OK'],
        [b.uuid, 'DOWN'],
      ],
    );
    assert.deepEqual(events, [`up ${a.uuid}`, `up ${b.uuid}`, 'ring 2', `down ${b.uuid}`]);

    const snapshot = await readMembership(meta, quiet);
    assert.deepEqual([...snapshot.peers.keys()], [a.uuid]);
    assert.equal(snapshot.ring?.description.version, 2);
    await table.close();
    await a.stop();
  });

  it('rows: live nodes by address, then ring members with no registration', () => {
    const peer = (uuid: string, address: string) => ({ uuid, address }) as PeerInfo;
    const [u1, u2, u3] = [randomUUID(), randomUUID(), randomUUID()];
    const rows = memberRows([peer(u2, 'http://b'), peer(u1, 'http://a')], {
      version: 3,
      type: 'ketama',
      replication: 2,
      members: [
        { uuid: u1, weight: 5 },
        { uuid: u3, weight: 7 },
      ],
    });
    assert.deepEqual(
      rows.map((r) => [r.uuid, r.status, r.weight]),
      [
        [u1, 'OK', 5],
        [u2, 'Avail', undefined],
        [u3, 'DOWN', 7],
      ],
    );
  });
});
