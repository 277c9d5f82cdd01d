/**
 * A volume's whole life through the CSI plugin, with this test playing the
 * kubelet and the sidecars, on a 3-node cluster (real etcd, real torusd,
 * R = 2): one controller plugin and two node plugins (two "machines", each
 * attached to a different storage node through the FUSE volume file + a
 * loop device, since this kernel has no nbd module), real xfs, real mounts.
 *
 * CreateVolume → stage + publish on machine A → files → unpublish + unstage
 * → stage + publish on machine B (the pod moved) → files intact → kill -9 of
 * B's plugin: the mount keeps working, the restarted plugin's repeated
 * stage + publish are no-ops → expand (controller, then node): statfs shows
 * the new size while mounted → snapshot → more files → a volume created
 * from the snapshot, staged on A: the files as of the snapshot → everything
 * unpublished, unstaged, deleted → no mount, loop device, FUSE helper or
 * state left, and GC frees every block.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { status } from '@grpc/grpc-js';
import { Cluster, until } from './cluster-fixture.js';
import { etcdMissing } from './etcd-server.js';
import { CsiClient, startCsiPlugin, type CsiProcess } from './support/csi-client.js';
import { missing } from './tools.js';
import { makeDataDir, removeDir } from './torusd-process.js';
import { forceCleanup, helpersUnder, loopsUnder, mountsUnder } from './support/csi-node-kit.js';

const MiB = 1024 * 1024;
const skip =
  etcdMissing() ??
  missing('losetup', 'mkfs.xfs', 'xfs_growfs', 'blkid', 'mount', 'umount') ??
  (process.getuid?.() !== 0 ? 'needs root (mounts, loop devices)' : undefined) ??
  undefined;

// xfs: it grows online with the capabilities root has here; ext4's online
// resize needs CAP_SYS_RESOURCE, which this machine's root lacks (the node
// plugin answers FAILED_PRECONDITION then; test/csi-node.test.ts covers it).
const MOUNT = {
  mount: { fs_type: 'xfs', mount_flags: [] },
  access_mode: { mode: 'SINGLE_NODE_WRITER' },
};

function sha(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

describe(
  'a volume through its life in Kubernetes (CSI, 3-node cluster)',
  { skip, timeout: 420_000 },
  () => {
    let cluster: Cluster;
    let work: string;
    let controller: CsiProcess;
    const machines: { plugin?: CsiProcess; client?: CsiClient; kubelet: string; state: string }[] =
      [];
    let ctl: CsiClient;

    async function startMachine(i: number): Promise<void> {
      const machine = machines[i];
      machine.plugin = await startCsiPlugin(join(work, `csi-${i}.sock`), [
        '--node',
        '--node-id',
        `machine-${i}`,
        '--nbd-address',
        `unix:${join(cluster.nodes[i].dataDir, 'nbd.sock')}`,
        '--state-dir',
        machine.state,
        '--kubelet-dir',
        machine.kubelet,
        '--attach',
        'nbdfuse',
      ]);
      machine.client = new CsiClient(machine.plugin.socket);
    }

    const node = (i: number, method: string, request: Record<string, unknown>) =>
      machines[i].client!.call('Node', method, request);
    const staging = (i: number, volume: string) =>
      join(machines[i].kubelet, 'plugins/kubernetes.io/csi/csi.torus.dev', volume, 'globalmount');
    const target = (i: number, volume: string) =>
      join(machines[i].kubelet, 'pods/pod-1/volumes/kubernetes.io~csi', volume, 'mount');

    async function attach(i: number, volume: string, context: Record<string, string>) {
      const request = {
        volume_id: volume,
        staging_target_path: staging(i, volume),
        volume_capability: MOUNT,
        volume_context: context,
      };
      await node(i, 'NodeStageVolume', request);
      await mkdir(target(i, volume), { recursive: true });
      await node(i, 'NodePublishVolume', {
        ...request,
        target_path: target(i, volume),
        readonly: false,
      });
    }

    async function detach(i: number, volume: string) {
      await node(i, 'NodeUnpublishVolume', { volume_id: volume, target_path: target(i, volume) });
      await node(i, 'NodeUnstageVolume', {
        volume_id: volume,
        staging_target_path: staging(i, volume),
      });
    }

    before(async () => {
      work = await makeDataDir('csi-life');
      for (let i = 0; i < 2; i++) {
        machines.push({ kubelet: join(work, `kubelet-${i}`), state: join(work, `state-${i}`) });
        await mkdir(machines[i].kubelet, { recursive: true });
      }
      cluster = await Cluster.start({
        nodes: 3,
        replication: 2,
        size: '2GiB',
        // The default --lock-linger (5 s): a pod moving finds the volume still
        // locked by the storage node it left, and its stage waits that out.
        args: ['--rebalance-interval', '2'],
      });
      controller = await startCsiPlugin(join(work, 'controller.sock'), [
        '--controller',
        '--etcd',
        cluster.endpoint,
      ]);
      ctl = new CsiClient(controller.socket);
      await startMachine(0);
      await startMachine(1);
    });

    after(async () => {
      ctl?.close();
      for (const machine of machines) {
        machine.client?.close();
        await machine.plugin?.stop();
      }
      await controller?.stop();
      // Whatever a failure left: unmount (deepest first), detach loops, stop FUSE helpers.
      for (const machine of machines) await forceCleanup(machine.state, machine.kubelet);
      await cluster?.stop();
      if (work) await removeDir(work);
    });

    const files = new Map<string, string>();
    let context: Record<string, string> = {};

    test('create, stage and publish on machine A, write files', async () => {
      const created = await ctl.controller('CreateVolume', {
        name: 'pvc-life',
        capacity_range: { required_bytes: String(512 * MiB) },
        volume_capabilities: [MOUNT],
        parameters: { replication: '2' },
      });
      context = created.volume.volume_context;
      await attach(0, 'pvc-life', context);
      for (let i = 0; i < 4; i++) {
        const bytes = randomBytes(3 * MiB + i);
        await writeFile(join(target(0, 'pvc-life'), `file-${i}`), bytes);
        files.set(`file-${i}`, sha(bytes));
      }
    });

    test('the pod moves: unstaged on A, staged on B through another storage node, files intact', async () => {
      await detach(0, 'pvc-life');
      assert.deepEqual(await mountsUnder(machines[0].kubelet), [], 'nothing mounted on A');
      assert.deepEqual(await loopsUnder(machines[0].state), [], 'no loop device on A');
      await attach(1, 'pvc-life', context);
      for (const [name, digest] of files)
        assert.equal(sha(await readFile(join(target(1, 'pvc-life'), name))), digest, name);
      // Machine B's storage node asked for the lock; A's let go without waiting out its linger.
      assert.match(cluster.nodes[0].output(), /another node asks for this idle volume/);
    });

    test("kill -9 of B's node plugin leaves the mount working; the restarted plugin's repeated calls are no-ops", async () => {
      machines[1].client!.close();
      machines[1].plugin!.child.kill('SIGKILL');
      await machines[1].plugin!.stop();
      const bytes = randomBytes(MiB);
      await writeFile(join(target(1, 'pvc-life'), 'after-kill'), bytes);
      files.set('after-kill', sha(bytes));
      assert.equal(sha(await readFile(join(target(1, 'pvc-life'), 'file-0'))), files.get('file-0'));
      await startMachine(1);
      await attach(1, 'pvc-life', context); // the kubelet repeats both calls
      const mounted = await mountsUnder(machines[1].kubelet);
      assert.equal(mounted.length, 2, `one staging mount and one bind: ${mounted.join(', ')}`);
    });

    test('expand: the controller grows the volume, the node grows the filesystem while mounted', async () => {
      const before = await statfs(target(1, 'pvc-life'));
      const grown = await ctl.controller('ControllerExpandVolume', {
        volume_id: 'pvc-life',
        capacity_range: { required_bytes: String(1024 * MiB) },
        volume_capability: MOUNT,
      });
      assert.equal(grown.node_expansion_required, true);
      await node(1, 'NodeExpandVolume', {
        volume_id: 'pvc-life',
        volume_path: target(1, 'pvc-life'),
        staging_target_path: staging(1, 'pvc-life'),
        capacity_range: { required_bytes: String(1024 * MiB) },
        volume_capability: MOUNT,
      });
      const after = await statfs(target(1, 'pvc-life'));
      assert.ok(
        after.blocks * after.bsize > 1.8 * before.blocks * before.bsize,
        `filesystem grew from ${before.blocks * before.bsize} to ${after.blocks * after.bsize} bytes`,
      );
      for (const [name, digest] of files)
        assert.equal(sha(await readFile(join(target(1, 'pvc-life'), name))), digest, name);
    });

    test('a snapshot, more files, and a volume from the snapshot has the files as of the snapshot', async () => {
      spawnSync('sync', ['-f', target(1, 'pvc-life')]);
      // The kubelet freezes nothing: the external-snapshotter snapshots what was flushed.
      await node(1, 'NodeUnpublishVolume', {
        volume_id: 'pvc-life',
        target_path: target(1, 'pvc-life'),
      });
      await node(1, 'NodeUnstageVolume', {
        volume_id: 'pvc-life',
        staging_target_path: staging(1, 'pvc-life'),
      });
      const snap = await ctl.controller('CreateSnapshot', {
        source_volume_id: 'pvc-life',
        name: 'snapshot-1',
      });
      assert.equal(snap.snapshot.ready_to_use, true);
      await attach(1, 'pvc-life', context);
      await writeFile(join(target(1, 'pvc-life'), 'after-snapshot'), randomBytes(MiB));
      const restored = await ctl.controller('CreateVolume', {
        name: 'pvc-restored',
        capacity_range: { required_bytes: String(1024 * MiB) },
        volume_capabilities: [MOUNT],
        volume_content_source: { snapshot: { snapshot_id: snap.snapshot.snapshot_id } },
      });
      await attach(0, 'pvc-restored', restored.volume.volume_context);
      const names = (await readdir(target(0, 'pvc-restored'))).filter((n) => n !== 'lost+found');
      assert.deepEqual(names.sort(), [...files.keys()].sort(), 'the files as of the snapshot');
      for (const [name, digest] of files)
        assert.equal(sha(await readFile(join(target(0, 'pvc-restored'), name))), digest, name);
      await ctl.controller('DeleteSnapshot', { snapshot_id: snap.snapshot.snapshot_id });
    });

    test('everything deleted: no mount, loop device, FUSE helper or state left; GC frees every block', async () => {
      await detach(0, 'pvc-restored');
      await detach(1, 'pvc-life');
      // The storage nodes keep each volume's lock --lock-linger seconds after
      // its last client: until then DeleteVolume is FAILED_PRECONDITION, which
      // the external-provisioner retries, as here.
      for (const volume_id of ['pvc-restored', 'pvc-life'])
        await until(
          `DeleteVolume ${volume_id}`,
          async () => {
            try {
              return await ctl.controller('DeleteVolume', { volume_id });
            } catch (err) {
              if ((err as { code?: number }).code === status.FAILED_PRECONDITION) return undefined;
              throw err;
            }
          },
          30_000,
        );
      assert.deepEqual(await mountsUnder(work), [], 'no mount');
      assert.deepEqual(await loopsUnder(work), [], 'no loop device');
      assert.deepEqual(helpersUnder(work), [], 'no FUSE helper');
      for (const machine of machines) {
        // Its folders stay; no record, socket or file of an attachment does.
        const left = spawnSync('find', [machine.state, '-mindepth', '1', '-not', '-type', 'd'], {
          encoding: 'utf8',
        }).stdout.trim();
        assert.equal(left, '', `state left in ${machine.state}`);
      }
      await until(
        'every block freed',
        async () => {
          await cluster.waitForRebalance(Date.now(), 60_000);
          return (await cluster.usedBytes()) === 0 ? true : undefined;
        },
        120_000,
      );
    });
  },
);
