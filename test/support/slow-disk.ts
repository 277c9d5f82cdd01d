/**
 * A slow disk made of real parts, for fault tests: nbdkit's delay filter over
 * its memory plugin (every read and write waits as told), exposed as a
 * file by nbdfuse, attached to a loop device, formatted ext4 and mounted. A
 * torusd whose data directory is the mount sees a disk where every request
 * and so every fdatasync takes milliseconds more, as a busy or failing disk does.
 *
 * Needs root (losetup, mount), nbdkit, nbdfuse, /dev/fuse and mkfs.ext4:
 * slowDiskMissing() says what is absent. unmount() undoes every step, in
 * reverse, whatever state it is in.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { missing } from '../tools.js';

export interface SlowDiskOptions {
  /** nbdkit size syntax, e.g. "1G". */
  size: string;
  /** nbdkit delay syntax, e.g. "2ms". */
  delayRead: string;
  /** Also for zero and trim. nbdkit 1.32's delay filter has no flush delay: an fsync is slow by its writes. */
  delayWrite: string;
}

export interface SlowDisk {
  /** The mounted ext4 filesystem. */
  mountPoint: string;
  unmount(): Promise<void>;
}

export function slowDiskMissing(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (losetup, mount)';
  if (!existsSync('/dev/fuse')) return 'no /dev/fuse';
  return missing('nbdkit', 'nbdfuse', 'mkfs.ext4', 'losetup');
}

function runQuiet(command: string, args: string[]): { ok: boolean; output: string } {
  const r = spawnSync(command, args, { encoding: 'utf8', timeout: 60_000 });
  return { ok: r.status === 0, output: `${r.stdout ?? ''}${r.stderr ?? ''}`.trim() };
}

export async function mountSlowDisk(options: SlowDiskOptions): Promise<SlowDisk> {
  const root = await mkdtemp(join(tmpdir(), 'torus-slow-disk-'));
  const fuseDir = join(root, 'fuse');
  const mountPoint = join(root, 'mnt');
  await mkdir(fuseDir);
  await mkdir(mountPoint);
  let fuse: ChildProcess | undefined;
  let loop: string | undefined;
  let mounted = false;
  const unmount = async () => {
    if (mounted) runQuiet('umount', ['-l', mountPoint]);
    if (loop) runQuiet('losetup', ['-d', loop]);
    if (fuse && fuse.exitCode === null) {
      runQuiet('fusermount3', ['-u', fuseDir]);
      runQuiet('umount', ['-l', fuseDir]);
      fuse.kill('SIGTERM');
      await Promise.race([new Promise((r) => fuse!.once('exit', r)), sleep(5_000)]);
      fuse.kill('SIGKILL');
    }
    await rm(root, { recursive: true, force: true });
  };
  try {
    // nbdkit -s serves one connection on its stdin/stdout: nbdfuse runs it and talks to it.
    fuse = spawn(
      'nbdfuse',
      [
        join(fuseDir, 'disk'),
        '--command',
        'nbdkit',
        '-s',
        '--exit-with-parent',
        '--filter=delay',
        'memory',
        options.size,
        `delay-read=${options.delayRead}`,
        `delay-write=${options.delayWrite}`,
        `delay-zero=${options.delayWrite}`,
        `delay-trim=${options.delayWrite}`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let said = '';
    fuse.stderr!.on('data', (d: Buffer) => (said += d.toString()));
    const file = join(fuseDir, 'disk');
    for (let waited = 0; !existsSync(file); waited += 100) {
      if (fuse.exitCode !== null || waited > 15_000)
        throw new Error(`nbdfuse did not expose the slow disk: ${said}`);
      await sleep(100);
    }
    const attach = runQuiet('losetup', ['--find', '--show', file]);
    if (!attach.ok) throw new Error(`losetup: ${attach.output}`);
    loop = attach.output.split('\n')[0];
    const format = runQuiet('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=1,nodiscard', loop]);
    if (!format.ok) throw new Error(`mkfs.ext4: ${format.output}`);
    const mount = runQuiet('mount', [loop, mountPoint]);
    if (!mount.ok) throw new Error(`mount: ${mount.output}`);
    mounted = true;
    return { mountPoint, unmount };
  } catch (err) {
    await unmount();
    throw err;
  }
}
