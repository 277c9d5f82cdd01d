/**
 * The CSI Node service against a real torusd, real mounts, real loop devices
 * and the FUSE volume file (this machine has no nbd module): the handlers are
 * called directly, as the plugin's gRPC server would. Stage → publish →
 * files → unpublish → unstage → restage (files intact); block volumes; read-
 * only publication; a filesystem never reformatted, foreign data never
 * formatted; online expansion; stats and condition; a restarted service
 * finding its attachments; paths outside the kubelet directory; and at the
 * end nothing left: no mount, loop device, helper process or record.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { GrpcStatus } from '../src/csi/csi-error.js';
import { chooseAttachMode } from '../src/csi/node/attach.js';
import { createNodeService, TOPOLOGY_KEY, type NodeService } from '../src/csi/node/node-service.js';
import { NbdClient } from '../src/dataplane/nbd-client/client.js';
import {
  blockCapability,
  forceCleanup,
  helpersUnder,
  loopsUnder,
  mountCapability,
  kubeletCalls,
  mountsUnder,
} from './support/csi-node-kit.js';
import { waitFor } from '../src/csi/node/poll.js';
import { missing } from './tools.js';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const rootOnly = process.getuid?.() === 0 ? undefined : 'needs root (mounts, loop devices)';
// Bit 24 of the effective capabilities: CAP_SYS_RESOURCE (ext4's online resize needs it).
const hasCapSysResource =
  (BigInt(`0x${/CapEff:\s*([0-9a-f]+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1]}`) >>
    24n) &
  1n
    ? true
    : false;
const noFuse = existsSync('/dev/fuse') ? undefined : 'needs /dev/fuse';

describe('attach mode choice', () => {
  test('auto takes the kernel client only when both the module and nbd-client are there', () => {
    assert.equal(chooseAttachMode('auto', { nbdModule: true, nbdClient: true }), 'kernel');
    assert.equal(chooseAttachMode('auto', { nbdModule: false, nbdClient: true }), 'nbdfuse');
    assert.equal(chooseAttachMode('auto', { nbdModule: true, nbdClient: false }), 'nbdfuse');
    assert.equal(chooseAttachMode('nbdfuse', { nbdModule: true, nbdClient: true }), 'nbdfuse');
    assert.throws(
      () => chooseAttachMode('kernel', { nbdModule: false, nbdClient: true }),
      /modprobe nbd.*--attach auto/,
    );
  });
});

describe(
  'CSI node service over FUSE + loop',
  { skip: rootOnly ?? noFuse ?? missing('mkfs.ext4', 'mkfs.xfs'), timeout: 180_000 },
  () => {
    let dataDir: string;
    let torusd: TorusdProcess;
    let stateDir: string;
    let kubeletDir: string;
    let service: NodeService;
    const ctl = (...args: string[]) => runCli('torusctl', [...args, '--data-dir', dataDir]);
    const createVolume = async (name: string, size: string) => {
      const r = await ctl('volume', 'create-block', name, size);
      assert.equal(r.code, 0, r.stderr);
    };
    const newService = () =>
      createNodeService({
        nodeId: 'node-a',
        nbdAddress: `127.0.0.1:${torusd.port}`,
        stateDir,
        kubeletDir,
        attachMode: 'auto',
        kernelNbd: { nbdModule: false, nbdClient: false },
      });
    const { staging, target, stage, publish, unpublish, unstage } = kubeletCalls(
      () => service,
      () => kubeletDir,
    );
    const code = (status: GrpcStatus) => ({ code: status });

    before(async () => {
      dataDir = await makeDataDir('csi-node');
      torusd = await startTorusd({ dataDir, size: '2GiB' });
      stateDir = await mkdtemp(join(tmpdir(), 'torus-csi-state-'));
      kubeletDir = await mkdtemp(join(tmpdir(), 'torus-csi-kubelet-'));
      await mkdir(join(kubeletDir, 'plugins/kubernetes.io/csi/pv'), { recursive: true });
      await mkdir(join(kubeletDir, 'pods'), { recursive: true });
      service = newService();
    });

    after(async () => {
      await service?.close();
      if (stateDir && kubeletDir) await forceCleanup(stateDir, kubeletDir);
      await torusd?.stop();
      for (const dir of [stateDir, kubeletDir])
        if (dir) await rm(dir, { recursive: true, force: true });
      if (dataDir) await removeDir(dataDir);
    });

    test('NodeGetInfo and NodeGetCapabilities', async () => {
      assert.equal(service.attachMode, 'nbdfuse');
      const info = await service.NodeGetInfo!({});
      assert.equal(info.node_id, 'node-a');
      assert.deepEqual(info.accessible_topology, { segments: { [TOPOLOGY_KEY]: 'node-a' } });
      const caps = await service.NodeGetCapabilities!({});
      const types = caps.capabilities.map((c: { rpc: { type: string } }) => c.rpc.type);
      for (const t of [
        'STAGE_UNSTAGE_VOLUME',
        'EXPAND_VOLUME',
        'GET_VOLUME_STATS',
        'VOLUME_CONDITION',
      ])
        assert.ok(types.includes(t), t);
    });

    test('a fresh 10 GiB volume stages (ext4 made, mounted) quickly', async () => {
      await createVolume('big', '10GiB');
      const started = performance.now();
      await stage('big');
      const ms = performance.now() - started;
      console.log(
        `# NodeStageVolume of a fresh 10 GiB volume incl. mkfs.ext4: ${ms.toFixed(0)} ms`,
      );
      const fs = await statfs(staging('big'));
      assert.ok(fs.blocks * fs.bsize > 9 * GiB);
      await unstage('big');
    });

    test('stage → publish → files → unpublish → unstage → restage: files intact', async () => {
      await createVolume('vol-a', '1GiB');
      await stage('vol-a');
      await stage('vol-a'); // repeated: a no-op
      await publish('vol-a', 'pod1');
      await publish('vol-a', 'pod1');
      const content = randomBytes(3 * MiB);
      await writeFile(join(target('pod1', 'vol-a'), 'data.bin'), content);
      await unpublish('vol-a', 'pod1');
      await unpublish('vol-a', 'pod1'); // repeated: OK
      assert.equal(existsSync(target('pod1', 'vol-a')), false, 'the target directory is removed');
      await unstage('vol-a');
      await unstage('vol-a');
      assert.deepEqual(await loopsUnder(stateDir), []);
      assert.deepEqual(helpersUnder(stateDir), []);

      await stage('vol-a');
      await publish('vol-a', 'pod2');
      assert.deepEqual(await readFile(join(target('pod2', 'vol-a'), 'data.bin')), content);
    });

    test('a read-only publication refuses writes; a conflicting one is ALREADY_EXISTS', async () => {
      await publish('vol-a', 'reader', true);
      await assert.rejects(writeFile(join(target('reader', 'vol-a'), 'x'), 'no'), {
        code: 'EROFS',
      });
      await assert.rejects(publish('vol-a', 'reader', false), code(GrpcStatus.ALREADY_EXISTS));
      await assert.rejects(
        stage('vol-a', mountCapability('xfs')),
        code(GrpcStatus.ALREADY_EXISTS),
        'staged as ext4 already',
      );
      await unpublish('vol-a', 'reader');
    });

    test('online expansion: the device and the filesystem grow while mounted', async () => {
      // xfs: xfs_growfs needs only CAP_SYS_ADMIN.
      await createVolume('grow-xfs', '512MiB');
      await stage('grow-xfs', mountCapability('xfs'));
      await publish('grow-xfs', 'pod4', false, mountCapability('xfs'));
      const path = join(target('pod4', 'grow-xfs'), 'before.bin');
      const content = randomBytes(2 * MiB);
      await writeFile(path, content);
      const before = await statfs(target('pod4', 'grow-xfs'));
      assert.equal((await ctl('volume', 'resize', 'grow-xfs', '1GiB')).code, 0);
      const reply = await service.NodeExpandVolume!({
        volume_id: 'grow-xfs',
        volume_path: target('pod4', 'grow-xfs'),
        capacity_range: { required_bytes: String(GiB) },
      });
      assert.equal(reply.capacity_bytes, String(GiB));
      const grown = await statfs(target('pod4', 'grow-xfs'));
      assert.ok(grown.blocks > before.blocks * 1.8, `${before.blocks} → ${grown.blocks} blocks`);
      await writeFile(join(target('pod4', 'grow-xfs'), 'after.bin'), randomBytes(MiB));
      assert.deepEqual(await readFile(path), content);
      await unpublish('grow-xfs', 'pod4');
      await unstage('grow-xfs');

      // ext4: resize2fs online needs CAP_SYS_RESOURCE, which this machine's root lacks.
      assert.equal((await ctl('volume', 'resize', 'vol-a', '2GiB')).code, 0);
      const expand = service.NodeExpandVolume!({
        volume_id: 'vol-a',
        volume_path: target('pod2', 'vol-a'),
        capacity_range: { required_bytes: String(2 * GiB) },
      });
      if (hasCapSysResource) {
        assert.equal((await expand).capacity_bytes, String(2 * GiB));
        const fs = await statfs(target('pod2', 'vol-a'));
        assert.ok(fs.blocks * fs.bsize > 1.9 * GiB);
      } else {
        await assert.rejects(expand, (err: { code: number; message: string }) => {
          assert.equal(err.code, GrpcStatus.FAILED_PRECONDITION);
          assert.match(err.message, /CAP_SYS_RESOURCE/);
          return true;
        });
      }
      const [loop] = await loopsUnder(join(stateDir, 'fuse', 'vol-a'));
      const sectors = await readFile(`/sys/block/${loop!.slice(5)}/size`, 'utf8');
      assert.equal(Number(sectors) * 512, 2 * GiB, 'the loop device grew under the mount');
    });

    test('stats: bytes and inodes, a normal condition', async () => {
      const stats = await service.NodeGetVolumeStats!({
        volume_id: 'vol-a',
        volume_path: target('pod2', 'vol-a'),
      });
      const bytes = stats.usage.find((u: { unit: string }) => u.unit === 'BYTES');
      const inodes = stats.usage.find((u: { unit: string }) => u.unit === 'INODES');
      assert.ok(Number(bytes.total) > 0.9 * GiB);
      assert.ok(Number(bytes.used) >= 3 * MiB, bytes.used);
      assert.ok(Number(inodes.used) >= 3);
      assert.equal(stats.volume_condition.abnormal, false, stats.volume_condition.message);
    });

    test('a restarted service finds its attachments: stage and publish are no-ops', async () => {
      await service.close(); // must not detach anything
      assert.equal((await loopsUnder(stateDir)).length, 1);
      service = newService();
      await stage('vol-a');
      await publish('vol-a', 'pod2');
      const stats = await service.NodeGetVolumeStats!({
        volume_id: 'vol-a',
        volume_path: staging('vol-a'),
      });
      assert.equal(stats.volume_condition.abnormal, false);
      assert.equal((await loopsUnder(stateDir)).length, 1);
    });

    test('a block volume is published as its device', async () => {
      await createVolume('blk', '64MiB');
      await stage('blk', blockCapability());
      await publish('blk', 'pod3', false, blockCapability());
      await publish('blk', 'pod3', false, blockCapability());
      const device = target('pod3', 'blk');
      assert.ok((await stat(device)).isBlockDevice());
      const data = randomBytes(MiB);
      const handle = await open(device, 'r+');
      await handle.write(data, 0, data.length, 5 * MiB);
      await handle.sync();
      await handle.close();
      const stats = await service.NodeGetVolumeStats!({ volume_id: 'blk', volume_path: device });
      assert.equal(stats.usage[0].total, String(64 * MiB));
      await assert.rejects(unstage('blk'), code(GrpcStatus.FAILED_PRECONDITION), 'still published');
      await unpublish('blk', 'pod3');
      await unstage('blk');
      const client = await NbdClient.connect({ host: '127.0.0.1', port: torusd.port }, 'blk');
      const back = Buffer.alloc(MiB);
      await client.read(back, 5 * MiB);
      await client.close();
      assert.deepEqual(back, data, 'the write reached the volume');
    });

    test('an existing filesystem is never reformatted; foreign data is never formatted', async () => {
      // vol-a holds ext4: asking for xfs is refused, and its files stay.
      await createVolume('foreign', '256MiB');
      const client = await NbdClient.connect({ host: '127.0.0.1', port: torusd.port }, 'foreign');
      await client.write(randomBytes(64 * 1024), 0);
      await client.flush();
      await client.close();
      await assert.rejects(stage('foreign'), (err: { code: number; message: string }) => {
        assert.equal(err.code, GrpcStatus.FAILED_PRECONDITION);
        assert.match(err.message, /refusing to format/);
        return true;
      });
      assert.equal(existsSync(join(stateDir, 'attachments', 'foreign.json')), false);

      await createVolume('xfs-vol', '512MiB');
      await stage('xfs-vol', mountCapability('xfs'));
      await writeFile(join(staging('xfs-vol'), 'kept'), 'xfs data');
      await unstage('xfs-vol');
      await assert.rejects(
        stage('xfs-vol', mountCapability('ext4')),
        code(GrpcStatus.FAILED_PRECONDITION),
      );
      await stage('xfs-vol', mountCapability('xfs'));
      assert.equal(await readFile(join(staging('xfs-vol'), 'kept'), 'utf8'), 'xfs data');
      await unstage('xfs-vol');
    });

    test('bad requests: missing fields, paths outside the kubelet dir, unknown volumes, RWX', async () => {
      await assert.rejects(
        service.NodeStageVolume!({
          staging_target_path: staging('x'),
          volume_capability: mountCapability(),
        }),
        code(GrpcStatus.INVALID_ARGUMENT),
      );
      await assert.rejects(
        service.NodeStageVolume!({ volume_id: 'vol-a', staging_target_path: staging('vol-a') }),
        code(GrpcStatus.INVALID_ARGUMENT),
      );
      await assert.rejects(
        service.NodeStageVolume!({
          volume_id: 'vol-a',
          staging_target_path: '/etc',
          volume_capability: mountCapability(),
        }),
        code(GrpcStatus.INVALID_ARGUMENT),
      );
      await assert.rejects(
        service.NodePublishVolume!({
          volume_id: 'vol-a',
          staging_target_path: staging('vol-a'),
          target_path: join(kubeletDir, '..', 'escape'),
          volume_capability: mountCapability(),
        }),
        code(GrpcStatus.INVALID_ARGUMENT),
      );
      await assert.rejects(stage('vol-a', mountCapability('', 'MULTI_NODE_MULTI_WRITER')), /RWX/);
      await assert.rejects(stage('no-such-volume'), code(GrpcStatus.NOT_FOUND));
      await unstage('no-such-volume'); // unknown: OK
      await assert.rejects(
        service.NodeGetVolumeStats!({ volume_id: 'no-such-volume', volume_path: staging('vol-a') }),
        code(GrpcStatus.NOT_FOUND),
      );
    });

    test('a dead helper shows as an abnormal condition; unstage still cleans up', async () => {
      await createVolume('fragile', '64MiB');
      await stage('fragile', blockCapability());
      const [pid] = helpersUnder(join(stateDir, 'fuse', 'fragile'));
      assert.ok(pid);
      process.kill(pid, 'SIGKILL');
      await waitFor(
        async () => helpersUnder(join(stateDir, 'fuse', 'fragile')).length === 0,
        10_000,
      );
      const stats = await service.NodeGetVolumeStats!({
        volume_id: 'fragile',
        volume_path: staging('fragile'),
      });
      assert.equal(stats.volume_condition.abnormal, true);
      assert.match(stats.volume_condition.message, /gone/);
      await unstage('fragile');
    });

    test('everything unpublished and unstaged: nothing left behind', async () => {
      await unpublish('vol-a', 'pod2');
      await unstage('vol-a');
      assert.deepEqual(await mountsUnder(kubeletDir, stateDir), []);
      assert.deepEqual(await loopsUnder(stateDir), []);
      assert.deepEqual(helpersUnder(stateDir), []);
      assert.deepEqual(readdirSync(join(stateDir, 'attachments')), []);
      assert.deepEqual(
        existsSync(join(stateDir, 'fuse')) ? readdirSync(join(stateDir, 'fuse')) : [],
        [],
      );
    });
  },
);
