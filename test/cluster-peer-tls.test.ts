/**
 * Mutual TLS on the peer port (--peer-tls-dir): a real etcd, three real
 * torusd nodes whose certificates the cluster CA signed (made here with
 * openssl, laid out as a Kubernetes TLS Secret: ca.crt, tls.crt, tls.key),
 * replication 2. Data written through one node's NBD export reads back
 * through the others; a node without TLS and a node of another CA cannot
 * reach any copy, and the TLS nodes log why, once; a raw TLS client with a
 * foreign certificate is closed before it can say anything; torusblk
 * nbdserve with its own certificate reads the volume.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { Cluster, freePort, sha256, until, type ClusterNode } from './cluster-fixture.js';
import { etcdMissing } from './etcd-server.js';
import { missing, run, runOk, toolEnv } from './tools.js';
import { runCli } from './torusd-process.js';
import { startNbdserve } from './support/nbdserve-process.js';

const opensslMissing =
  spawnSync('sh', ['-c', 'command -v openssl'], { stdio: 'ignore' }).status === 0
    ? undefined
    : 'openssl is not installed: apt-get install openssl';

const MiB = 1024 * 1024;

/**
 * A CA and, per name, a directory holding ca.crt, tls.crt and tls.key (EC
 * P-256, a day, SAN IP:127.0.0.1) signed by it; `foreign` gets a CA of its own.
 */
function makeCertificates(dir: string, names: string[]): void {
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  for (const ca of ['ca', 'other-ca'])
    openssl(
      'req',
      '-x509',
      ...ec,
      '-keyout',
      `${ca}.key`,
      '-out',
      `${ca}.crt`,
      '-days',
      '1',
      '-subj',
      `/CN=torus ${ca}`,
    );
  execFileSync('sh', [
    '-c',
    `printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth,clientAuth\\n' > ${dir}/node.ext`,
  ]);
  for (const name of names) {
    const ca = name === 'foreign' ? 'other-ca' : 'ca';
    execFileSync('mkdir', ['-p', join(dir, name)]);
    openssl(
      'req',
      ...ec,
      '-keyout',
      `${name}/tls.key`,
      '-out',
      `${name}.csr`,
      '-subj',
      `/CN=${name}`,
    );
    openssl(
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      `${ca}.crt`,
      '-CAkey',
      `${ca}.key`,
      '-CAcreateserial',
      '-out',
      `${name}/tls.crt`,
      '-days',
      '1',
      '-extfile',
      'node.ext',
    );
    execFileSync('cp', [join(dir, `${ca}.crt`), join(dir, name, 'ca.crt')]);
  }
}

/** Log lines of `node` refusing a peer over TLS, whatever the reason. */
function refusals(node: ClusterNode, reason: RegExp): string[] {
  return node
    .output()
    .split('\n')
    .filter((l) => l.includes('refusing peer connection: TLS') && reason.test(l));
}

describe(
  'mutual TLS between storage nodes',
  { skip: etcdMissing() ?? opensslMissing ?? missing('nbdcopy'), timeout: 240_000 },
  () => {
    let certs: string;
    let cluster: Cluster;
    let scratch: string;
    let data: Buffer;
    let nbdserve: ChildProcess | undefined;

    before(async () => {
      certs = await mkdtemp(join(tmpdir(), 'torus-peer-tls-'));
      scratch = await mkdtemp(join(tmpdir(), 'torus-peer-tls-data-'));
      makeCertificates(certs, ['n0', 'n1', 'n2', 'client', 'foreign']);
      cluster = await Cluster.start({
        nodes: 3,
        replication: 2,
        size: '128MiB',
        node: (i) => ({ args: ['--peer-tls-dir', join(certs, `n${i}`)] }),
      });
    });
    after(async () => {
      nbdserve?.kill('SIGKILL');
      await cluster?.stop();
      await rm(certs, { recursive: true, force: true });
      await rm(scratch, { recursive: true, force: true });
    });

    test('three TLS nodes replicate (R=2) and read back through every node', async () => {
      const created = await cluster.ctl('volume', 'create-block', 'vol', '64MiB');
      assert.equal(created.code, 0, created.stderr);
      data = randomBytes(16 * MiB);
      await writeFile(join(scratch, 'in.bin'), data);
      const [n0, n1, n2] = cluster.nodes;
      await runOk('nbdcopy', ['--flush', join(scratch, 'in.bin'), n0.uri('vol')], {
        timeoutMs: 60_000,
        env: toolEnv,
      });
      // Two copies of every block, so at least one on another node than n0.
      assert.ok(
        (await cluster.usedBytes()) >= 2 * 16 * MiB,
        `fewer than two copies stored\n${cluster.diagnostics()}`,
      );
      for (const node of [n1, n2]) {
        const out = join(scratch, `out-${node.index}.bin`);
        await runOk('nbdcopy', [node.uri('vol'), out], { timeoutMs: 60_000, env: toolEnv });
        assert.equal(sha256((await readFile(out)).subarray(0, data.length)), sha256(data));
      }
      for (const node of cluster.nodes)
        assert.deepEqual(refusals(node, /./), [], `node ${node.index} refused a member`);
    });

    /** A node that is not in the ring reads the volume: every block must come from a peer. */
    async function readThrough(node: ClusterNode) {
      return run('nbdcopy', [node.uri('vol'), join(scratch, `out-${node.index}.bin`)], {
        timeoutMs: 60_000,
      });
    }

    test('a node without --peer-tls-dir reaches no copy; the TLS nodes log the refusal once', async () => {
      const plain = await cluster.addNode({ label: 'plain' });
      await plain.start();
      const first = await readThrough(plain);
      assert.notEqual(first.code, 0, 'a plaintext node read data from TLS peers');
      const second = await readThrough(plain);
      assert.notEqual(second.code, 0);
      const holders = cluster.nodes.slice(0, 3);
      const refused = holders.flatMap((n) => refusals(n, /does not speak TLS/));
      assert.ok(refused.length > 0, `no TLS node logged the refusal\n${cluster.diagnostics()}`);
      for (const node of holders)
        assert.ok(
          refusals(node, /does not speak TLS/).length <= 1,
          `node ${node.index} logged the same refusal more than once:\n${refusals(node, /./).join('\n')}`,
        );
      await plain.kill();
    });

    test('a node whose certificate another CA signed reaches no copy, and is refused', async () => {
      const foreign = await cluster.addNode({
        label: 'foreign',
        args: ['--peer-tls-dir', join(certs, 'foreign')],
      });
      await foreign.start();
      const r = await readThrough(foreign);
      assert.notEqual(r.code, 0, 'a node of another CA read data');
      // It does not trust the members' certificates, and says so.
      assert.match(foreign.output(), /not signed by the cluster CA/);
      await foreign.kill();
    });

    test("a client presenting another CA's certificate is closed before it is read", async () => {
      const [n0] = cluster.nodes;
      const socket = connect({
        host: '127.0.0.1',
        port: n0.peerPort,
        ca: await readFile(join(certs, 'ca.crt')),
        cert: await readFile(join(certs, 'foreign', 'tls.crt')),
        key: await readFile(join(certs, 'foreign', 'tls.key')),
        checkServerIdentity: () => undefined,
      });
      const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
      socket.on('error', () => undefined);
      await new Promise<void>((resolve) => socket.once('secureConnect', () => resolve()));
      assert.ok(socket.authorized, 'the member presented a certificate of the cluster CA');
      socket.write(Buffer.alloc(64)); // not TBP: it must never be parsed
      await closed;
      await until('the member to log the refusal', async () =>
        refusals(n0, /not signed by the cluster CA/).length > 0 ? true : undefined,
      );
      assert.doesNotMatch(n0.output(), /framing error/);
    });

    test('torusblk nbdserve with a certificate of the cluster CA reads the volume', async () => {
      const port = await freePort();
      const scratchDir = join(scratch, 'nbdserve');
      await mkdir(scratchDir);
      nbdserve = (
        await startNbdserve({
          etcdEndpoint: cluster.endpoint,
          port,
          scratchDir,
          cacheSize: '16MiB',
          args: ['--workers', '1', '--peer-tls-dir', join(certs, 'client')],
        })
      ).child;
      const out = join(scratch, 'out-nbdserve.bin');
      await runOk('nbdcopy', [`nbd://127.0.0.1:${port}/vol`, out], {
        timeoutMs: 60_000,
        env: toolEnv,
      });
      assert.equal(sha256((await readFile(out)).subarray(0, data.length)), sha256(data));
    });

    test('torusctl block dump with --peer-tls-dir reads a snapshot through the library, in-process', async () => {
      const snap = await cluster.ctl('block', 'snapshot', 'create', 'vol@tls');
      assert.equal(snap.code, 0, snap.stderr);
      const out = join(scratch, 'out-dump.bin');
      const dumped = await runCli('torusctl', [
        '-C',
        cluster.endpoint,
        '--peer-tls-dir',
        join(certs, 'client'),
        'block',
        'dump',
        'vol@tls',
        out,
      ]);
      assert.equal(dumped.code, 0, dumped.stderr);
      assert.equal(sha256((await readFile(out)).subarray(0, data.length)), sha256(data));
    });

    test('a certificate the given CA did not sign is refused at start-up, naming the files', async () => {
      const mixed = join(certs, 'mixed');
      await mkdir(mixed);
      await copyFile(join(certs, 'ca.crt'), join(mixed, 'ca.crt'));
      await copyFile(join(certs, 'foreign', 'tls.crt'), join(mixed, 'tls.crt'));
      await copyFile(join(certs, 'foreign', 'tls.key'), join(mixed, 'tls.key'));
      const r = await runCli('torusd', [
        '--data-dir',
        join(scratch, 'never'),
        '--etcd',
        cluster.endpoint,
        '--peer-tls-dir',
        mixed,
      ]);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, /tls\.crt .* is not signed by the CA in .*ca\.crt/);
    });
  },
);
