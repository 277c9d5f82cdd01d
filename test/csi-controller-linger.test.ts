/**
 * DeleteVolume and DeleteSnapshot right after the last client went, on a
 * cluster: a storage node keeps a volume's write lock (a snapshot's read
 * pin) --lock-linger seconds after its last NBD client, and the controller
 * waits that out instead of answering "in use" (src/csi/linger-wait.ts).
 * Found by csi-sanity, whose node specs delete each volume right after
 * NodeUnstageVolume: five of them failed on a 3-node cluster. A volume
 * with a client still connected stays refused, FAILED_PRECONDITION, after
 * the wait. Real etcd, real torusd nodes, a real NBD client (libnbd); the
 * controller's handlers called in this process.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { status } from '@grpc/grpc-js';
import { createControllerService } from '../src/csi/controller.js';
import { CsiError } from '../src/csi/csi-error.js';
import type { CsiService } from '../src/csi/handlers.js';
import { Torus } from '../src/library/torus.js';
import { Cluster } from './cluster-fixture.js';
import { etcdMissing } from './etcd-server.js';
import { NbdSession } from './nbd-session.js';
import { missing } from './tools.js';

const MiB = 2 ** 20;
// As the server hands it to the handlers: proto-loader names the set oneof (access_type).
const RWO_BLOCK = { block: {}, access_type: 'block', access_mode: { mode: 'SINGLE_NODE_WRITER' } };

// nbdsh stands for Debian's python3 libnbd bindings, which NbdSession drives.
const skip = etcdMissing() ?? missing('nbdsh');

describe('CSI deletes wait out a storage node’s lock linger', { skip, timeout: 120_000 }, () => {
  let cluster: Cluster | undefined;
  let torus: Torus | undefined;
  let controller: (CsiService & { close(): Promise<void> }) | undefined;
  const sessions: NbdSession[] = [];

  before(async () => {
    // The default linger (5 s): what the DaemonSet runs.
    cluster = await Cluster.start({ nodes: 2, replication: 2 });
    torus = await Torus.connect({ etcd: { endpoints: cluster.endpoint } });
    controller = createControllerService({ torus });
  });
  after(async () => {
    for (const session of sessions) await session.kill();
    await controller?.close();
    await cluster?.stop();
  });

  async function create(name: string): Promise<void> {
    await controller!.CreateVolume({
      name,
      volume_capabilities: [RWO_BLOCK],
      capacity_range: { required_bytes: String(16 * MiB) },
    });
  }

  /** Connect to `exportName` on the first node (taking its lock or pin), write when writable, and go. */
  async function useAndLeave(exportName: string): Promise<void> {
    const session = await NbdSession.open(cluster!.nodes[0].uri(exportName));
    sessions.push(session);
    if (!session.readOnly) {
      assert.ok((await session.write(0, Buffer.alloc(4096, 7))).ok);
      assert.ok((await session.flush()).ok);
    }
    await session.close();
  }

  async function lockedBy(name: string): Promise<string | undefined> {
    return (await torus!.listVolumes()).find((v) => v.name === name)?.lockedBy;
  }

  test('DeleteVolume just after the last client left: OK, the volume gone', async () => {
    await create('pvc-linger');
    await useAndLeave('pvc-linger');
    assert.ok(
      await lockedBy('pvc-linger'),
      'the node still holds the lock (lingering): otherwise this test proves nothing',
    );
    assert.deepEqual(await controller!.DeleteVolume({ volume_id: 'pvc-linger' }), {});
    assert.ok(!(await torus!.listVolumes()).some((v) => v.name === 'pvc-linger'));
  });

  // A snapshot's pin does not linger; it goes once the node has closed the
  // snapshot, a moment after the reader left: the wait covers that moment.
  test('DeleteSnapshot just after a reader of the snapshot left: OK', async () => {
    await create('pvc-snapped');
    const { snapshot } = await controller!.CreateSnapshot({
      name: 'snap-linger',
      source_volume_id: 'pvc-snapped',
    });
    await useAndLeave(snapshot.snapshot_id);
    assert.deepEqual(await controller!.DeleteSnapshot({ snapshot_id: snapshot.snapshot_id }), {});
    assert.deepEqual((await torus!.listSnapshots('pvc-snapped')).length, 0);
    assert.deepEqual(await controller!.DeleteVolume({ volume_id: 'pvc-snapped' }), {});
  });

  test('a client still connected: FAILED_PRECONDITION after the wait, nothing deleted', async () => {
    await create('pvc-busy');
    const session = await NbdSession.open(cluster!.nodes[0].uri('pvc-busy'));
    sessions.push(session);
    const impatient = createControllerService({ torus: torus!, inUseWaitMs: 1000 });
    await assert.rejects(impatient.DeleteVolume({ volume_id: 'pvc-busy' }), (err: unknown) => {
      assert.ok(err instanceof CsiError, String(err));
      assert.equal(err.code, status.FAILED_PRECONDITION);
      assert.match(err.message, /locked for writing/);
      assert.match(err.message, /still so after 1 s/);
      return true;
    });
    assert.ok((await torus!.listVolumes()).some((v) => v.name === 'pvc-busy'));
    // Once the client goes, the default wait covers the linger.
    await session.close();
    assert.deepEqual(await controller!.DeleteVolume({ volume_id: 'pvc-busy' }), {});
  });
});
