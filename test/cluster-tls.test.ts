/**
 * A secured etcd: TLS only, client certificates required. A CA, a server
 * and a client certificate are made with openssl; torusctl and torusd reach
 * etcd with --etcd-ca-file/--etcd-cert-file/--etcd-key-file (the etcd client
 * of torusd runs on its control-plane thread, so the files must get there
 * too), and are refused with a clear error without them.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { freePort } from './cluster-fixture.js';
import { etcdMissing, startEtcd, type EtcdServer } from './etcd-server.js';
import { missing, runOk, toolEnv } from './tools.js';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

const opensslMissing =
  spawnSync('sh', ['-c', 'command -v openssl'], { stdio: 'ignore' }).status === 0
    ? undefined
    : 'openssl is not installed: apt-get install openssl';

/** A CA, and server and client certificates it signed (EC P-256, valid a day), in `dir`. */
async function makeCertificates(dir: string): Promise<{
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  otherCa: string;
}> {
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'ca.key',
    '-out',
    'ca.crt',
    '-days',
    '1',
    '-subj',
    '/CN=torus test CA',
  );
  openssl(
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'other-ca.key',
    '-out',
    'other-ca.crt',
    '-days',
    '1',
    '-subj',
    '/CN=some other CA',
  );
  await writeFile(
    join(dir, 'server.ext'),
    'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n',
  );
  await writeFile(join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
  for (const [name, cn] of [
    ['server', '127.0.0.1'],
    ['client', 'torus'],
  ]) {
    openssl('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`);
    openssl(
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      'ca.crt',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      `${name}.crt`,
      '-days',
      '1',
      '-extfile',
      `${name}.ext`,
    );
  }
  const at = (f: string) => join(dir, f);
  return {
    ca: at('ca.crt'),
    serverCert: at('server.crt'),
    serverKey: at('server.key'),
    clientCert: at('client.crt'),
    clientKey: at('client.key'),
    otherCa: at('other-ca.crt'),
  };
}

describe(
  'a TLS-secured etcd',
  { skip: etcdMissing() ?? opensslMissing ?? missing('nbdinfo'), timeout: 90_000 },
  () => {
    let certDir: string;
    let certs: Awaited<ReturnType<typeof makeCertificates>>;
    let etcd: EtcdServer;
    let node: TorusdProcess | undefined;
    let dataDir: string | undefined;

    before(async () => {
      certDir = await mkdtemp(join(tmpdir(), 'torus-tls-'));
      certs = await makeCertificates(certDir);
      etcd = await startEtcd({
        tls: { certFile: certs.serverCert, keyFile: certs.serverKey, caFile: certs.ca },
      });
    });
    after(async () => {
      await node?.stop('SIGKILL');
      await etcd?.stop();
      if (dataDir) await removeDir(dataDir);
      await rm(certDir, { recursive: true, force: true });
    });

    const tlsFlags = () => [
      '--etcd-ca-file',
      certs.ca,
      '--etcd-cert-file',
      certs.clientCert,
      '--etcd-key-file',
      certs.clientKey,
    ];

    test('torusctl and torusd work through it with the client certificate', async () => {
      assert.match(etcd.endpoint, /^https:/);
      const init = await runCli('torusctl', ['-C', etcd.endpoint, ...tlsFlags(), 'init']);
      assert.equal(init.code, 0, init.stderr);
      assert.match(init.stdout, /initialised/);

      dataDir = await makeDataDir('tls');
      node = await startTorusd({
        dataDir,
        size: '128MiB',
        args: [
          '--cache-size',
          '16MiB',
          '--workers',
          '1',
          '--etcd',
          etcd.endpoint,
          ...tlsFlags(),
          '--peer-address',
          `127.0.0.1:${await freePort()}`,
          '--auto-join',
        ],
      });
      const created = await runCli('torusctl', [
        '-C',
        etcd.endpoint,
        ...tlsFlags(),
        'volume',
        'create-block',
        'secure',
        '16MiB',
      ]);
      assert.equal(created.code, 0, created.stderr);
      const peers = await runCli('torusctl', [
        '-C',
        etcd.endpoint,
        ...tlsFlags(),
        'list-peers',
        '-o',
        'json',
      ]);
      assert.equal(peers.code, 0, peers.stderr);
      assert.equal(
        (JSON.parse(peers.stdout).peers as unknown[]).length,
        1,
        'the node registered through TLS',
      );
      const info = JSON.parse(
        await runOk('nbdinfo', ['--json', node.uri('secure')], { env: toolEnv }),
      );
      assert.equal(
        info.exports[0]['export-size'],
        16 * 1024 * 1024,
        'and serves the volume it read from etcd',
      );
      assert.doesNotMatch(node.output() + init.stderr, /DeprecationWarning/);
    });

    test('without a client certificate, or trusting another CA, it is refused with a clear error, promptly', async () => {
      const started = Date.now();
      const noCert = await runCli('torusctl', [
        '-C',
        etcd.endpoint,
        '--etcd-ca-file',
        certs.ca,
        'list-peers',
      ]);
      assert.notEqual(noCert.code, 0);
      assert.match(
        noCert.stderr,
        new RegExp(`etcd at ${etcd.endpoint.replace(/[.:/]/g, '\\$&')}`),
        `names the endpoint: ${noCert.stderr}`,
      );
      const wrongCa = await runCli('torusctl', [
        '-C',
        etcd.endpoint,
        '--etcd-ca-file',
        certs.otherCa,
        '--etcd-cert-file',
        certs.clientCert,
        '--etcd-key-file',
        certs.clientKey,
        'list-peers',
      ]);
      assert.notEqual(wrongCa.code, 0);
      assert.match(
        noCert.stderr,
        /etcd refused this client's certificate \(give --etcd-cert-file and --etcd-key-file/,
      );
      assert.match(wrongCa.stderr, /etcd's server certificate is not signed by --etcd-ca-file/);
      const plain = await runCli('torusctl', [
        '-C',
        etcd.endpoint.replace('https:', 'http:'),
        'list-peers',
      ]);
      assert.notEqual(plain.code, 0, 'plain HTTP to a TLS etcd fails');
      assert.ok(Date.now() - started < 60_000, 'each refusal within its deadline, not a hang');
      for (const r of [noCert, wrongCa, plain]) {
        assert.doesNotMatch(
          r.stderr,
          /\n\s+at /,
          `an error message, not a stack trace: ${r.stderr}`,
        );
        assert.doesNotMatch(
          r.stderr,
          /DeprecationWarning/,
          'no warning about an IP address as TLS server name',
        );
      }
    });
  },
);
