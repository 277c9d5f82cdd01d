/**
 * torusd on a data directory it cannot use: a path it cannot create fails at
 * once (exit 1, the path and why; Node's recursive mkdir used to loop forever
 * under /proc), and a --size beyond the filesystem's free space fails before
 * writing, naming the sizes, with no block store left behind.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, readdir, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeDataDir, removeDir, runCli } from './torusd-process.js';

/** Far below runCli's 30 s kill: a hang shows up as a failure, not a slow pass. */
const FAST_EXIT_MS = 5000;

async function timed(args: string[]) {
  const started = Date.now();
  const result = await runCli('torusd', args);
  return { ...result, ms: Date.now() - started };
}

describe('torusd data directory', { timeout: 60_000 }, () => {
  let root: string;
  /** A 64 MiB tmpfs under root when we may mount one, else undefined (the real filesystem is used). */
  let small: string | undefined;
  before(async () => {
    root = await makeDataDir('datadir');
    const mountPoint = join(root, 'small');
    await mkdir(mountPoint);
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', mountPoint], {
      stdio: 'ignore',
    });
    if (mounted.status === 0) small = mountPoint;
  });
  after(async () => {
    if (small) spawnSync('umount', [small], { stdio: 'ignore' });
    await removeDir(root);
  });

  test('a directory that cannot be created fails fast, naming the path and why', async () => {
    const cases: [string, RegExp][] = [
      ['/proc/torus-x', /\/proc\/torus-x.*cannot create \/proc\/torus-x/],
      ['/proc/torus-x/deeper', /\/proc\/torus-x\/deeper.*cannot create \/proc\/torus-x/],
    ];
    const file = join(root, 'a-file');
    spawnSync('touch', [file]);
    cases.push([file, /exists and is not a directory/]);
    cases.push([join(file, 'below'), new RegExp(`${file}.* exists and is not a directory`)]);
    for (const [dir, message] of cases) {
      const r = await timed(['--data-dir', dir, '--size', '1GiB', '--nbd', '127.0.0.1:0']);
      assert.equal(r.code, 1, `${dir} → exit ${r.code} after ${r.ms} ms: ${r.stderr}`);
      assert.ok(r.ms < FAST_EXIT_MS, `${dir}: took ${r.ms} ms`);
      assert.match(r.stderr, /^torusd: data directory /m);
      assert.match(r.stderr, message);
    }
  });

  test('a --size beyond the free space fails with the sizes and leaves no store', async () => {
    const fsDir = small ?? root;
    const dataDir = join(fsDir, 'node');
    const { bavail, bsize } = await statfs(fsDir);
    const free = bavail * bsize;
    // On the tmpfs 1 GiB; on the real filesystem more than all its free space, so nothing is written.
    const size = small ? 1024 ** 3 : free + 1024 ** 3;
    const r = await timed(['--data-dir', dataDir, '--size', String(size), '--nbd', '127.0.0.1:0']);
    assert.equal(r.code, 1, `exit ${r.code}: ${r.stderr}`);
    assert.ok(r.ms < FAST_EXIT_MS * 2, `took ${r.ms} ms`);
    assert.match(
      r.stderr,
      new RegExp(`block store in ${join(dataDir, 'blocks')}: .* the filesystem has .* free`),
    );
    assert.match(r.stderr, small ? /a 1 GiB block store/ : /GiB block store/);
    // Nothing of the store remains; on our own tmpfs, its free space is as before (but the metadata's WAL).
    assert.ok(!(await readdir(dataDir)).includes('blocks'), 'blocks/ left behind');
    if (small) {
      const afterStats = await statfs(fsDir);
      assert.ok(free - afterStats.bavail * afterStats.bsize < 1024 * 1024, 'space not given back');
    }
  });
});
