/**
 * `torusctl volume resize` on a single node: a real torusd, real NBD
 * clients (libnbd). Growing while a client is attached (its connection
 * keeps its size and its FLUSHes keep working; a new one sees the new
 * size), across a block map level (256 MiB → 1 GiB of 64 KiB blocks) and
 * through a restart; shrinking refused without --shrink and while in use,
 * then done (space freed, zeros past the old end after growing again); bad
 * input refused with its exit code and nothing changed.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { NbdSession } from './nbd-session.js';
import { missing } from './tools.js';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

describe('volume resize on a single node', { skip: missing('nbdsh'), timeout: 240_000 }, () => {
  let dir: string;
  let node: TorusdProcess;
  const sessions: NbdSession[] = [];
  const head = randomBytes(MiB);
  const oldTail = randomBytes(64 * 1024);
  const past = randomBytes(MiB);

  const ctl = (...args: string[]) => runCli('torusctl', [...args, '--data-dir', dir]);
  const connect = async () => {
    const s = await NbdSession.open(node.uri('vol'));
    sessions.push(s);
    return s;
  };
  const volumeRow = async () => {
    const r = await ctl('volume', 'list', '-o', 'json');
    assert.equal(r.code, 0, r.stderr);
    return (JSON.parse(r.stdout) as { name: string; size: number; used: number }[]).find(
      (v) => v.name === 'vol',
    )!;
  };

  before(async () => {
    dir = await makeDataDir('resize');
    node = await startTorusd({ dataDir: dir, size: '2GiB' });
    const created = await ctl('volume', 'create-block', 'vol', '256MiB');
    assert.equal(created.code, 0, created.stderr);
  });
  after(async () => {
    await Promise.all(sessions.map((s) => s.kill()));
    await node?.stop();
    if (dir) await removeDir(dir);
  });

  test('grow while attached: the open connection keeps working, a new one sees the new size', async () => {
    const held = await connect();
    assert.equal(held.size, 256 * MiB);
    assert.ok((await held.write(0, head)).ok);
    assert.ok((await held.write(256 * MiB - oldTail.length, oldTail)).ok);
    assert.ok((await held.flush()).ok);

    // 256 MiB → 1 GiB of 64 KiB blocks: the map gains a level.
    const grown = await ctl('volume', 'resize', 'vol', '1GiB');
    assert.equal(grown.code, 0, grown.stderr);
    assert.match(grown.stdout, /grew volume vol from 256 MiB to 1 GiB/);
    assert.match(grown.stdout, /1 open connection\(s\) keep the old size until they reconnect/);

    // The held connection's writes and FLUSHes commit on top of the resized record.
    assert.ok((await held.write(MiB, head)).ok);
    const flushed = await held.flush();
    assert.ok(flushed.ok, flushed.err);

    const fresh = await connect();
    assert.equal(fresh.size, GiB);
    assert.deepEqual(await fresh.read(0, MiB), head);
    assert.deepEqual(await fresh.read(MiB, MiB), head);
    assert.deepEqual(await fresh.read(256 * MiB - oldTail.length, oldTail.length), oldTail);
    assert.ok((await fresh.write(900 * MiB, past)).ok);
    assert.ok((await fresh.flush()).ok);
    assert.deepEqual(await fresh.read(900 * MiB, MiB), past);
    await held.close();
    await fresh.close();
  });

  test('after a restart the grown volume reads back whole', async () => {
    assert.equal(await node.stop('SIGTERM'), 0);
    node = await startTorusd({ dataDir: dir });
    const s = await connect();
    assert.equal(s.size, GiB);
    assert.deepEqual(await s.read(0, MiB), head);
    assert.deepEqual(await s.read(256 * MiB - oldTail.length, oldTail.length), oldTail);
    assert.deepEqual(await s.read(900 * MiB, MiB), past);
    await s.close();
  });

  test('bad input is refused with its exit code and changes nothing', async () => {
    const cases: [string[], number, RegExp][] = [
      [['vol', '1000'], 2, /multiple of 4 KiB/],
      [['nosuch', '1GiB'], 1, /no volume named "nosuch"/],
      [['vol', '100GiB'], 1, /store capacity is 2 GiB/],
      [['vol', '128MiB'], 2, /add --shrink/],
    ];
    for (const [args, code, message] of cases) {
      const r = await ctl('volume', 'resize', ...args);
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, message);
    }
    assert.equal((await volumeRow()).size, GiB);
  });

  test('shrink is refused while a client has the volume open', async () => {
    const s = await connect();
    const r = await ctl('volume', 'resize', 'vol', '128MiB', '--shrink');
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stderr, /1 open NBD connection\(s\): disconnect them/);
    await s.close();
    assert.equal((await volumeRow()).size, GiB);
  });

  test('shrink frees the blocks past the end; growing again reads zeros there', async () => {
    const before = (await volumeRow()).used;
    const r = await ctl('volume', 'resize', 'vol', '128MiB', '--shrink');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /shrank volume vol from 1 GiB to 128 MiB/);
    const row = await volumeRow();
    assert.equal(row.size, 128 * MiB);
    assert.ok(row.used < before, `used ${row.used} bytes after the shrink, ${before} before`);

    const regrown = await ctl('volume', 'resize', 'vol', '1GiB');
    assert.equal(regrown.code, 0, regrown.stderr);
    const s = await connect();
    assert.equal(s.size, GiB);
    assert.deepEqual(await s.read(0, MiB), head);
    assert.deepEqual(await s.read(900 * MiB, MiB), Buffer.alloc(MiB));
    assert.deepEqual(await s.read(256 * MiB - MiB, MiB), Buffer.alloc(MiB));
    await s.close();
  });
});
