/**
 * A pod moving between machines within a storage node's --lock-linger: the
 * first machine's node keeps the volume's write lock 5 s (the default) after
 * its last client, and every other node serves the volume read-only until
 * then. NodeStageVolume on the second machine used to succeed read-only and
 * the pod's first write failed with EROFS (found while measuring the plugin
 * with csi-sanity); now a writable stage waits for the lock to move
 * (src/csi/node/writable-export.ts), and while a pod still holds the volume
 * elsewhere the stage is FAILED_PRECONDITION with nothing attached.
 * A 2-node cluster with real etcd and the default linger; two node services
 * (one per storage node, as two machines' plugins) over FUSE + loop; real
 * ext4 mounts.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createControllerService } from '../src/csi/controller.js';
import { CsiError, GrpcStatus } from '../src/csi/csi-error.js';
import type { CsiService } from '../src/csi/handlers.js';
import { createNodeService, type NodeService } from '../src/csi/node/node-service.js';
import { Torus } from '../src/library/torus.js';
import { Cluster } from './cluster-fixture.js';
import { etcdMissing } from './etcd-server.js';
import {
  forceCleanup,
  helpersUnder,
  loopsUnder,
  mountCapability,
  mountsUnder,
} from './support/csi-node-kit.js';
import { missing } from './tools.js';

const MiB = 2 ** 20;
const skip =
  (process.getuid?.() === 0 ? undefined : 'needs root (mounts, loop devices)') ??
  (existsSync('/dev/fuse') ? undefined : 'needs /dev/fuse') ??
  etcdMissing() ??
  missing('mkfs.ext4', 'losetup', 'mount', 'umount');

describe(
  'a pod moving to another machine within the lock linger',
  { skip, timeout: 180_000 },
  () => {
    let cluster: Cluster | undefined;
    let torus: Torus | undefined;
    let controller: (CsiService & { close(): Promise<void> }) | undefined;
    let base = '';
    let kubeletDir = '';
    const machines: { service: NodeService; stateDir: string }[] = [];
    const capability = mountCapability('ext4');

    before(async () => {
      cluster = await Cluster.start({ nodes: 2, replication: 2, size: '512MiB' });
      torus = await Torus.connect({ etcd: { endpoints: cluster.endpoint } });
      controller = createControllerService({ torus });
      base = await mkdtemp(join(tmpdir(), 'torus-csi-move-'));
      kubeletDir = join(base, 'kubelet');
      await mkdir(kubeletDir);
      for (const [i, node] of cluster.nodes.entries()) {
        const stateDir = join(base, `state${i}`);
        machines.push({
          stateDir,
          service: createNodeService({
            nodeId: `machine-${i}`,
            nbdAddress: `unix:${node.dataDir}/nbd.sock`,
            stateDir,
            kubeletDir,
            attachMode: 'nbdfuse',
          }),
        });
      }
    });
    after(async () => {
      for (const { service, stateDir } of machines) {
        await service.close();
        await forceCleanup(stateDir, kubeletDir);
      }
      await controller?.close();
      await cluster?.stop();
      if (base) await rm(base, { recursive: true, force: true });
    });

    const staging = (i: number) => join(kubeletDir, `plugins/m${i}/staging`);
    const target = (i: number) => join(kubeletDir, `pods/m${i}/mount`);
    async function stageAndPublish(i: number, context: Record<string, string>): Promise<void> {
      const { service } = machines[i];
      await service.NodeStageVolume({
        volume_id: 'pvc-move',
        staging_target_path: staging(i),
        volume_capability: capability,
        volume_context: context,
      });
      await service.NodePublishVolume({
        volume_id: 'pvc-move',
        staging_target_path: staging(i),
        target_path: target(i),
        volume_capability: capability,
        readonly: false,
      });
    }
    async function unpublishAndUnstage(i: number): Promise<void> {
      const { service } = machines[i];
      await service.NodeUnpublishVolume({ volume_id: 'pvc-move', target_path: target(i) });
      await service.NodeUnstageVolume({ volume_id: 'pvc-move', staging_target_path: staging(i) });
    }

    test('staged writable on the second machine right after the first let go', async () => {
      const { volume } = await controller!.CreateVolume({
        name: 'pvc-move',
        volume_capabilities: [capability],
        capacity_range: { required_bytes: String(64 * MiB) },
      });
      await stageAndPublish(0, volume.volume_context);
      await writeFile(join(target(0), 'first'), 'written on machine 0');

      // A pod still running on machine 0: machine 1 is refused, nothing attached there.
      const impatient = createNodeService({
        nodeId: 'machine-1',
        nbdAddress: `unix:${cluster!.nodes[1].dataDir}/nbd.sock`,
        stateDir: machines[1].stateDir,
        kubeletDir,
        attachMode: 'nbdfuse',
        writableWaitMs: 1000, // the move below waits out the 5 s linger with the default
      });
      await assert.rejects(
        impatient.NodeStageVolume({
          volume_id: 'pvc-move',
          staging_target_path: staging(1),
          volume_capability: capability,
          volume_context: volume.volume_context,
        }),
        (err: unknown) => {
          assert.ok(err instanceof CsiError, String(err));
          assert.equal(err.code, GrpcStatus.FAILED_PRECONDITION);
          assert.match(err.message, /served read-only here: another node holds its write lock/);
          return true;
        },
      );
      await impatient.close();
      assert.deepEqual(await loopsUnder(machines[1].stateDir), []);
      assert.deepEqual(helpersUnder(machines[1].stateDir), []);

      // The pod moves: unstaged on machine 0, staged on machine 1 at once.
      await unpublishAndUnstage(0);
      await stageAndPublish(1, volume.volume_context);
      assert.equal(await readFile(join(target(1), 'first'), 'utf8'), 'written on machine 0');
      await writeFile(join(target(1), 'second'), 'written on machine 1');
      assert.equal(await readFile(join(target(1), 'second'), 'utf8'), 'written on machine 1');
      await unpublishAndUnstage(1);

      assert.deepEqual(await controller!.DeleteVolume({ volume_id: 'pvc-move' }), {});
      for (const { stateDir } of machines) {
        assert.deepEqual(await loopsUnder(stateDir), []);
        assert.deepEqual(helpersUnder(stateDir), []);
        assert.deepEqual(await mountsUnder(stateDir, kubeletDir), []);
      }
    });
  },
);
