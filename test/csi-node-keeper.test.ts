/**
 * The attachment keeper (`torusblk csi-keeper`) with a node plugin
 * (`torusblk csi --node --keeper …`), as processes on this host, a real
 * torusd, real ext4 through the FUSE volume file and a loop device:
 *
 * the keeper starts the helper (its child, not the plugin's) → kill -9 of the
 * plugin: the helper lives on, the mount reads and writes → the restarted
 * plugin's repeated stage + publish are no-ops → a restarted keeper (it keeps
 * no state) still answers for the helper → the helper killed (what a keeper
 * container restart does): the condition is abnormal, a restage while a pod
 * holds the mount is refused saying why, and once the pod let go the volume is
 * attached again with its data → unpublish + unstage leave no helper, loop
 * device or mount. And the keeper's socket refuses what a plugin would not ask.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, open, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import type { AttachmentRecord } from '../src/csi/node/attachments.js';
import { waitFor } from '../src/csi/node/poll.js';
import { sha256 } from './cluster-fixture.js';
import { CsiClient, rejectsWith, startCsiPlugin, type CsiProcess } from './support/csi-client.js';
import {
  forceCleanup,
  helpersUnder,
  loopsUnder,
  mountCapability,
  mountsUnder,
} from './support/csi-node-kit.js';
import { missing } from './tools.js';
import {
  BIN,
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

const MiB = 1024 * 1024;
const skip =
  (process.getuid?.() === 0 ? undefined : 'needs root (mounts, loop devices)') ??
  (existsSync('/dev/fuse') ? undefined : 'needs /dev/fuse') ??
  missing('mkfs.ext4', 'losetup', 'blkid', 'mount', 'umount');

interface KeeperProcess {
  child: ChildProcess;
  output(): string;
  stop(): Promise<number | string>;
}

async function startKeeper(socket: string, stateDir: string): Promise<KeeperProcess> {
  const child = spawn(
    process.execPath,
    [join(BIN, 'torusblk'), 'csi-keeper', '--socket', `unix://${socket}`, '--state-dir', stateDir],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TORUS_LOG_FORMAT: 'json' } },
  );
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | string>((done) =>
    child.once('exit', (code, signal) => done(code ?? signal ?? -1)),
  );
  const listening = await waitFor(
    async () => output.includes('attachment keeper listening') || child.exitCode !== null,
    20_000,
  );
  assert.ok(listening && child.exitCode === null, `the keeper did not start:\n${output}`);
  return {
    child,
    output: () => output,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

/** One raw request on the keeper's socket: what a plugin of another version, or a stranger, would send. */
function keeperRequest(socket: string, body: object): Promise<Record<string, unknown>> {
  return new Promise((done, fail) => {
    const c = connect(socket);
    let text = '';
    c.setEncoding('utf8');
    c.on('connect', () => c.write(JSON.stringify(body) + '\n'));
    c.on('data', (d: string) => (text += d));
    c.on('error', fail);
    c.on('end', () => done(JSON.parse(text) as Record<string, unknown>));
  });
}

function parentOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // pid (comm) state ppid …; comm may hold spaces, so count from its closing parenthesis.
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

describe(
  'the attachment keeper keeps FUSE attachments through plugin restarts',
  { skip, timeout: 240_000 },
  () => {
    let work: string;
    let dataDir: string;
    let torusd: TorusdProcess;
    let keeper: KeeperProcess | undefined;
    let plugin: CsiProcess | undefined;
    let client: CsiClient | undefined;
    let stateDir: string;
    let kubeletDir: string;
    let keeperSocket: string;
    const volume = 'pvc-keeper';

    const staging = () => join(kubeletDir, 'plugins/kubernetes.io/csi/pv', volume, 'globalmount');
    const target = () => join(kubeletDir, 'pods/pod-1/volumes/kubernetes.io~csi', volume, 'mount');
    const stageRequest = () => ({
      volume_id: volume,
      staging_target_path: staging(),
      volume_capability: mountCapability('ext4'),
      volume_context: {},
    });
    const publishRequest = () => ({ ...stageRequest(), target_path: target(), readonly: false });
    const node = (method: string, request: object) => client!.call('Node', method, request);
    const record = async () =>
      JSON.parse(
        await readFile(join(stateDir, 'attachments', `${volume}.json`), 'utf8'),
      ) as AttachmentRecord;

    async function startPlugin(): Promise<void> {
      plugin = await startCsiPlugin(join(work, 'csi.sock'), [
        '--node',
        '--node-id',
        'keeper-test',
        '--nbd-address',
        `127.0.0.1:${torusd.port}`,
        '--state-dir',
        stateDir,
        '--kubelet-dir',
        kubeletDir,
        '--attach',
        'nbdfuse',
        '--keeper',
        `unix://${keeperSocket}`,
      ]);
      client = new CsiClient(plugin.socket);
    }

    async function killPlugin(): Promise<void> {
      client?.close();
      plugin!.child.kill('SIGKILL');
      await plugin!.stop();
    }

    async function writeAndSync(path: string, bytes: Buffer): Promise<void> {
      const file = await open(path, 'w');
      await file.writeFile(bytes);
      await file.sync();
      await file.close();
    }

    before(async () => {
      work = await makeDataDir('csi-keeper');
      dataDir = join(work, 'data');
      stateDir = join(work, 'state');
      kubeletDir = join(work, 'kubelet');
      keeperSocket = join(work, 'run', 'keeper.sock');
      for (const dir of [dataDir, stateDir, kubeletDir]) await mkdir(dir, { recursive: true });
      torusd = await startTorusd({ dataDir, size: '1GiB' });
      const created = await runCli('torusctl', [
        'volume',
        'create-block',
        volume,
        '256MiB',
        '--data-dir',
        dataDir,
      ]);
      assert.equal(created.code, 0, created.stderr);
      keeper = await startKeeper(keeperSocket, stateDir);
      await startPlugin();
      await mkdir(staging(), { recursive: true });
      await mkdir(join(target(), '..'), { recursive: true });
    });

    after(async () => {
      client?.close();
      await plugin?.stop();
      await keeper?.stop();
      if (stateDir && kubeletDir) await forceCleanup(stateDir, kubeletDir);
      await torusd?.stop();
      if (work) await removeDir(work);
    });

    const files = new Map<string, string>();

    test('the keeper, not the plugin, starts the helper; stage + publish give a working ext4', async () => {
      await node('NodeStageVolume', stageRequest());
      await node('NodePublishVolume', publishRequest());
      const attached = (await record()).attached;
      assert.equal(attached.helperKeeper, keeperSocket, 'the record names the keeper');
      assert.equal(
        parentOf(attached.helperPid!),
        keeper!.child.pid,
        "the helper is the keeper's child",
      );
      const bytes = randomBytes(2 * MiB);
      await writeAndSync(join(target(), 'before-kill'), bytes);
      files.set('before-kill', sha256(bytes));
    });

    test('kill -9 of the plugin: the helper lives on, the mount reads and writes', async () => {
      const { helperPid } = (await record()).attached;
      await killPlugin();
      assert.deepEqual(helpersUnder(stateDir), [helperPid], 'the same helper, still running');
      const bytes = randomBytes(MiB);
      await writeAndSync(join(target(), 'after-kill'), bytes);
      files.set('after-kill', sha256(bytes));
      for (const [name, digest] of files)
        assert.equal(sha256(await readFile(join(target(), name))), digest, name);
    });

    test("the restarted plugin's repeated stage + publish are no-ops", async () => {
      const before = await record();
      await startPlugin();
      await node('NodeStageVolume', stageRequest());
      await node('NodePublishVolume', publishRequest());
      assert.deepEqual(await record(), before, 'the same attachment: helper, device, time');
      assert.deepEqual(
        await mountsUnder(kubeletDir),
        [target(), staging()],
        'one staging mount, one bind',
      );
      const stats = await node('NodeGetVolumeStats', { volume_id: volume, volume_path: target() });
      assert.equal(stats.volume_condition.abnormal, false, stats.volume_condition.message);
    });

    test('a restarted keeper keeps no state: it still answers for the helper', async () => {
      keeper!.child.kill('SIGKILL');
      await keeper!.stop();
      const { helperPid } = (await record()).attached;
      assert.deepEqual(
        helpersUnder(stateDir),
        [helperPid],
        'on a host the helper outlives the keeper',
      );
      keeper = await startKeeper(keeperSocket, stateDir); // takes over the stale socket
      const alive = await keeperRequest(keeperSocket, {
        protocol: 1,
        op: 'alive',
        pid: helperPid,
        dir: (await record()).attached.helperDir,
      });
      assert.deepEqual(alive, { alive: true });
    });

    test('the helper gone (a keeper container restarted): abnormal, refused while a pod holds it, attached again after', async () => {
      const old = (await record()).attached;
      process.kill(old.helperPid!, 'SIGKILL');
      await waitFor(async () => helpersUnder(stateDir).length === 0, 10_000);
      const stats = await node('NodeGetVolumeStats', { volume_id: volume, volume_path: target() });
      assert.equal(stats.volume_condition.abnormal, true);
      assert.match(stats.volume_condition.message, /is gone/);
      await rejectsWith(
        node('NodeStageVolume', stageRequest()),
        grpc.status.FAILED_PRECONDITION,
        /still mounted at .*mount: those pods get I\/O errors until they are restarted/,
      );
      // The pod is restarted: kubelet unpublishes its old mount, publishes the new pod's.
      await node('NodeUnpublishVolume', { volume_id: volume, target_path: target() });
      await mkdir(join(target(), '..'), { recursive: true });
      await node('NodePublishVolume', publishRequest());
      const again = (await record()).attached;
      assert.notEqual(again.helperPid, old.helperPid, 'a new helper');
      assert.equal(parentOf(again.helperPid!), keeper!.child.pid, 'started by the new keeper');
      for (const [name, digest] of files)
        assert.equal(
          sha256(await readFile(join(target(), name))),
          digest,
          `${name}, synced before`,
        );
      await writeFile(join(target(), 'after-repair'), 'works');
      const stats2 = await node('NodeGetVolumeStats', { volume_id: volume, volume_path: target() });
      assert.equal(stats2.volume_condition.abnormal, false, stats2.volume_condition.message);
    });

    test('the keeper refuses requests a plugin would not make', async () => {
      const outside = await keeperRequest(keeperSocket, {
        protocol: 1,
        op: 'start',
        args: { nbd: { path: '/x' }, export: 'v', dir: '/etc/fuse/v', readOnly: false },
      });
      assert.match(String(outside.error), /outside .*--state-dir/);
      const version = await keeperRequest(keeperSocket, { protocol: 99, op: 'alive' });
      assert.match(String(version.error), /same release/);
      const unknown = await keeperRequest(keeperSocket, { protocol: 1, op: 'exec' });
      assert.match(String(unknown.error), /unknown op/);
    });

    test('unpublish + unstage leave no helper, loop device, mount or record; the keeper stops cleanly', async () => {
      await node('NodeUnpublishVolume', { volume_id: volume, target_path: target() });
      await node('NodeUnstageVolume', { volume_id: volume, staging_target_path: staging() });
      assert.deepEqual(await mountsUnder(kubeletDir, stateDir), [], 'no mount');
      assert.deepEqual(await loopsUnder(stateDir), [], 'no loop device');
      assert.deepEqual(helpersUnder(stateDir), [], 'no helper');
      assert.deepEqual(await readdir(join(stateDir, 'attachments')), [], 'no record');
      assert.equal(await keeper!.stop(), 0, keeper!.output());
      assert.ok(!existsSync(keeperSocket), 'the socket is removed');
      keeper = undefined;
      await rm(join(work, 'run'), { recursive: true, force: true });
    });
  },
);
