/**
 * The container image, built from deploy/Dockerfile here and run the way the
 * manifests run it: torusd on the host network serving a volume the host
 * reads and writes over NBD; and the CSI node plugin with its attachment
 * keeper, two containers as the csi-node pods run them (privileged, /dev, a
 * kubelet and a state directory shared with the host, rshared, the keeper's
 * socket directory shared between them), staging and publishing a volume
 * through the plugin's unix socket, the mount visible on the host; the
 * plugin's container killed (kill -9 of its first process) and started
 * again: the mount keeps working, the repeated calls are no-ops.
 *
 * The first build makes the Debian base with mmdebstrap (minutes; cached
 * under /var/cache/torus-image and in podman), later ones take seconds.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePorts, sha256 } from './cluster-fixture.js';
import {
  BUILD_LIMIT_MS,
  TEST_IMAGE,
  buildTestImage,
  containerLogs,
  imageSkipReason,
  podman,
  podmanOk,
  removeContainer,
  removeTestImage,
} from './support/image-podman.js';
import { missing, run, runOk } from './tools.js';

const MiB = 1 << 20;
const VOLUME_BYTES = 64 * MiB;
const skip = imageSkipReason();

/** Poll until `check` is true; the bound only ends a wedged run, nothing is timed. */
async function waitFor(what: string, check: () => Promise<boolean>, limitMs = 60_000) {
  const deadline = Date.now() + limitMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await sleep(200);
  }
}

async function healthy(port: number): Promise<boolean> {
  try {
    return (await fetch(`http://127.0.0.1:${port}/healthz`)).ok;
  } catch {
    return false;
  }
}

/** torusd from the image on the host network, its data directory on the host. */
async function startTorusd(name: string, dataDir: string, extra: string[] = []) {
  const [nbdPort, httpPort] = await freePorts(2);
  await podmanOk([
    'run',
    '--detach',
    '--name',
    name,
    '--network',
    'host',
    '--volume',
    `${dataDir}:/data`,
    TEST_IMAGE,
    './bin/torusd',
    '--data-dir=/data',
    '--size=512MiB',
    '--cache-size=64MiB',
    `--nbd=127.0.0.1:${nbdPort}`,
    '--host=127.0.0.1',
    `--port=${httpPort}`,
    ...extra,
  ]);
  await waitFor(`torusd in ${name} to answer /healthz`, () => healthy(httpPort)).catch(
    async (err: Error) => {
      throw new Error(`${err.message}:\n${await containerLogs(name)}`);
    },
  );
  return { nbdPort, httpPort };
}

describe('the Torus image', { skip, timeout: BUILD_LIMIT_MS + 6 * 60_000 }, () => {
  const containers: string[] = [];
  const dirs: string[] = [];

  before(async () => {
    const started = Date.now();
    const build = await buildTestImage();
    const phases = build.log.split('\n').filter((l) => l.startsWith('build-image:'));
    console.log(
      `image ${TEST_IMAGE}: ${Math.round(build.sizeBytes / MiB)} MiB, built in ${Date.now() - started} ms\n${phases.join('\n')}`,
    );
  });

  after(async () => {
    for (const name of containers) await removeContainer(name);
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
    await removeTestImage();
  });

  test('holds the three binaries and the tools the node plugin runs', async () => {
    const tools = 'nbd-client nbdfuse fusermount3 mkfs.ext4 resize2fs mkfs.xfs xfs_growfs losetup';
    const out = await podmanOk([
      'run',
      '--rm',
      TEST_IMAGE,
      'sh',
      '-c',
      `node --version && for t in ${tools}; do command -v $t >/dev/null || echo "missing $t"; done && ./bin/torusd --help >/dev/null && ./bin/torusctl --help >/dev/null && ./bin/torusblk --help >/dev/null && echo ok`,
    ]);
    assert.match(out, /^v2\d\./, 'Node 20 or later');
    assert.doesNotMatch(out, /missing/);
    assert.match(out, /ok\n$/);
  });

  test(
    'torusd from the image serves a volume the host writes and reads over NBD',
    { skip: missing('nbdinfo', 'nbdcopy'), timeout: 4 * 60_000 },
    async () => {
      const dataDir = await mkdtemp(join(tmpdir(), 'torus-image-data-'));
      dirs.push(dataDir);
      const name = `torus-image-torusd-${process.pid}`;
      containers.push(name);
      const { nbdPort } = await startTorusd(name, dataDir);
      // torusctl in the same container reaches torusd through the data directory's admin socket.
      await podmanOk([
        'exec',
        name,
        './bin/torusctl',
        'volume',
        'create-block',
        '--data-dir=/data',
        'web',
        '64MiB',
      ]);
      const uri = `nbd://127.0.0.1:${nbdPort}/web`;
      const size = await runOk('nbdinfo', ['--size', uri]);
      assert.equal(Number(size.trim()), VOLUME_BYTES);

      const scratch = await mkdtemp(join(tmpdir(), 'torus-image-io-'));
      dirs.push(scratch);
      const written = Buffer.concat([randomBytes(4 * MiB), Buffer.alloc(VOLUME_BYTES - 4 * MiB)]);
      await writeFile(join(scratch, 'in'), written);
      await runOk('nbdcopy', [join(scratch, 'in'), uri], { timeoutMs: 120_000 });
      await runOk('nbdcopy', [uri, join(scratch, 'out')], { timeoutMs: 120_000 });
      assert.equal(sha256(await readFile(join(scratch, 'out'))), sha256(written));

      // The store is on the host, in the bind-mounted directory; a clean stop commits it.
      assert.ok(existsSync(join(dataDir, 'blocks')), 'blocks/ in the host data directory');
      await podmanOk(['stop', '--time', '30', name], 60_000);
      const exit = await podmanOk(['inspect', '--format', '{{.State.ExitCode}}', name]);
      assert.equal(exit.trim(), '0', await containerLogs(name));
    },
  );

  describe('the CSI node plugin from the image', { timeout: 5 * 60_000 }, () => {
    csiNodeTests(containers, dirs);
  });
});

/** What test/support/csi-client.ts (from the CSI branch) offers that this test uses. */
interface CsiClientLike {
  call(
    service: 'Identity' | 'Controller' | 'Node',
    method: string,
    request?: object,
  ): Promise<Record<string, unknown>>;
  close(): void;
}
type CsiClientModule = { CsiClient: new (socketPath: string) => CsiClientLike };

function csiNodeTests(containers: string[], dirs: string[]) {
  let client: CsiClientLike | undefined;
  let kubeletDir = '';
  let stateDir = '';
  let why: string | undefined;

  before(async () => {
    const help = await podman(['run', '--rm', TEST_IMAGE, './bin/torusblk', 'csi', '--help']);
    if (help.code !== 0) {
      why = `\`torusblk csi --help\` fails in the image (the CSI plugin is not in this build yet): ${help.stderr.trim()}`;
      return;
    }
    // A path the compiler does not resolve: the module comes with the CSI branch.
    const modulePath = './support/csi-client.js';
    try {
      await import(modulePath);
    } catch (err) {
      why = `test/support/csi-client.ts is not in this build yet: ${(err as Error).message}`;
    }
  });

  after(async () => {
    client?.close();
    // The containers first: nothing may mount again while the mounts go.
    for (const name of containers) await removeContainer(name);
    if (kubeletDir) await unmountUnder(kubeletDir);
    if (stateDir) await unmountUnder(stateDir);
  });

  test('the node plugin and the attachment keeper as the pod runs them: a kill -9 of the plugin container leaves the mount working', async (t) => {
    if (why) return t.skip(why);
    const root = await mkdtemp(join(tmpdir(), 'torus-image-csi-'));
    dirs.push(root);
    kubeletDir = join(root, 'kubelet');
    stateDir = join(root, 'state');
    const pluginDir = join(root, 'plugin');
    const runDir = join(root, 'run');
    for (const dir of [kubeletDir, pluginDir, stateDir, runDir])
      await mkdir(dir, { recursive: true });
    // What a kubelet host has: its directory a shared mount, so mounts the
    // plugin makes in its container propagate out; the state directory too,
    // where the keeper's helpers mount the volume files the plugin binds to loop devices.
    for (const dir of [kubeletDir, stateDir]) {
      await runOk('mount', ['--bind', dir, dir]);
      await runOk('mount', ['--make-rshared', dir]);
    }

    const storage = `torus-image-csi-torusd-${process.pid}`;
    containers.push(storage);
    const dataDir = join(root, 'data');
    await mkdir(dataDir);
    const volume = 'pvc-image-test';
    const { nbdPort } = await startTorusd(storage, dataDir, [`--ensure-volume=${volume}=256MiB`]);

    // Both as csi-node.yaml runs them: the keeper first, in a container of its own.
    const keeper = `torus-image-csi-keeper-${process.pid}`;
    containers.push(keeper);
    const shared = [
      '--network',
      'host',
      '--privileged',
      '--volume',
      '/dev:/dev',
      '--volume',
      `${stateDir}:/var/lib/torus-csi:rshared`,
      '--volume',
      `${runDir}:/run/torus-csi`,
    ];
    await podmanOk([
      'run',
      '--detach',
      '--name',
      keeper,
      ...shared,
      TEST_IMAGE,
      './bin/torusblk',
      'csi-keeper',
      '--socket=unix:///run/torus-csi/keeper.sock',
      '--state-dir=/var/lib/torus-csi',
    ]);
    await waitFor('the keeper socket', async () => existsSync(join(runDir, 'keeper.sock'))).catch(
      async (e: Error) => {
        throw new Error(`${e.message}:\n${await containerLogs(keeper)}`);
      },
    );
    const plugin = `torus-image-csi-node-${process.pid}`;
    containers.push(plugin);
    await podmanOk([
      'run',
      '--detach',
      '--name',
      plugin,
      ...shared,
      '--volume',
      `${kubeletDir}:${kubeletDir}:rshared`,
      '--volume',
      `${pluginDir}:/csi`,
      TEST_IMAGE,
      './bin/torusblk',
      'csi',
      '--node',
      '--endpoint=unix:///csi/csi.sock',
      '--node-id=image-test',
      `--nbd-address=127.0.0.1:${nbdPort}`,
      '--state-dir=/var/lib/torus-csi',
      `--kubelet-dir=${kubeletDir}`,
      '--attach=nbdfuse',
      '--keeper=unix:///run/torus-csi/keeper.sock',
    ]);
    const modulePath = './support/csi-client.js';
    const { CsiClient } = (await import(modulePath)) as CsiClientModule;
    const socket = join(pluginDir, 'csi.sock');
    /** A client once the plugin answers (a killed plugin's stale socket stays until it restarts). */
    const connectPlugin = async () => {
      let info: Record<string, unknown> | undefined;
      await waitFor('the plugin to answer on its socket', async () => {
        if (!existsSync(socket)) return false;
        client?.close();
        client = new CsiClient(socket);
        info = await client.call('Node', 'NodeGetInfo', {}).catch(() => undefined);
        return info !== undefined;
      }).catch(async (e: Error) => {
        throw new Error(`${e.message}:\n${await containerLogs(plugin)}`);
      });
      assert.equal(info!.node_id, 'image-test');
      return client!;
    };
    let csi = await connectPlugin();

    const capability = {
      access_mode: { mode: 'SINGLE_NODE_WRITER' },
      mount: { fs_type: 'ext4', mount_flags: [] },
    };
    const staging = join(kubeletDir, 'plugins/kubernetes.io/csi/csi.torus.dev/0123/globalmount');
    const target = join(kubeletDir, 'pods/0000-1111/volumes/kubernetes.io~csi', volume, 'mount');
    await mkdir(staging, { recursive: true });
    await mkdir(join(target, '..'), { recursive: true });
    const stage = {
      volume_id: volume,
      staging_target_path: staging,
      volume_capability: capability,
    };
    await csi.call('Node', 'NodeStageVolume', stage);
    const publish = { ...stage, target_path: target, readonly: false };
    await csi.call('Node', 'NodePublishVolume', publish);

    const mounted = hostMounts().find((m) => m.mountPoint === target);
    assert.ok(mounted, `${target} is mounted as the host sees it:\n${await containerLogs(plugin)}`);
    assert.equal(mounted.fsType, 'ext4');
    await writeSynced(join(target, 'hello'), 'from the host');
    const recordPath = join(stateDir, 'attachments', `${volume}.json`);
    const record = readFileSync(recordPath, 'utf8');
    assert.equal(helpersOf(volume).length, 1, 'one volume file helper, in the keeper container');

    // The plugin container dies as a crash would have it: its first process killed.
    await podmanOk(['kill', '--signal', 'KILL', plugin]);
    await waitFor(
      'the plugin container to stop',
      async () =>
        (await podmanOk(['inspect', '--format', '{{.State.Running}}', plugin])).trim() === 'false',
    );
    assert.equal(helpersOf(volume).length, 1, 'the helper outlives the plugin container');
    await writeSynced(join(target, 'after-kill'), 'still writable');
    assert.equal(readFileSync(join(target, 'hello'), 'utf8'), 'from the host');
    assert.ok(
      hostMounts().some((m) => m.mountPoint === target && m.superOptions.split(',').includes('rw')),
      'the mount stays read-write (ext4 saw no I/O error)',
    );

    // kubelet's calls to the restarted plugin are no-ops.
    await podmanOk(['start', plugin]);
    csi = await connectPlugin();
    await csi.call('Node', 'NodeStageVolume', stage);
    await csi.call('Node', 'NodePublishVolume', publish);
    assert.equal(readFileSync(recordPath, 'utf8'), record, 'the same attachment');
    const stats = await csi.call('Node', 'NodeGetVolumeStats', {
      volume_id: volume,
      volume_path: target,
    });
    assert.equal((stats.volume_condition as { abnormal: boolean }).abnormal, false);

    await csi.call('Node', 'NodeUnpublishVolume', { volume_id: volume, target_path: target });
    await csi.call('Node', 'NodeUnstageVolume', stage);
    const left = hostMounts().filter(
      (m) => m.mountPoint.startsWith(`${kubeletDir}/`) || m.mountPoint.startsWith(`${stateDir}/`),
    );
    assert.deepEqual(left, [], 'no mount left under the kubelet or state directory');
    const loop = /^\/dev\/(loop\d+)$/.exec(mounted.source)?.[1];
    if (loop) assert.ok(!existsSync(`/sys/block/${loop}/loop/backing_file`), `${loop} is detached`);
    await waitFor('the helper to exit', async () => helpersOf(volume).length === 0, 15_000);
  });
}

async function writeSynced(path: string, text: string): Promise<void> {
  const file = await open(path, 'w');
  await file.writeFile(text);
  await file.sync();
  await file.close();
}

/** Volume file helpers of this volume, whichever container runs them (the host sees every pid). */
function helpersOf(volume: string): number[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        const commandLine = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        return commandLine.includes('fuse-file-main') && commandLine.includes(`/fuse/${volume}"`);
      } catch {
        return false;
      }
    })
    .map(Number);
}

interface HostMount {
  mountPoint: string;
  /** The filesystem's options: ext4 that saw an I/O error turns `ro` here. */
  superOptions: string;
  fsType: string;
  source: string;
}

function hostMounts(): HostMount[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const fields = line.split(' ');
      const dash = fields.indexOf('-');
      return {
        mountPoint: unescapeMount(fields[4]),
        superOptions: fields[dash + 3],
        fsType: fields[dash + 1],
        source: unescapeMount(fields[dash + 2]),
      };
    });
}

function unescapeMount(path: string): string {
  return path.replace(/\\([0-7]{3})/g, (_, octal: string) =>
    String.fromCharCode(parseInt(octal, 8)),
  );
}

/**
 * Whatever a failed test left: every mount under the directory, deepest
 * first, then itself; then the loop devices those mounts were made from
 * (a plugin killed before NodeUnstage leaves them bound). Only devices seen
 * under our mounts are touched: other tests may hold loop devices too.
 */
async function unmountUnder(dir: string): Promise<void> {
  const mounts = hostMounts()
    .filter((m) => m.mountPoint === dir || m.mountPoint.startsWith(`${dir}/`))
    .sort((a, b) => b.mountPoint.length - a.mountPoint.length);
  for (const m of mounts) await run('umount', ['--lazy', m.mountPoint], { timeoutMs: 30_000 });
  const loops = new Set(mounts.map((m) => m.source).filter((s) => /^\/dev\/loop\d+$/.test(s)));
  for (const loop of loops) await run('losetup', ['--detach', loop], { timeoutMs: 30_000 });
}
