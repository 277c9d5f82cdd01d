/**
 * The CSI node's attach path over NBD-over-TLS, end to end: a torusd that
 * serves NBD only over TLS and checks client certificates, a node service
 * given the client's certificate directory (`torusblk csi --tls-certificates`),
 * and a volume staged (ext4 made over TLS), published, written, unstaged and
 * staged again with its files intact. A node service without TLS is refused
 * by that server, says so, and leaves nothing attached.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createNodeService, type NodeService } from '../src/csi/node/node-service.js';
import type { NbdClientTlsFiles } from '../src/dataplane/nbd-client/client.js';
import {
  forceCleanup,
  helpersUnder,
  loopsUnder,
  kubeletCalls,
  mountsUnder,
} from './support/csi-node-kit.js';
import { makeTestPki, type TestPki } from './tls-pki.js';
import { missing } from './tools.js';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

const MiB = 1024 * 1024;
const rootOnly = process.getuid?.() === 0 ? undefined : 'needs root (mounts, loop devices)';
const noFuse = existsSync('/dev/fuse') ? undefined : 'needs /dev/fuse';

describe(
  'CSI node attach over NBD with TLS',
  { skip: rootOnly ?? noFuse ?? missing('mkfs.ext4', 'openssl'), timeout: 120_000 },
  () => {
    let work: string;
    let pki: TestPki;
    let dataDir: string;
    let torusd: TorusdProcess;
    let stateDir: string;
    let kubeletDir: string;
    const services: NodeService[] = [];

    const newService = (nbdTls: NbdClientTlsFiles | undefined) => {
      const service = createNodeService({
        nodeId: 'node-tls',
        nbdAddress: `127.0.0.1:${torusd.port}`,
        stateDir,
        kubeletDir,
        attachMode: 'auto',
        kernelNbd: { nbdModule: false, nbdClient: false },
        nbdTls,
      });
      services.push(service);
      current = service;
      return service;
    };
    // The TLS service, or the plain one of the refusal test.
    let current: NodeService;
    const { target, stage, publish, unpublish, unstage } = kubeletCalls(
      () => current,
      () => kubeletDir,
    );

    before(async () => {
      work = await mkdtemp(join(tmpdir(), 'torus-csi-tls-'));
      pki = await makeTestPki(work);
      dataDir = await makeDataDir('csi-tls');
      torusd = await startTorusd({
        dataDir,
        size: '1GiB',
        args: ['--tls', 'require', '--tls-certificates', pki.server, '--tls-verify-peer'],
      });
      const created = await runCli('torusctl', [
        'volume',
        'create-block',
        'secure',
        '256MiB',
        '--data-dir',
        dataDir,
      ]);
      assert.equal(created.code, 0, created.stderr);
      stateDir = await mkdtemp(join(tmpdir(), 'torus-csi-tls-state-'));
      kubeletDir = await mkdtemp(join(tmpdir(), 'torus-csi-tls-kubelet-'));
      await mkdir(join(kubeletDir, 'plugins/kubernetes.io/csi/pv'), { recursive: true });
      await mkdir(join(kubeletDir, 'pods'), { recursive: true });
    });

    after(async () => {
      for (const service of services) await service.close();
      if (stateDir && kubeletDir) await forceCleanup(stateDir, kubeletDir);
      await torusd?.stop();
      for (const dir of [stateDir, kubeletDir, work])
        if (dir) await rm(dir, { recursive: true, force: true });
      if (dataDir) await removeDir(dataDir);
    });

    test('stage (mkfs over TLS) → publish → files → unstage → stage again: files intact', async () => {
      newService({ certificates: pki.client });
      await stage('secure');
      await publish('secure', 'pod1');
      const content = randomBytes(2 * MiB);
      await writeFile(join(target('pod1', 'secure'), 'data.bin'), content);
      await unpublish('secure', 'pod1');
      await unstage('secure');
      assert.deepEqual(await loopsUnder(stateDir), []);

      await stage('secure');
      await publish('secure', 'pod2');
      assert.deepEqual(await readFile(join(target('pod2', 'secure'), 'data.bin')), content);
      await unpublish('secure', 'pod2');
      await unstage('secure');
      assert.deepEqual(await mountsUnder(kubeletDir, stateDir), []);
      assert.deepEqual(helpersUnder(stateDir), []);
    });

    test('a node service without TLS is refused, says why, and leaves nothing attached', async () => {
      newService(undefined);
      await assert.rejects(stage('secure'), (err: Error) => {
        console.log(`# refused: ${err.message}`);
        assert.match(err.message, /TLS/i, err.message);
        return true;
      });
      assert.deepEqual(await mountsUnder(kubeletDir, stateDir), []);
      assert.deepEqual(await loopsUnder(stateDir), []);
      assert.deepEqual(helpersUnder(stateDir), []);
    });
  },
);
