/**
 * A real filesystem on a Torus volume: nbdfuse exposes the export as a
 * file, mkfs.ext4 formats it, fuse2fs mounts it, files are written, the
 * filesystem is unmounted and checked clean by e2fsck, torusd is restarted,
 * and after a remount every file's checksum matches.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { makeDataDir, removeDir, startTorusd, type TorusdProcess } from './torusd-process.js';
import { missing, run, runOk } from './tools.js';

const skip = missing('nbdfuse', 'mkfs.ext4', 'e2fsck', 'fuse2fs', 'fusermount3');

async function waitFor(
  check: () => Promise<boolean>,
  what: string,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

async function isMounted(dir: string): Promise<boolean> {
  const mounts = await readFile('/proc/mounts', 'utf8');
  return mounts.split('\n').some((line) => line.split(' ')[1] === dir);
}

describe('filesystem on a volume', { skip, timeout: 180_000 }, () => {
  let dir: string;
  let node: TorusdProcess | undefined;
  let nbdfuse: ChildProcess | undefined;
  const fuseDir = () => join(dir, 'fuse');
  const mountDir = () => join(dir, 'mnt');
  const image = () => join(fuseDir(), 'disk');

  async function attach(): Promise<void> {
    nbdfuse = spawn('nbdfuse', [image(), node!.uri('fs')], { stdio: 'ignore' });
    await waitFor(() => isMounted(fuseDir()), 'nbdfuse mount');
  }

  async function detach(): Promise<void> {
    if (await isMounted(mountDir())) await run('fusermount3', ['-u', mountDir()]);
    // fuse2fs writes back on unmount in its own process: wait for it to go.
    await waitFor(
      async () => (await run('pgrep', ['-f', `fuse2fs ${image()}`])).code !== 0,
      'fuse2fs to exit',
    );
    if (await isMounted(fuseDir())) await run('fusermount3', ['-u', fuseDir()]);
    if (nbdfuse && nbdfuse.exitCode === null) {
      const exited = new Promise((r) => nbdfuse!.once('exit', r));
      nbdfuse.kill('SIGTERM');
      await exited;
    }
    nbdfuse = undefined;
  }

  before(async () => {
    dir = await makeDataDir('fs');
    await mkdir(fuseDir());
    await mkdir(mountDir());
    node = await startTorusd({
      dataDir: join(dir, 'data'),
      args: ['--ensure-volume', 'fs=256MiB'],
    });
  });

  after(async () => {
    await detach().catch(() => undefined);
    await node?.stop('SIGKILL');
    await removeDir(dir);
  });

  test('mkfs, mount, write, fsck clean, restart, remount, checksums match', async () => {
    await attach();
    await runOk('mkfs.ext4', ['-q', '-F', image()], { timeoutMs: 60_000 });
    await runOk('fuse2fs', [image(), mountDir(), '-o', 'fakeroot']);
    const files = new Map<string, string>();
    for (let i = 0; i < 12; i++) {
      const data = randomBytes(1024 * (1 + i * 97));
      const name = `file-${i}.bin`;
      await writeFile(join(mountDir(), name), data);
      files.set(name, createHash('sha256').update(data).digest('hex'));
    }
    await detach();
    await attach();
    const fsck = await run('e2fsck', ['-fn', image()], { timeoutMs: 60_000 });
    assert.equal(fsck.code, 0, `e2fsck found problems:\n${fsck.stdout}\n${fsck.stderr}`);
    await detach();

    // nbdfuse flushed on release; a clean restart must keep all of it.
    assert.equal(await node!.stop('SIGTERM'), 0);
    node = await startTorusd({ dataDir: join(dir, 'data') });
    await attach();
    await runOk('fuse2fs', [image(), mountDir(), '-o', 'fakeroot,ro']);
    for (const [name, sum] of files) {
      const data = await readFile(join(mountDir(), name));
      assert.equal(createHash('sha256').update(data).digest('hex'), sum, name);
    }
  });
});
