/**
 * torusctl key rotate: an encrypted volume (and its snapshot) with data,
 * its key re-wrapped with a new master key, the nodes restarted with the
 * new key only: the data reads back; a node with the old key alone refuses
 * the volume, naming both fingerprints. Single node (offline, refused while
 * torusd runs) and a two-node cluster (on etcd, nodes running).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Cluster } from './cluster-fixture.js';
import { missing, python } from './tools.js';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

const skip = missing('nbdsh');
const MiB = 1024 * 1024;
const DATA = 2 * MiB;

async function keyFile(path: string): Promise<string> {
  await writeFile(path, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
  return path;
}

/** Write `bytes` at 0 of `uri` and flush. */
async function writeAt(uri: string, image: string, bytes: Buffer): Promise<void> {
  await writeFile(image, bytes);
  const r = await python(`
import nbd
h = nbd.NBD()
h.connect_uri(${JSON.stringify(uri)})
h.pwrite(open(${JSON.stringify(image)}, 'rb').read(), 0)
h.flush()
h.shutdown()
`);
  assert.equal(r.code, 0, r.stderr);
}

/** The first DATA bytes of `uri`, or the NBD error text when it cannot be opened. */
async function readAt(uri: string, into: string): Promise<Buffer | string> {
  const r = await python(`
import nbd
h = nbd.NBD()
try:
    h.connect_uri(${JSON.stringify(uri)})
except nbd.Error as e:
    print("refused:", e)
    raise SystemExit(0)
open(${JSON.stringify(into)}, 'wb').write(h.pread(${DATA}, 0))
h.shutdown()
`);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.startsWith('refused:') ? r.stdout : readFile(into);
}

/** Wait until torusd has printed its start-up lines (the last is "try: …" or "no volumes yet"). */
async function started(node: TorusdProcess): Promise<TorusdProcess> {
  for (let waited = 0; !/try: nbdinfo|no volumes yet/.test(node.output()); waited += 50) {
    assert.ok(waited < 10_000, `torusd printed no start-up summary:\n${node.output()}`);
    await sleep(50);
  }
  return node;
}

describe('key rotate: single node', { skip, timeout: 180_000 }, () => {
  let dir: string;
  let node: TorusdProcess | undefined;
  before(async () => {
    dir = await makeDataDir('keyrot');
  });
  after(async () => {
    await node?.stop('SIGKILL');
    await removeDir(dir);
  });

  test('re-wraps the volume and snapshot keys; the new key reads the data, the old one is refused', async () => {
    const data = join(dir, 'data');
    const oldKey = await keyFile(join(dir, 'old.key'));
    const newKey = join(dir, 'new.key'); // created by the rotation
    const bytes = randomBytes(DATA);
    const start = async (key: string) =>
      (node = await started(
        await startTorusd({ dataDir: data, size: '64MiB', args: ['--key-file', key] }),
      ));
    await start(oldKey);
    const made = await runCli('torusctl', [
      'volume',
      'create-block',
      'e',
      '8MiB',
      '--encrypt',
      '--data-dir',
      data,
    ]);
    assert.equal(made.code, 0, made.stderr);
    await writeAt(node!.uri('e'), join(dir, 'e.img'), bytes);
    const snap = await runCli('torusctl', [
      'block',
      'snapshot',
      'create',
      'e@s',
      '--data-dir',
      data,
    ]);
    assert.equal(snap.code, 0, snap.stderr);

    const args = [
      'key',
      'rotate',
      '--data-dir',
      data,
      '--key-file',
      oldKey,
      '--new-key-file',
      newKey,
    ];
    const busy = await runCli('torusctl', args);
    assert.notEqual(busy.code, 0, 'refused while torusd runs');
    assert.match(busy.stderr, new RegExp(`in use by pid ${node!.pid}`));
    assert.equal(await node!.stop(), 0);

    const rotated = await runCli('torusctl', args);
    assert.equal(rotated.code, 0, rotated.stderr);
    assert.match(rotated.stdout, /created master key/);
    assert.match(rotated.stdout, /re-wrapped 2 key\(s\).*: e, e@s/);
    const again = await runCli('torusctl', args);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /re-wrapped 0 key\(s\).*already under it: e, e@s/);

    await start(oldKey);
    assert.match(node!.output(), /NOT serving volume e: .*wrong master key file/);
    assert.equal(await node!.stop(), 0);

    await start(newKey);
    assert.doesNotMatch(node!.output(), /NOT serving/);
    assert.ok(
      bytes.equals((await readAt(node!.uri('e'), join(dir, 'e.read'))) as Buffer),
      'volume',
    );
    assert.ok(
      bytes.equals((await readAt(node!.uri('e@s'), join(dir, 's.read'))) as Buffer),
      'snapshot',
    );
    assert.equal(await node!.stop(), 0);
    node = undefined;
  });
});

describe('key rotate: cluster', { skip, timeout: 240_000 }, () => {
  let dir: string;
  let cluster: Cluster | undefined;
  before(async () => {
    dir = await makeDataDir('keyrot-c');
  });
  after(async () => {
    await cluster?.stop();
    await removeDir(dir);
  });

  test('re-wraps on etcd with the nodes running; restarted with the new key they read the data', async () => {
    const oldKey = await keyFile(join(dir, 'old.key'));
    const newKey = await keyFile(join(dir, 'new.key'));
    cluster = await Cluster.start({
      nodes: 2,
      replication: 2,
      node: () => ({ args: ['--key-file', oldKey] }),
    });
    const made = await cluster.ctl(
      'volume',
      'create-block',
      'e',
      '8MiB',
      '--encrypt',
      '--key-file',
      oldKey,
    );
    assert.equal(made.code, 0, made.stderr);
    const bytes = randomBytes(DATA);
    await writeAt(cluster.nodes[0].uri('e'), join(dir, 'e.img'), bytes);

    const rotated = await cluster.ctl(
      'key',
      'rotate',
      '--key-file',
      oldKey,
      '--new-key-file',
      newKey,
    );
    assert.equal(rotated.code, 0, rotated.stderr);
    assert.match(rotated.stdout, /re-wrapped 1 key\(s\).*: e/);

    for (const node of cluster.nodes) {
      await node.kill('SIGTERM');
      node.options.args = ['--key-file', newKey];
    }
    // Node 1 with the new key reads what node 0 wrote under the old one.
    await cluster.nodes[1].start();
    const got = await readAt(cluster.nodes[1].uri('e'), join(dir, 'e.read'));
    assert.ok(Buffer.isBuffer(got) && bytes.equals(got), `read back: ${String(got).slice(0, 200)}`);
    await cluster.nodes[1].kill('SIGTERM');

    // The old key alone: refused, naming both fingerprints.
    cluster.nodes[0].options.args = ['--key-file', oldKey];
    await cluster.nodes[0].start();
    const refused = await readAt(cluster.nodes[0].uri('e'), join(dir, 'e.read2'));
    assert.equal(typeof refused, 'string', 'the old key must not open the volume');
    assert.match(
      cluster.nodes[0].output(),
      /wrapped by master key [0-9a-f]{16}, but the loaded master key is [0-9a-f]{16}: wrong master key file/,
    );
  });
});
