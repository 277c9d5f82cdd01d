/**
 * Faults found from outside, against the real binaries: expected operating
 * errors are logged as one line without a stack, and an exposed master key
 * file or a too-open data directory is dealt with at start-up.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { missing, python } from './tools.js';
import { makeDataDir, removeDir, startTorusd, type TorusdProcess } from './torusd-process.js';

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
});
