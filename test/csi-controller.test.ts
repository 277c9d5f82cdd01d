/**
 * The CSI plugin's Identity and Controller services, as Kubernetes' sidecars
 * call them: real `torusblk csi --controller` processes over their unix
 * socket, against (a) a three-node cluster with real etcd and (b) a single
 * node's data directory with its torusd running. One scenario for both:
 * every RPC, its idempotency and the error codes the CSI spec names, hostile
 * input (missing fields, 0 and 2^63 bytes, unknown parameters, foreign ids)
 * answered clearly with nothing created or deleted, and a volume deleted
 * while it has snapshots (hidden until its last snapshot goes).
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { status } from '@grpc/grpc-js';
import { Torus } from '../src/library/torus.js';
import { Cluster } from './cluster-fixture.js';
import { etcdMissing } from './etcd-server.js';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';
import { CsiClient, rejectsWith, startCsiPlugin, type CsiProcess } from './support/csi-client.js';

const MiB = 2 ** 20;
const RWO_MOUNT = { mount: { fs_type: '' }, access_mode: { mode: 'SINGLE_NODE_WRITER' } };
const RWX_MOUNT = { mount: {}, access_mode: { mode: 'MULTI_NODE_MULTI_WRITER' } };
const RWX_BLOCK = { block: {}, access_mode: { mode: 'MULTI_NODE_MULTI_WRITER' } };

interface Target {
  client: CsiClient;
  torus: Torus;
  cluster: boolean;
}

/** Names of the volumes Torus has, every one (hidden ones too). */
async function torusVolumes(torus: Torus): Promise<string[]> {
  return (await torus.listVolumes()).map((v) => v.name).sort();
}

async function scenario(target: Target): Promise<void> {
  const { client, torus, cluster } = target;
  const c = (method: string, request: Record<string, unknown> = {}) =>
    client.controller(method, request);

  // ── Identity ──
  const info = await client.call('Identity', 'GetPluginInfo');
  assert.equal(info.name, 'csi.torus.dev');
  assert.match(info.vendor_version, /^\d+\.\d+\.\d+/);
  const plugin = await client.call('Identity', 'GetPluginCapabilities');
  assert.deepEqual(
    plugin.capabilities.map(
      (cap: Record<string, { type: string }>) => cap.service?.type ?? cap.volume_expansion?.type,
    ),
    ['CONTROLLER_SERVICE', 'ONLINE'],
  );
  assert.equal((await client.call('Identity', 'Probe')).ready.value, true);
  const caps = (await c('ControllerGetCapabilities')).capabilities.map(
    (cap: { rpc: { type: string } }) => cap.rpc.type,
  );
  for (const cap of [
    'CREATE_DELETE_VOLUME',
    'CREATE_DELETE_SNAPSHOT',
    'LIST_SNAPSHOTS',
    'CLONE_VOLUME',
    'EXPAND_VOLUME',
    'GET_CAPACITY',
    'LIST_VOLUMES',
  ])
    assert.ok(caps.includes(cap), cap);
  assert.ok(
    !caps.includes('PUBLISH_UNPUBLISH_VOLUME'),
    'no attach step: every node serves every volume',
  );
  await rejectsWith(
    c('ControllerPublishVolume', { volume_id: 'x', node_id: 'n' }),
    status.UNIMPLEMENTED,
  );
  await rejectsWith(client.call('Node', 'NodeGetInfo'), status.UNIMPLEMENTED);

  // ── CreateVolume: rounding, parameters, context, idempotency ──
  const before = await torusVolumes(torus);
  const parameters = {
    ...(cluster ? { replication: '2' } : {}),
    encrypted: 'false',
    fsType: 'xfs',
    'csi.storage.k8s.io/pvc/name': 'data',
    'csi.storage.k8s.io/pvc/namespace': 'default',
  };
  const request = {
    name: 'pvc-a',
    capacity_range: { required_bytes: String(10 * MiB + 1) },
    volume_capabilities: [RWO_MOUNT],
    parameters,
  };
  const created = (await c('CreateVolume', request)).volume;
  assert.equal(created.volume_id, 'pvc-a');
  const blockSize = Number(created.volume_context.blockSize);
  assert.ok(blockSize >= 4096, `block size ${blockSize}`);
  assert.equal(Number(created.capacity_bytes), Math.ceil((10 * MiB + 1) / blockSize) * blockSize);
  assert.equal(created.volume_context.fsType, 'xfs');
  assert.deepEqual(
    (await c('CreateVolume', request)).volume,
    created,
    'same name, same request: the same volume',
  );
  const wider = {
    ...request,
    capacity_range: { required_bytes: String(5 * MiB), limit_bytes: String(64 * MiB) },
  };
  assert.equal(
    (await c('CreateVolume', wider)).volume.capacity_bytes,
    created.capacity_bytes,
    'a compatible range: the same volume',
  );
  await rejectsWith(
    c('CreateVolume', { ...request, capacity_range: { required_bytes: String(20 * MiB) } }),
    status.ALREADY_EXISTS,
    /pvc-a already exists/,
  );
  await rejectsWith(
    c('CreateVolume', { ...request, parameters: { ...parameters, encrypted: 'true' } }),
    cluster ? status.FAILED_PRECONDITION : status.ALREADY_EXISTS,
  );

  // ── hostile CreateVolume: clear errors, nothing created ──
  const valid = {
    name: 'pvc-hostile',
    volume_capabilities: [RWO_MOUNT],
    capacity_range: { required_bytes: String(MiB) },
  };
  await rejectsWith(
    c('CreateVolume', { ...valid, name: '' }),
    status.INVALID_ARGUMENT,
    /name is required/,
  );
  await rejectsWith(
    c('CreateVolume', { ...valid, name: 'bad/name' }),
    status.INVALID_ARGUMENT,
    /cannot be a Torus volume name/,
  );
  await rejectsWith(
    c('CreateVolume', { ...valid, volume_capabilities: [] }),
    status.INVALID_ARGUMENT,
    /volume_capabilities is required/,
  );
  await rejectsWith(
    c('CreateVolume', { ...valid, volume_capabilities: [{ mount: {} }] }),
    status.INVALID_ARGUMENT,
    /access_mode/,
  );
  await rejectsWith(
    c('CreateVolume', { ...valid, capacity_range: { required_bytes: '9223372036854775807' } }),
    status.OUT_OF_RANGE,
    /largest Torus volume/,
  );
  await rejectsWith(
    c('CreateVolume', {
      ...valid,
      capacity_range: { required_bytes: String(8 * MiB), limit_bytes: String(4 * MiB) },
    }),
    status.OUT_OF_RANGE,
  );
  await rejectsWith(
    c('CreateVolume', { ...valid, capacity_range: { required_bytes: '-1' } }),
    status.INVALID_ARGUMENT,
    /negative/,
  );
  await rejectsWith(
    c('CreateVolume', { ...valid, parameters: { replicas: '3' } }),
    status.INVALID_ARGUMENT,
    /unknown StorageClass parameter "replicas"/,
  );
  await rejectsWith(
    c('CreateVolume', { ...valid, parameters: { replication: 'two' } }),
    status.INVALID_ARGUMENT,
    /parameter replication/,
  );
  await rejectsWith(
    c('CreateVolume', { ...valid, parameters: { encrypted: 'yes' } }),
    status.INVALID_ARGUMENT,
    /parameter encrypted/,
  );
  await rejectsWith(
    c('CreateVolume', { ...valid, parameters: { fsType: 'btrfs' } }),
    status.INVALID_ARGUMENT,
    /parameter fsType/,
  );
  await rejectsWith(
    c('CreateVolume', {
      ...valid,
      volume_capabilities: [
        { mount: { fs_type: 'ntfs' }, access_mode: { mode: 'SINGLE_NODE_WRITER' } },
      ],
    }),
    status.INVALID_ARGUMENT,
    /fs_type "ntfs"/,
  );
  await rejectsWith(
    c('CreateVolume', { ...valid, volume_capabilities: [RWX_MOUNT] }),
    status.INVALID_ARGUMENT,
    /not cluster filesystems/,
  );
  await rejectsWith(
    c('CreateVolume', { ...valid, volume_capabilities: [RWX_BLOCK] }),
    status.INVALID_ARGUMENT,
    /write lock/,
  );
  await rejectsWith(
    c('CreateVolume', {
      ...valid,
      volume_content_source: { snapshot: { snapshot_id: 'nope@none' } },
    }),
    status.NOT_FOUND,
  );
  await rejectsWith(
    c('CreateVolume', { ...valid, volume_content_source: { volume: { volume_id: 'not/ours' } } }),
    status.NOT_FOUND,
  );
  assert.deepEqual(
    await torusVolumes(torus),
    [...before, 'pvc-a'].sort(),
    'hostile requests created nothing',
  );

  // Zero capacity: the documented default (1 GiB), thin.
  const defaulted = (
    await c('CreateVolume', {
      name: 'pvc-default',
      volume_capabilities: [{ block: {}, access_mode: { mode: 'MULTI_NODE_READER_ONLY' } }],
    })
  ).volume;
  assert.equal(defaulted.capacity_bytes, String(2 ** 30));
  assert.equal(defaulted.volume_context.fsType, 'ext4', 'fsType defaults to ext4');

  // ── ValidateVolumeCapabilities ──
  const confirmed = await c('ValidateVolumeCapabilities', {
    volume_id: 'pvc-a',
    volume_capabilities: [RWO_MOUNT],
  });
  assert.equal(confirmed.confirmed.volume_capabilities.length, 1);
  const refused = await c('ValidateVolumeCapabilities', {
    volume_id: 'pvc-a',
    volume_capabilities: [RWX_MOUNT],
  });
  assert.equal(refused.confirmed, null);
  assert.match(refused.message, /not cluster filesystems/);
  await rejectsWith(
    c('ValidateVolumeCapabilities', { volume_id: 'pvc-zzz', volume_capabilities: [RWO_MOUNT] }),
    status.NOT_FOUND,
  );
  await rejectsWith(
    c('ValidateVolumeCapabilities', { volume_id: 'pvc-a' }),
    status.INVALID_ARGUMENT,
  );
  await rejectsWith(
    c('ValidateVolumeCapabilities', { volume_capabilities: [RWO_MOUNT] }),
    status.INVALID_ARGUMENT,
  );

  // ── ControllerExpandVolume: grow only ──
  const grown = await c('ControllerExpandVolume', {
    volume_id: 'pvc-a',
    capacity_range: { required_bytes: String(32 * MiB) },
    volume_capability: RWO_MOUNT,
  });
  assert.equal(grown.capacity_bytes, String(32 * MiB));
  assert.equal(grown.node_expansion_required, true);
  const again = await c('ControllerExpandVolume', {
    volume_id: 'pvc-a',
    capacity_range: { required_bytes: String(16 * MiB) },
  });
  assert.equal(again.capacity_bytes, String(32 * MiB), 'already larger: OK, unchanged');
  const block = await c('ControllerExpandVolume', {
    volume_id: 'pvc-default',
    capacity_range: { required_bytes: String(2 ** 30) },
    volume_capability: { block: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } },
  });
  assert.equal(block.node_expansion_required, false, 'a raw block volume needs no node step');
  await rejectsWith(
    c('ControllerExpandVolume', {
      volume_id: 'pvc-a',
      capacity_range: { required_bytes: String(16 * MiB), limit_bytes: String(16 * MiB) },
    }),
    status.OUT_OF_RANGE,
    /do not shrink/,
  );
  await rejectsWith(
    c('ControllerExpandVolume', {
      volume_id: 'pvc-a',
      capacity_range: { required_bytes: '9223372036854775807' },
    }),
    status.OUT_OF_RANGE,
  );
  await rejectsWith(
    c('ControllerExpandVolume', {
      volume_id: 'pvc-zzz',
      capacity_range: { required_bytes: String(MiB) },
    }),
    status.NOT_FOUND,
  );
  await rejectsWith(
    c('ControllerExpandVolume', { volume_id: 'pvc-a' }),
    status.INVALID_ARGUMENT,
    /required_bytes is required/,
  );
  await rejectsWith(
    c('ControllerExpandVolume', { capacity_range: { required_bytes: String(MiB) } }),
    status.INVALID_ARGUMENT,
    /volume_id/,
  );

  // ── snapshots ──
  const snap = (await c('CreateSnapshot', { source_volume_id: 'pvc-a', name: 'snapshot-1' }))
    .snapshot;
  assert.equal(snap.snapshot_id, 'pvc-a@snapshot-1');
  assert.equal(snap.source_volume_id, 'pvc-a');
  assert.equal(snap.ready_to_use, true);
  assert.equal(snap.size_bytes, String(32 * MiB));
  assert.ok(Number(snap.creation_time.seconds) > 1.7e9);
  assert.deepEqual(
    (await c('CreateSnapshot', { source_volume_id: 'pvc-a', name: 'snapshot-1' })).snapshot,
    snap,
    'idempotent',
  );
  await rejectsWith(
    c('CreateSnapshot', { source_volume_id: 'pvc-default', name: 'snapshot-1' }),
    status.ALREADY_EXISTS,
    /pvc-a/,
  );
  await rejectsWith(
    c('CreateSnapshot', { source_volume_id: 'pvc-a' }),
    status.INVALID_ARGUMENT,
    /name is required/,
  );
  await rejectsWith(
    c('CreateSnapshot', { name: 'snapshot-2' }),
    status.INVALID_ARGUMENT,
    /source_volume_id is required/,
  );
  await rejectsWith(
    c('CreateSnapshot', { source_volume_id: 'pvc-zzz', name: 'snapshot-2' }),
    status.NOT_FOUND,
  );
  await rejectsWith(
    c('CreateSnapshot', { source_volume_id: 'pvc-a', name: 'torus-csi-deleted' }),
    status.INVALID_ARGUMENT,
    /reserved/,
  );
  await c('CreateSnapshot', { source_volume_id: 'pvc-default', name: 'snapshot-2' });

  const ids = async (req: Record<string, unknown>) =>
    (await c('ListSnapshots', req)).entries.map(
      (e: { snapshot: { snapshot_id: string } }) => e.snapshot.snapshot_id,
    );
  assert.deepEqual(await ids({}), ['pvc-a@snapshot-1', 'pvc-default@snapshot-2']);
  assert.deepEqual(await ids({ source_volume_id: 'pvc-a' }), ['pvc-a@snapshot-1']);
  assert.deepEqual(await ids({ snapshot_id: 'pvc-default@snapshot-2' }), [
    'pvc-default@snapshot-2',
  ]);
  assert.deepEqual(
    await ids({ snapshot_id: 'pvc-default@snapshot-2', source_volume_id: 'pvc-a' }),
    [],
  );
  assert.deepEqual(await ids({ snapshot_id: 'not-ours' }), []);
  assert.deepEqual(await ids({ source_volume_id: 'pvc-zzz' }), []);
  const first = await c('ListSnapshots', { max_entries: 1 });
  assert.equal(first.entries.length, 1);
  assert.notEqual(first.next_token, '');
  const second = await c('ListSnapshots', { max_entries: 1, starting_token: first.next_token });
  assert.deepEqual(
    second.entries.map((e: { snapshot: { snapshot_id: string } }) => e.snapshot.snapshot_id),
    ['pvc-default@snapshot-2'],
  );
  assert.equal(second.next_token, '');
  await rejectsWith(c('ListSnapshots', { starting_token: 'garbage' }), status.ABORTED);

  // ── clones: from a snapshot and from a volume ──
  const fromSnapshot = (
    await c('CreateVolume', {
      name: 'pvc-c',
      volume_capabilities: [RWO_MOUNT],
      parameters,
      volume_content_source: { snapshot: { snapshot_id: 'pvc-a@snapshot-1' } },
    })
  ).volume;
  assert.equal(fromSnapshot.capacity_bytes, String(32 * MiB), 'a clone is its source’s size');
  assert.equal(fromSnapshot.content_source.snapshot.snapshot_id, 'pvc-a@snapshot-1');
  assert.deepEqual(
    (
      await c('CreateVolume', {
        name: 'pvc-c',
        volume_capabilities: [RWO_MOUNT],
        parameters,
        volume_content_source: { snapshot: { snapshot_id: 'pvc-a@snapshot-1' } },
      })
    ).volume.capacity_bytes,
    String(32 * MiB),
  );
  await rejectsWith(
    c('CreateVolume', { name: 'pvc-c', volume_capabilities: [RWO_MOUNT], parameters }),
    status.ALREADY_EXISTS,
    /clone/,
  );
  await rejectsWith(
    c('CreateVolume', {
      name: 'pvc-small',
      volume_capabilities: [RWO_MOUNT],
      capacity_range: { limit_bytes: String(MiB) },
      volume_content_source: { volume: { volume_id: 'pvc-a' } },
    }),
    status.OUT_OF_RANGE,
    /smaller/,
  );
  const fromVolume = (
    await c('CreateVolume', {
      name: 'pvc-d',
      volume_capabilities: [RWO_MOUNT],
      capacity_range: { required_bytes: String(48 * MiB) },
      volume_content_source: { volume: { volume_id: 'pvc-a' } },
    })
  ).volume;
  assert.equal(fromVolume.capacity_bytes, String(48 * MiB));

  // ── ListVolumes paging ──
  const names = async (req: Record<string, unknown>) => {
    const page = await c('ListVolumes', req);
    return {
      names: page.entries.map((e: { volume: { volume_id: string } }) => e.volume.volume_id),
      next: page.next_token as string,
    };
  };
  const all = await names({});
  assert.deepEqual(all.names, [...before, 'pvc-a', 'pvc-c', 'pvc-d', 'pvc-default'].sort());
  const paged: string[] = [];
  let token = '';
  do {
    const page = await names({ max_entries: 2, starting_token: token });
    assert.ok(page.names.length <= 2);
    paged.push(...page.names);
    token = page.next;
  } while (token !== '');
  assert.deepEqual(paged, all.names);
  await rejectsWith(c('ListVolumes', { starting_token: 't1.!!' }), status.ABORTED);
  await rejectsWith(c('ListVolumes', { max_entries: -1 }), status.INVALID_ARGUMENT);

  // ── GetCapacity ──
  const capacity = await c('GetCapacity', { parameters: cluster ? { replication: '3' } : {} });
  assert.ok(Number(capacity.available_capacity) > 0, `available ${capacity.available_capacity}`);
  assert.ok(Number(capacity.available_capacity) <= Number(capacity.maximum_volume_size.value));
  await rejectsWith(
    c('GetCapacity', { parameters: { colour: 'blue' } }),
    status.INVALID_ARGUMENT,
    /colour/,
  );
  assert.equal(
    (await c('GetCapacity', { volume_capabilities: [RWX_MOUNT] })).available_capacity,
    '0',
  );

  // ── delete: foreign and unknown ids are OK and touch nothing ──
  const standing = await torusVolumes(torus);
  await c('DeleteVolume', { volume_id: 'pvc-never-was' });
  await c('DeleteVolume', { volume_id: '../../etc/passwd' });
  await c('DeleteSnapshot', { snapshot_id: 'pvc-a' });
  await c('DeleteSnapshot', { snapshot_id: 'pvc-a@never' });
  await rejectsWith(c('DeleteVolume', {}), status.INVALID_ARGUMENT, /volume_id is required/);
  await rejectsWith(c('DeleteSnapshot', {}), status.INVALID_ARGUMENT, /snapshot_id is required/);
  assert.deepEqual(await torusVolumes(torus), standing, 'nothing deleted');
  assert.equal((await ids({})).length, 2);

  // ── a volume deleted while it has a snapshot: hidden, its snapshot lives on ──
  await c('DeleteVolume', { volume_id: 'pvc-a' });
  await c('DeleteVolume', { volume_id: 'pvc-a' });
  assert.ok(!(await names({})).names.includes('pvc-a'), 'hidden from ListVolumes');
  assert.ok((await torusVolumes(torus)).includes('pvc-a'), 'kept for its snapshot');
  assert.deepEqual(await ids({ source_volume_id: 'pvc-a' }), ['pvc-a@snapshot-1']);
  await rejectsWith(
    c('CreateVolume', request),
    status.ALREADY_EXISTS,
    /kept until its snapshots are deleted/,
  );
  await rejectsWith(
    c('ControllerExpandVolume', {
      volume_id: 'pvc-a',
      capacity_range: { required_bytes: String(64 * MiB) },
    }),
    status.NOT_FOUND,
  );
  await rejectsWith(
    c('CreateSnapshot', { source_volume_id: 'pvc-a', name: 'snapshot-3' }),
    status.NOT_FOUND,
  );
  await c('CreateVolume', {
    name: 'pvc-e',
    volume_capabilities: [RWO_MOUNT],
    parameters,
    volume_content_source: { snapshot: { snapshot_id: 'pvc-a@snapshot-1' } },
  });
  await c('DeleteSnapshot', { snapshot_id: 'pvc-a@snapshot-1' });
  assert.ok(!(await torusVolumes(torus)).includes('pvc-a'), 'gone with its last snapshot');
  await c('DeleteSnapshot', { snapshot_id: 'pvc-a@snapshot-1' });

  // ── everything deleted ──
  for (const id of ['pvc-default@snapshot-2']) await c('DeleteSnapshot', { snapshot_id: id });
  for (const id of ['pvc-c', 'pvc-d', 'pvc-e', 'pvc-default'])
    await c('DeleteVolume', { volume_id: id });
  assert.deepEqual(await torusVolumes(torus), before);
  assert.deepEqual(await ids({}), []);
}

describe(
  'torusblk csi --controller on a three-node cluster',
  { skip: etcdMissing(), timeout: 120_000 },
  () => {
    let cluster: Cluster | undefined;
    let plugin: CsiProcess | undefined;
    let client: CsiClient | undefined;
    let torus: Torus | undefined;
    let dir = '';
    before(async () => {
      cluster = await Cluster.start({ nodes: 3, replication: 2 });
      dir = await mkdtemp(join(tmpdir(), 'torus-csi-'));
      plugin = await startCsiPlugin(join(dir, 'csi', 'csi.sock'), [
        '--controller',
        '--etcd',
        cluster.endpoint,
      ]);
      client = new CsiClient(plugin.socket);
      torus = await Torus.connect({ etcd: { endpoints: cluster.endpoint } });
    });
    after(async () => {
      client?.close();
      await torus?.close();
      const code = await plugin?.stop();
      await cluster?.stop();
      if (dir) await rm(dir, { recursive: true, force: true });
      assert.equal(code, 0, `the plugin stops cleanly on SIGTERM:\n${plugin?.output()}`);
    });

    test('every controller RPC, idempotent, with the spec’s error codes', async () => {
      await scenario({ client: client!, torus: torus!, cluster: true });
    });
  },
);

describe('torusblk csi --controller on a single node', { timeout: 90_000 }, () => {
  let node: TorusdProcess | undefined;
  let plugin: CsiProcess | undefined;
  let client: CsiClient | undefined;
  let torus: Torus | undefined;
  let dataDir = '';
  let dir = '';
  before(async () => {
    dataDir = await makeDataDir('csi');
    node = await startTorusd({ dataDir, size: '256MiB' });
    dir = await mkdtemp(join(tmpdir(), 'torus-csi-'));
    plugin = await startCsiPlugin(join(dir, 'csi.sock'), ['--controller', '--data-dir', dataDir]);
    client = new CsiClient(plugin.socket);
    torus = await Torus.open({ dataDir });
  });
  after(async () => {
    client?.close();
    await torus?.close();
    await plugin?.stop();
    await node?.stop();
    if (dataDir) await removeDir(dataDir);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  test('every controller RPC, idempotent, with the spec’s error codes', async () => {
    await scenario({ client: client!, torus: torus!, cluster: false });
  });

  test('replication is refused on a single node, by name', async () => {
    await rejectsWith(
      client!.controller('CreateVolume', {
        name: 'pvc-r',
        volume_capabilities: [RWO_MOUNT],
        parameters: { replication: '2' },
      }),
      status.INVALID_ARGUMENT,
      /parameter replication: this driver serves a single node/,
    );
  });
});

describe('torusblk csi flags', { timeout: 60_000 }, () => {
  test('bad flags exit 2 naming the flag', async () => {
    const attach = await runCli('torusblk', ['csi', '--node', '--attach', 'magic']);
    assert.equal(attach.code, 2, attach.stderr);
    assert.match(attach.stderr, /--attach: expected auto, kernel, nbdfuse/);
    const endpoint = await runCli('torusblk', [
      'csi',
      '--controller',
      '--data-dir',
      '/tmp',
      '--endpoint',
      'localhost:9000',
    ]);
    assert.equal(endpoint.code, 2, endpoint.stderr);
    assert.match(endpoint.stderr, /--endpoint/);
    const nothing = await runCli('torusblk', ['csi', '--controller']);
    assert.equal(nothing.code, 2);
    assert.match(nothing.stderr, /--etcd ENDPOINTS .* or --data-dir DIR/);
    const nbd = await runCli('torusblk', ['csi', '--node', '--nbd-address', 'unix:relative.sock']);
    assert.equal(nbd.code, 2);
    assert.match(nbd.stderr, /--nbd-address/);
    // This machine has no nbd module: the kernel path is refused before anything starts.
    const kernel = await runCli('torusblk', [
      'csi',
      '--node',
      '--attach',
      'kernel',
      '--endpoint',
      'unix:///tmp/torus-csi-kernel.sock',
    ]);
    if (!existsSync('/sys/module/nbd')) {
      assert.equal(kernel.code, 2, kernel.stderr);
      assert.match(kernel.stderr, /--attach: /);
    }
  });
});
