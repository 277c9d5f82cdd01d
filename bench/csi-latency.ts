/**
 * Latency of the CSI controller's provisioning calls on a three-node
 * cluster with real etcd: CreateVolume, CreateSnapshot and DeleteVolume
 * through a real `torusblk csi --controller` over its unix socket, as the
 * external-provisioner and external-snapshotter call them. Prints the
 * median and p90 of each over ROUNDS rounds (issue 11's target: ≤ 100 ms).
 *
 *   npx tsc -p tsconfig.json && node dist/bench/csi-latency.js [ROUNDS]
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Cluster } from '../test/cluster-fixture.js';
import { CsiClient, startCsiPlugin } from '../test/support/csi-client.js';

const rounds = Number(process.argv[2] ?? 30);
const capability = { mount: {}, access_mode: { mode: 'SINGLE_NODE_WRITER' } };

function quantile(samples: number[], q: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function timed(samples: number[], call: () => Promise<unknown>): Promise<void> {
  const started = performance.now();
  await call();
  samples.push(performance.now() - started);
}

const cluster = await Cluster.start({ nodes: 3, replication: 2 });
const dir = await mkdtemp(join(tmpdir(), 'torus-csi-bench-'));
const plugin = await startCsiPlugin(join(dir, 'csi.sock'), [
  '--controller',
  '--etcd',
  cluster.endpoint,
]);
const client = new CsiClient(plugin.socket);
try {
  const create: number[] = [];
  const snapshot: number[] = [];
  const remove: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const name = `pvc-bench-${i}`;
    await timed(create, () =>
      client.controller('CreateVolume', {
        name,
        volume_capabilities: [capability],
        capacity_range: { required_bytes: String(10 * 2 ** 30) },
        parameters: { replication: '2' },
      }),
    );
    await timed(snapshot, () =>
      client.controller('CreateSnapshot', { source_volume_id: name, name: `snapshot-bench-${i}` }),
    );
    await client.controller('DeleteSnapshot', { snapshot_id: `${name}@snapshot-bench-${i}` });
    await timed(remove, () => client.controller('DeleteVolume', { volume_id: name }));
  }
  const row = (label: string, samples: number[]) =>
    `${label.padEnd(16)} median ${quantile(samples, 0.5).toFixed(1)} ms  p90 ${quantile(samples, 0.9).toFixed(1)} ms`;
  process.stdout.write(
    [
      `CSI controller on a 3-node cluster, ${rounds} rounds:`,
      row('CreateVolume', create),
      row('CreateSnapshot', snapshot),
      row('DeleteVolume', remove),
    ].join('\n') + '\n',
  );
} finally {
  client.close();
  await plugin.stop();
  await cluster.stop();
  await rm(dir, { recursive: true, force: true });
}
