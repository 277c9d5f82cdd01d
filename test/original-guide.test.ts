/**
 * The original CoreOS Torus getting-started guide (Documentation/
 * getting-started.md), steps 2–6, run as written on one machine: two
 * storage nodes without --nbd, so both want the default NBD address
 * 127.0.0.1:10809. The second used to die with EADDRINUSE; now it keeps
 * running, serves NBD on its unix socket and says where TCP NBD is not
 * served. Substituted, and only these: etcd's port and the peer ports (free
 * ones; 2379 and 40000 may be taken on a shared machine), the data
 * directories (temporary ones), and --size 1GiB for 20GiB (each store is
 * preallocated, and 40 GiB is too much to ask of a test machine).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { connect, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { freePorts } from './cluster-fixture.js';
import { etcdMissing, startEtcd, type EtcdServer } from './etcd-server.js';
import { missing, run } from './tools.js';
import { BIN, makeDataDir, removeDir, runCli } from './torusd-process.js';

const DEFAULT_NBD = { host: '127.0.0.1', port: 10809 };

interface GuideNode {
  child: ChildProcess;
  dataDir: string;
  output: () => string;
  exited: Promise<number | string>;
}

/** Does something accept connections on the default NBD address right now? */
function defaultNbdTaken(): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(DEFAULT_NBD);
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Start `torusd ARGS` and resolve once it registered in etcd (or fail with what it printed). */
async function startGuideNode(args: string[], dataDir: string): Promise<GuideNode> {
  const child = spawn(process.execPath, [join(BIN, 'torusd'), ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TORUS_LOG_FORMAT: 'json', TORUS_CACHE_SIZE: '64MiB' },
  });
  let text = '';
  const exited = new Promise<number | string>((done) =>
    child.once('exit', (code, signal) => done(code ?? signal ?? -1)),
  );
  await new Promise<void>((done, fail) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      fail(new Error(`torusd did not register within 30 s:\n${text}`));
    }, 30_000);
    const onData = (d: Buffer) => {
      text += d.toString();
      if (/registered as /.test(text)) {
        clearTimeout(timer);
        done();
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    void exited.then((code) => {
      clearTimeout(timer);
      fail(new Error(`torusd exited (${code}) before registering:\n${text}`));
    });
  });
  return { child, dataDir, output: () => text, exited };
}

describe(
  'the original getting-started guide, as written',
  { skip: etcdMissing(), timeout: 120_000 },
  () => {
    let etcd: EtcdServer;
    let etcdHostPort: string;
    let peerPorts: number[];
    const dirs: string[] = [];
    const nodes: GuideNode[] = [];
    /** The guide's commands find etcd themselves (127.0.0.1:2379); here through TORUS_ETCD. */
    const env = () => ({ TORUS_ETCD: etcdHostPort });

    before(async () => {
      etcd = await startEtcd();
      etcdHostPort = etcd.endpoint.replace(/^http:\/\//, '');
      peerPorts = await freePorts(2);
      for (let i = 0; i < 2; i++) dirs.push(await makeDataDir(`guide${i + 1}`));
    });

    after(async () => {
      for (const node of nodes) {
        if (node.child.exitCode === null && node.child.signalCode === null)
          node.child.kill('SIGKILL');
        await node.exited;
      }
      await etcd?.stop();
      await Promise.all(dirs.map(removeDir));
    });

    test('two storage nodes on the default NBD port both run; the second says where NBD is', async () => {
      const r = await runCli('torusctl', ['init'], env());
      assert.equal(r.code, 0, r.stderr);

      const takenBefore = await defaultNbdTaken();
      // Step 3, "Running manually": the two lines, with only the substitutions above.
      for (let i = 0; i < 2; i++) {
        const args = [
          '--etcd',
          etcdHostPort,
          '--peer-address',
          `http://127.0.0.1:${peerPorts[i]}`,
          '--data-dir',
          dirs[i],
          '--size',
          '1GiB',
        ];
        nodes.push(await startGuideNode(args, dirs[i]));
      }

      const status = async (dataDir: string) => {
        const s = await runCli('torusctl', ['status', '--data-dir', dataDir]);
        assert.equal(s.code, 0, s.stderr);
        return JSON.parse(s.stdout) as {
          nbd: { tcp?: string; unix?: string; tcpUnavailable?: string };
        };
      };
      const [first, second] = [await status(dirs[0]), await status(dirs[1])];
      if (!takenBefore) assert.equal(first.nbd.tcp, '127.0.0.1:10809');
      assert.equal(second.nbd.tcp, undefined);
      assert.match(second.nbd.tcpUnavailable ?? '', /default 127\.0\.0\.1:10809 is in use.*--nbd/);
      assert.equal(second.nbd.unix, join(dirs[1], 'nbd.sock'));
      assert.match(nodes[1].output(), /NBD not served on TCP: the default 127\.0\.0\.1:10809/);
      // Its log line is a warning, without a stack.
      assert.doesNotMatch(nodes[1].output(), /EADDRINUSE|\n\s+at /);

      // Steps 4–6: both report in, join the ring, and a volume is created.
      const peers = await runCli('torusctl', ['list-peers', '-o', 'json'], env());
      assert.equal(peers.code, 0, peers.stderr);
      assert.equal((JSON.parse(peers.stdout) as { peers: unknown[] }).peers.length, 2);
      const add = await runCli('torusctl', ['peer', 'add', '--all-peers'], env());
      assert.equal(add.code, 0, add.stderr);
      const create = await runCli('torusblk', ['volume', 'create', 'myVolume', '10GiB'], env());
      assert.equal(create.code, 0, create.stderr);

      // The second node serves the volume on its unix socket.
      if (!missing('nbdinfo')) {
        const info = await run('nbdinfo', [
          '--size',
          `nbd+unix:///myVolume?socket=${second.nbd.unix}`,
        ]);
        assert.equal(info.code, 0, info.stderr);
        assert.equal(info.stdout.trim(), String(10 * 1024 ** 3));
      }
      for (const node of nodes) {
        assert.equal(node.child.exitCode, null, `a node exited:\n${node.output()}`);
        node.child.kill('SIGTERM');
        assert.equal(await node.exited, 0, node.output());
      }
    });

    test('an NBD address given with --nbd that is taken stays fatal, naming it', async () => {
      const [taken] = await freePorts(1);
      const blocker = await new Promise<Server>((done) => {
        const server = createServer();
        server.listen(taken, '127.0.0.1', () => done(server));
      });
      try {
        const dir = await makeDataDir('guide-taken');
        dirs.push(dir);
        const r = await runCli('torusd', [
          '--data-dir',
          dir,
          '--size',
          '64MiB',
          '--nbd',
          `127.0.0.1:${taken}`,
        ]);
        assert.equal(r.code, 1, r.stderr);
        assert.match(
          r.stderr,
          new RegExp(
            `--nbd 127\\.0\\.0\\.1:${taken}: cannot listen for NBD: the port is already in use`,
          ),
        );
      } finally {
        blocker.close();
      }
    });
  },
);
