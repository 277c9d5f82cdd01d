/**
 * Faults found from outside, against the real binaries: expected operating
 * errors are logged as one line without a stack; what torusd creates is the
 * owner's only (data directory 0700, admin socket 0600); an exposed master
 * key file is refused at start-up; the HTTP port binds 127.0.0.1 by default.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { missing, python } from './tools.js';
import { freePort } from './cluster-fixture.js';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

const modeOf = async (path: string) => (await stat(path)).mode & 0o777;

/** Whether a TCP connection to host:port is accepted. */
function accepts(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

describe('torusd faults seen from outside', { timeout: 120_000 }, () => {
  let dir: string;
  let node: TorusdProcess | undefined;
  before(async () => {
    dir = await makeDataDir('cli-faults');
  });
  after(async () => {
    await node?.stop('SIGKILL');
    await removeDir(dir);
  });

  test(
    'a full store is logged as one line with the error code and no stack',
    { skip: missing('nbdsh') },
    async () => {
      // 4 MiB of store under a 64 MiB thin volume: the writes beyond it fail ENOSPC.
      node = await startTorusd({
        dataDir: join(dir, 'full'),
        size: '4MiB',
        args: ['--ensure-volume', 'v=64MiB'],
      });
      const r = await python(`
import nbd, os
h = nbd.NBD()
h.connect_uri(${JSON.stringify(node.uri('v'))})
try:
    for i in range(16):
        h.pwrite(os.urandom(1 << 20), i << 20)
    h.flush()
    print("no error")
except nbd.Error as e:
    print("error", e.errno)
`);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /error ENOSPC/);
      assert.equal(await node.stop('SIGTERM'), 0);
      const output = node.output();
      node = undefined;
      const records = output
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as { level: number; msg: string; err?: unknown });
      const failed = records.filter((rec) => rec.err !== undefined && rec.level >= 40);
      assert.ok(failed.length > 0, `no warning names the error:\n${output}`);
      for (const { err } of failed) {
        // A message string, or an object with the message and no stack.
        if (typeof err === 'string') continue;
        const e = err as { stack?: string; message?: string };
        assert.equal(e.stack, undefined, `a stack in ${JSON.stringify(err)}`);
        assert.ok(e.message, JSON.stringify(err));
      }
      assert.ok(
        failed.some((rec) => (rec.err as { code?: string }).code === 'ENOSPC'),
        `no logged error carries ENOSPC:\n${failed.map((rec) => JSON.stringify(rec)).join('\n')}`,
      );
      assert.doesNotMatch(output, /(\n|\\n)\s+at /, 'stack frames in the log');
    },
  );

  test('what torusd creates is the owner’s only; an open data directory is tightened, saying so', async () => {
    const fresh = join(dir, 'fresh');
    node = await startTorusd({ dataDir: fresh, args: ['--ensure-volume', 'v=16MiB'] });
    assert.equal(await modeOf(fresh), 0o700);
    assert.equal(await modeOf(join(fresh, 'torusd.sock')), 0o600);
    for (const name of ['nbd.sock', 'blocks', 'meta'])
      assert.equal((await modeOf(join(fresh, name))) & 0o077, 0, `${name} open to others`);
    for (const name of await readdir(join(fresh, 'blocks')))
      assert.equal((await modeOf(join(fresh, 'blocks', name))) & 0o077, 0, `blocks/${name}`);
    assert.equal(await node.stop('SIGTERM'), 0);

    const open = join(dir, 'open');
    await mkdir(open, { mode: 0o755 });
    node = await startTorusd({ dataDir: open });
    assert.equal(await modeOf(open), 0o700);
    assert.match(node.output(), /"was":"755","now":"700".*made it the owner/);
    assert.equal(await node.stop('SIGTERM'), 0);
    node = undefined;

    const initialised = join(dir, 'initialised');
    const r = await runCli('torusctl', ['--data-dir', initialised, 'init']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await modeOf(initialised), 0o700);
  });

  test('a master key file readable by others is refused unless --allow-exposed-key', async () => {
    const data = join(dir, 'exposed');
    await mkdir(data, { mode: 0o700 });
    const keyFile = join(data, 'master.key');
    await writeFile(keyFile, randomBytes(32).toString('hex') + '\n', { mode: 0o644 });
    const refused = await runCli('torusd', [
      '--data-dir',
      data,
      '--size',
      '64MiB',
      '--nbd',
      '127.0.0.1:0',
    ]);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, /master key file .* \(mode 644\).* Run: chmod 600 /);
    assert.ok(refused.stderr.includes(`chmod 600 ${keyFile}`), refused.stderr);
    assert.ok(!(await readdir(data)).includes('blocks'), 'a store was created before refusing');

    node = await startTorusd({ dataDir: data, args: ['--allow-exposed-key'] });
    assert.match(node.output(), /"mode":"644".*allowed by --allow-exposed-key/);
    assert.equal(await node.stop('SIGTERM'), 0);
    node = undefined;
  });

  test('/metrics and /healthz listen on 127.0.0.1 unless --host says otherwise', async () => {
    const port = await freePort();
    node = await startTorusd({ dataDir: join(dir, 'http'), args: ['--port', String(port)] });
    assert.ok(await accepts('127.0.0.1', port), 'not listening on 127.0.0.1');
    assert.ok(!(await accepts('127.0.0.2', port)), 'listening beyond 127.0.0.1');
    assert.equal(await node.stop('SIGTERM'), 0);
    node = undefined;
  });
});
