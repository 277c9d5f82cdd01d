/**
 * The three binaries as a user runs them: help, argument errors (exit 2,
 * naming the flag), volume administration offline and through a running
 * torusd, the data-directory lock, and a clean SIGTERM.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

describe('command line', { timeout: 120_000 }, () => {
  let dir: string;
  before(async () => {
    dir = await makeDataDir('cli');
  });
  after(async () => {
    await removeDir(dir);
  });

  test('every binary has --help and exits 0', async () => {
    for (const bin of ['torusd', 'torusctl', 'torusblk'] as const) {
      const r = await runCli(bin, ['--help']);
      assert.equal(r.code, 0, `${bin} --help: ${r.stderr}`);
      assert.match(r.stdout, /usage:/);
    }
    const sub = await runCli('torusctl', ['volume', 'create-block', '--help']);
    assert.equal(sub.code, 0);
    assert.match(sub.stdout, /--encrypt/);
  });

  test('bad arguments exit 2 and name the flag and what it expected', async () => {
    const cases: ['torusd' | 'torusctl' | 'torusblk', string[], RegExp][] = [
      ['torusd', ['--sise', '1G'], /unknown flag --sise/],
      ['torusd', ['--size', 'lots'], /--size: expected a size/],
      ['torusd', ['--nbd', 'nowhere'], /--nbd: expected HOST:PORT/],
      ['torusd', ['--workers', '-3'], /--workers/],
      ['torusd', ['--scrub-rate', '0'], /--scrub-rate: expected a rate above 0/],
      ['torusctl', ['volume', 'create-block', 'v', 'big'], /SIZE: expected a size/],
      ['torusctl', ['volume', 'create-block', 'v'], /missing SIZE/],
      ['torusctl', ['volume', 'frobnicate'], /unknown command/],
      ['torusctl', ['volume', 'list', '--output', 'xml'], /--output: expected table or json/],
      [
        'torusblk',
        ['volume', 'create', 'bad name!', '1G', '--data-dir', '/nonexistent-never'],
        /invalid volume name|ENOENT|EACCES|permission/i,
      ],
    ];
    for (const [bin, args, message] of cases) {
      const r = await runCli(bin, args, { TORUS_DATA_DIR: dir });
      if (!args.includes('bad name!'))
        assert.equal(r.code, 2, `${bin} ${args.join(' ')} → ${r.code}: ${r.stderr}`);
      else assert.notEqual(r.code, 0);
      assert.match(r.stderr, message);
    }
  });

  test('numbers out of range or negative exit 2, name the flag, and create nothing', async () => {
    const untouched = join(dir, 'untouched');
    const cases: ['torusd' | 'torusctl' | 'torusblk', string[], RegExp][] = [
      [
        'torusctl',
        ['init', '--block-size', '3'],
        /--block-size: .*power of two from 4 KiB to 8 MiB/,
      ],
      ['torusctl', ['init', '--block-size', '1TiB'], /--block-size: .*power of two from 4 KiB/],
      ['torusctl', ['init', '--block-size', '-64KiB'], /--block-size: must not be negative/],
      ['torusctl', ['init', '--replication', '0'], /--replication: expected .* from 1 to 8/],
      ['torusd', ['--port', '70000'], /--port: expected a whole number from 0 to 65535/],
      ['torusd', ['--port', '-1'], /--port: must not be negative/],
      ['torusd', ['--size', '-1GiB'], /--size: must not be negative, got "-1GiB"/],
      ['torusd', ['--block-size', '1TiB'], /--block-size: .*power of two/],
      ['torusd', ['--workers', '1000'], /--workers: expected a whole number from 0 to 64/],
      ['torusd', ['--scrub-interval', '9999999'], /--scrub-interval: .* from 0 to 2147483/],
      ['torusd', ['--lock-linger', '-5'], /--lock-linger: must not be negative/],
      ['torusd', ['--rebalance-rate', '-1MiB'], /--rebalance-rate: must not be negative/],
      ['torusd', ['--ensure-volume', 'v=-1GiB'], /--ensure-volume: must not be negative/],
      ['torusctl', ['volume', 'create-block', 'x', '-5GiB'], /SIZE: must not be negative/],
      ['torusctl', ['volume', 'create-block', 'x', '1G', '--replication', '9'], /--replication/],
      ['torusctl', ['ring', 'set-replication', '-1'], /N: must not be negative/],
      ['torusblk', ['volume', 'create', 'x', '-1GiB'], /SIZE: must not be negative/],
      ['torusblk', ['nbdserve', '--port', '99999'], /--port: expected .* from 0 to 65535/],
      ['torusblk', ['nbdserve', '--cache-size', '-1'], /--cache-size: must not be negative/],
    ];
    for (const [bin, args, message] of cases) {
      const r = await runCli(bin, args, { TORUS_DATA_DIR: untouched });
      assert.equal(r.code, 2, `${bin} ${args.join(' ')} → ${r.code}: ${r.stderr}`);
      assert.match(r.stderr, message, `${bin} ${args.join(' ')}`);
      assert.equal(existsSync(untouched), false, `${bin} ${args.join(' ')} created ${untouched}`);
    }
  });

  test('volumes are managed offline, then through the running node', async () => {
    const env = { TORUS_DATA_DIR: dir };
    assert.equal((await runCli('torusctl', ['init'], env)).code, 0);
    const created = await runCli('torusctl', ['volume', 'create-block', 'alpha', '64MiB'], env);
    assert.equal(created.code, 0, created.stderr);
    assert.match(created.stdout, /created volume alpha \(64 MiB\)/);
    const blk = await runCli('torusblk', ['volume', 'create', 'beta', '1T'], env); // thin: far larger than the store
    assert.equal(blk.code, 0, blk.stderr);
    const dup = await runCli('torusctl', ['volume', 'create-block', 'alpha', '64MiB'], env);
    assert.equal(dup.code, 1);
    assert.match(dup.stderr, /already exists/);

    let node: TorusdProcess | undefined;
    try {
      node = await startTorusd({ dataDir: dir });
      const list = await runCli('torusctl', ['volume', 'list', '-o', 'json'], env);
      assert.equal(list.code, 0, list.stderr);
      const rows = JSON.parse(list.stdout) as { name: string; size: number; used: number }[];
      assert.deepEqual(rows.map((r) => r.name).sort(), ['alpha', 'beta']);
      assert.equal(rows.find((r) => r.name === 'beta')!.size, 2 ** 40);
      assert.equal(typeof rows[0].used, 'number', 'online listing reports space used');

      const second = await startTorusd({ dataDir: dir }).then(
        async (p) => {
          await p.stop('SIGKILL');
          return undefined;
        },
        (err: Error) => err.message,
      );
      assert.match(
        second ?? 'started twice!',
        /lock|in use|already open|held/i,
        'a second torusd on the same data dir is refused',
      );

      const online = await runCli('torusctl', ['volume', 'create-block', 'gamma', '16MiB'], env);
      assert.equal(online.code, 0, online.stderr);
      const del = await runCli('torusctl', ['volume', 'delete', 'beta'], env);
      assert.equal(del.code, 0, del.stderr);
      const table = await runCli('torusctl', ['volume', 'list'], env);
      assert.match(table.stdout, /NAME\s+SIZE\s+USED/);
      assert.match(table.stdout, /gamma/);
      assert.doesNotMatch(table.stdout, /beta/);

      const started = Date.now();
      assert.equal(await node.stop('SIGTERM'), 0);
      assert.ok(Date.now() - started < 10_000, 'SIGTERM stops torusd within seconds');
      node = undefined;
    } finally {
      await node?.stop('SIGKILL');
    }
  });
});
