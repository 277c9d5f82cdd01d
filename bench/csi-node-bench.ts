/**
 * The CSI node path, timed as the kubelet would see it, on a 3-node cluster
 * (real etcd, R = 2) with two node plugins ("machines") attached to two
 * different storage nodes — as root, real mounts:
 *
 *   1. NodeStageVolume of a fresh 10 GiB volume, mkfs.ext4 included
 *      (issue 11's target: ≤ 2 s), median over --rounds volumes;
 *   2. a pod moving: Unpublish + Unstage on machine A, then Stage + Publish
 *      on machine B (target ≤ 3 s), median over --rounds moves;
 *   3. fio through the mounted filesystem (a file on the volume, O_DIRECT)
 *      against fio straight to the volume over NBD (the storage node's unix
 *      socket), same jobs, side by side: what the attach path costs.
 *
 *   npm run build && node dist/bench/csi-node-bench.js [--rounds 5] [--runtime 10]
 *
 * Prints a table; writes nothing under the repository.
 */
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Cluster } from '../test/cluster-fixture.js';
import { CsiClient, startCsiPlugin, type CsiProcess } from '../test/support/csi-client.js';
import { forceCleanup } from '../test/support/csi-node-kit.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    runtime: { type: 'string', default: '10' },
  },
});
const rounds = Number(values.rounds);
const runtime = Number(values.runtime);
const GiB = 2 ** 30;
const EXT4 = { mount: { fs_type: 'ext4' }, access_mode: { mode: 'SINGLE_NODE_WRITER' } };

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function ms(call: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await call();
  return performance.now() - started;
}

interface FioResult {
  iops: number;
  mibs: number;
}

function fio(args: string[]): FioResult {
  const r = spawnSync(
    'fio',
    ['--name=job', '--output-format=json', '--time_based', `--runtime=${runtime}`, ...args],
    { encoding: 'utf8', maxBuffer: 64 << 20 },
  );
  if (r.status !== 0) throw new Error(`fio ${args.join(' ')}: ${r.stderr}`);
  const job = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))).jobs[0];
  const side = job.read.io_bytes > 0 ? job.read : job.write;
  return { iops: side.iops, mibs: side.bw_bytes / 2 ** 20 };
}

const work = await mkdtemp(join(tmpdir(), 'torus-csi-node-bench-'));
const cluster = await Cluster.start({
  nodes: 3,
  replication: 2,
  size: '8GiB',
  cacheSize: '256MiB',
});
const plugins: CsiProcess[] = [];
const clients: CsiClient[] = [];
try {
  const controller = await startCsiPlugin(join(work, 'controller.sock'), [
    '--controller',
    '--etcd',
    cluster.endpoint,
  ]);
  plugins.push(controller);
  const ctl = new CsiClient(controller.socket);
  clients.push(ctl);
  const machines: { client: CsiClient; kubelet: string }[] = [];
  for (let i = 0; i < 2; i++) {
    const kubelet = join(work, `kubelet-${i}`);
    await mkdir(kubelet, { recursive: true });
    const plugin = await startCsiPlugin(join(work, `node-${i}.sock`), [
      '--node',
      '--node-id',
      `machine-${i}`,
      '--nbd-address',
      `unix:${join(cluster.nodes[i].dataDir, 'nbd.sock')}`,
      '--state-dir',
      join(work, `state-${i}`),
      '--kubelet-dir',
      kubelet,
    ]);
    plugins.push(plugin);
    const client = new CsiClient(plugin.socket);
    clients.push(client);
    machines.push({ client, kubelet });
  }
  const staging = (m: number, v: string) => join(machines[m].kubelet, 'staging', v);
  const target = (m: number, v: string) => join(machines[m].kubelet, 'pods', v, 'mount');
  const stage = (m: number, v: string, context: Record<string, string>) =>
    machines[m].client.call('Node', 'NodeStageVolume', {
      volume_id: v,
      staging_target_path: staging(m, v),
      volume_capability: EXT4,
      volume_context: context,
    });
  const publish = async (m: number, v: string, context: Record<string, string>) => {
    await mkdir(target(m, v), { recursive: true });
    await machines[m].client.call('Node', 'NodePublishVolume', {
      volume_id: v,
      staging_target_path: staging(m, v),
      target_path: target(m, v),
      volume_capability: EXT4,
      volume_context: context,
    });
  };
  const unpublish = (m: number, v: string) =>
    machines[m].client.call('Node', 'NodeUnpublishVolume', {
      volume_id: v,
      target_path: target(m, v),
    });
  const unstage = (m: number, v: string) =>
    machines[m].client.call('Node', 'NodeUnstageVolume', {
      volume_id: v,
      staging_target_path: staging(m, v),
    });

  // 1 and 2: fresh 10 GiB volumes staged (mkfs included), then moved.
  const stageMs: number[] = [];
  const moveMs: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const name = `pvc-bench-${r}`;
    const created = await ctl.controller('CreateVolume', {
      name,
      capacity_range: { required_bytes: String(10 * GiB) },
      volume_capabilities: [EXT4],
    });
    const context = created.volume.volume_context as Record<string, string>;
    stageMs.push(await ms(() => stage(0, name, context)));
    await publish(0, name, context);
    moveMs.push(
      await ms(async () => {
        await unpublish(0, name);
        await unstage(0, name);
        await stage(1, name, context);
        await publish(1, name, context);
      }),
    );
    if (r < rounds - 1) {
      await unpublish(1, name);
      await unstage(1, name);
      await ctl.controller('DeleteVolume', { volume_id: name });
    }
  }

  // 3: fio through the mounted filesystem on machine B vs NBD to the same node.
  const last = `pvc-bench-${rounds - 1}`;
  const file = join(target(1, last), 'fio.dat');
  const nbdUri = (v: string) =>
    `nbd+unix:///${v}?socket=${join(cluster.nodes[1].dataDir, 'nbd.sock')}`;
  const raw = 'pvc-bench-raw';
  await ctl.controller('CreateVolume', {
    name: raw,
    capacity_range: { required_bytes: String(2 * GiB) },
    volume_capabilities: [EXT4],
  });
  const jobs: [string, string[]][] = [
    ['4k randread qd32', ['--rw=randread', '--bs=4k', '--iodepth=32']],
    ['4k randwrite qd32', ['--rw=randwrite', '--bs=4k', '--iodepth=32']],
    ['1M seqwrite qd8', ['--rw=write', '--bs=1M', '--iodepth=8']],
    ['1M seqread qd8', ['--rw=read', '--bs=1M', '--iodepth=8']],
  ];
  // Lay the data down first so reads read data, both ways.
  fio([
    '--rw=write',
    '--bs=1M',
    '--iodepth=8',
    '--size=1G',
    `--filename=${file}`,
    '--direct=1',
    '--ioengine=libaio',
    '--time_based=0',
    '--runtime=600',
  ]);
  fio([
    '--rw=write',
    '--bs=1M',
    '--iodepth=8',
    '--size=1G',
    '--ioengine=nbd',
    `--uri=${nbdUri(raw)}`,
    '--time_based=0',
    '--runtime=600',
  ]);
  const rows: string[] = [];
  for (const [label, args] of jobs) {
    const fs = fio([...args, '--size=1G', `--filename=${file}`, '--direct=1', '--ioengine=libaio']);
    const nbd = fio([...args, '--size=1G', '--ioengine=nbd', `--uri=${nbdUri(raw)}`]);
    const big = label.startsWith('1M');
    const show = (x: FioResult) =>
      big ? `${x.mibs.toFixed(0)} MiB/s` : `${x.iops.toFixed(0)} IOPS`;
    rows.push(
      `| ${label} | ${show(fs)} | ${show(nbd)} | ${(big ? fs.mibs / nbd.mibs : fs.iops / nbd.iops).toFixed(2)}× |`,
    );
  }
  await unpublish(1, last);
  await unstage(1, last);
  process.stdout.write(
    [
      `NodeStageVolume, fresh 10 GiB volume, mkfs.ext4 included: median ${median(stageMs).toFixed(0)} ms (${stageMs.map((x) => x.toFixed(0)).join(', ')})`,
      `pod move (unpublish + unstage on A, stage + publish on B): median ${median(moveMs).toFixed(0)} ms (${moveMs.map((x) => x.toFixed(0)).join(', ')})`,
      '',
      '| fio job (1 GiB, machine B) | ext4 on the attached volume (O_DIRECT) | NBD straight to the storage node | ratio |',
      '|---|---|---|---|',
      ...rows,
      `(${runtime} s each)`,
      '',
    ].join('\n'),
  );
} finally {
  for (const client of clients) client.close();
  for (const plugin of plugins.reverse()) await plugin.stop();
  // Whatever is left: unmount, detach loops, stop helpers.
  for (let i = 0; i < 2; i++)
    await forceCleanup(join(work, `state-${i}`), join(work, `kubelet-${i}`));
  await cluster.stop();
  await rm(work, { recursive: true, force: true });
}
