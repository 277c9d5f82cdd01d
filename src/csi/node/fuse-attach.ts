/**
 * The fallback attach path: a volume file helper (fuse-file-main.ts) serves
 * the export as DIR/mnt/volume over FUSE, and a loop device makes it a block
 * device. DIR is `<stateDir>/fuse/<export>`; the helper runs detached in its
 * own session, its output in DIR/helper.log, so it outlives the plugin.
 *
 * Growing: the helper reconnects (a new handshake learns the new size), a
 * stat refreshes the kernel's idea of the file size, `losetup -c` re-reads
 * it: the loop device grows under a mounted filesystem, nothing remounted.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, existsSync } from 'node:fs';
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { basename, join } from 'node:path';
import type { Logger } from '../../common/log.js';
import { NotFoundError } from '../../common/errors.js';
import type { AttachedDevice, Attacher } from './attach.js';
import { CommandError, runChecked, runCommand } from './command.js';
import { VOLUME_FILE_NAME } from './fuse-file-server.js';
import type { FuseFileHelperArgs } from './fuse-file-main.js';
import { findMount } from './mounts.js';
import type { NbdAddress } from './nbd-address.js';
import { blockDeviceSize } from './block-device.js';
import { waitFor } from './poll.js';

const HELPER = new URL('./fuse-file-main.js', import.meta.url).pathname;
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 15_000;

export class FuseAttachError extends Error {
  override name = 'FuseAttachError';
}

export class FuseAttacher implements Attacher {
  readonly mode = 'nbdfuse';

  constructor(
    private readonly nbd: NbdAddress,
    private readonly stateDir: string,
    private readonly log: Logger,
  ) {}

  helperDir(exportName: string): string {
    return join(this.stateDir, 'fuse', exportName);
  }

  async attach(exportName: string, readOnly: boolean): Promise<AttachedDevice> {
    const dir = this.helperDir(exportName);
    // A directory left by an attachment nobody recorded (a crash mid-attach) goes first.
    await this.removeHelperDir(dir);
    await mkdir(join(dir, 'mnt'), { recursive: true });
    const pid = await this.startHelper({ nbd: this.nbd, export: exportName, dir, readOnly });
    const attached: AttachedDevice = {
      mode: 'nbdfuse',
      device: '',
      helperDir: dir,
      helperPid: pid,
    };
    try {
      const file = join(dir, 'mnt', VOLUME_FILE_NAME);
      const args = ['--find', '--show', ...(readOnly ? ['--read-only'] : []), file];
      attached.device = (await runChecked('losetup', args, 30_000)).trim();
    } catch (err) {
      await this.detach(attached);
      throw err;
    }
    this.log.info({ export: exportName, device: attached.device, pid }, 'attached via FUSE + loop');
    return attached;
  }

  async detach(attached: AttachedDevice): Promise<void> {
    const dir = attached.helperDir;
    if (attached.device && (await this.loopBacking(attached.device)) === this.fileOf(attached)) {
      // Whatever the page cache of the device holds goes down before it is let go.
      await runCommand('blockdev', ['--flushbufs', attached.device], 30_000);
      await runChecked('losetup', ['-d', attached.device], 30_000);
      // With autoclear the detach completes when the last opener closes.
      const released = await waitFor(
        async () => (await this.loopBacking(attached.device)) !== this.fileOf(attached),
        10_000,
      );
      if (!released)
        throw new FuseAttachError(
          `${attached.device} is still in use after losetup -d: unmount whatever holds it`,
        );
    }
    if (dir) await this.removeHelperDir(dir, attached.helperPid);
  }

  async grow(attached: AttachedDevice): Promise<number> {
    const reply = await controlRequest(attached.helperDir!, 'grow');
    if (typeof reply.size !== 'number')
      throw new FuseAttachError(`the volume file helper could not reconnect: ${reply.error}`);
    await stat(this.fileOf(attached)); // the kernel learns the new file size here
    await runChecked('losetup', ['-c', attached.device], 30_000);
    return blockDeviceSize(attached.device);
  }

  async problem(attached: AttachedDevice): Promise<string | undefined> {
    if (!helperAlive(attached.helperPid, attached.helperDir))
      return `the volume file helper (pid ${attached.helperPid}) is gone: restage the volume`;
    if ((await this.loopBacking(attached.device)) !== this.fileOf(attached))
      return `${attached.device} is no longer attached to the volume file`;
    try {
      const status = await controlRequest(attached.helperDir!, 'status');
      if (status.connected === false) return 'the NBD server does not answer; reconnecting';
    } catch (err) {
      return `the volume file helper does not answer: ${String(err)}`;
    }
    return undefined;
  }

  private fileOf(attached: AttachedDevice): string {
    return join(attached.helperDir!, 'mnt', VOLUME_FILE_NAME);
  }

  /** The file a loop device is bound to, or undefined when it is free. */
  private async loopBacking(device: string): Promise<string | undefined> {
    try {
      const text = await readFile(`/sys/block/${basename(device)}/loop/backing_file`, 'utf8');
      return text.trim();
    } catch {
      return undefined;
    }
  }

  private async startHelper(args: FuseFileHelperArgs): Promise<number> {
    const logFd = openSync(join(args.dir, 'helper.log'), 'a');
    const child = spawn(process.execPath, [HELPER, JSON.stringify(args)], {
      detached: true,
      stdio: ['ignore', logFd, logFd, 'pipe'],
      env: { ...process.env, UV_THREADPOOL_SIZE: '6', TORUS_LOG_FORMAT: 'json' },
    });
    closeSync(logFd);
    const reportPipe = child.stdio[3] as NodeJS.ReadableStream;
    const report = await new Promise<Record<string, unknown>>((done) => {
      let text = '';
      const timer = setTimeout(
        () => done({ error: 'failed', message: `no answer in ${START_TIMEOUT_MS} ms` }),
        START_TIMEOUT_MS,
      );
      reportPipe.setEncoding('utf8');
      reportPipe.on('data', (d: string) => (text += d));
      reportPipe.on('error', () => undefined);
      reportPipe.on('end', () => {
        clearTimeout(timer);
        try {
          done(JSON.parse(text) as Record<string, unknown>);
        } catch {
          done({ error: 'failed', message: `it exited: ${logTail(args.dir)}` });
        }
      });
    });
    (reportPipe as unknown as { destroy(): void }).destroy();
    child.unref();
    if (report.ready === true) return child.pid!;
    child.kill('SIGKILL');
    await this.removeHelperDir(args.dir);
    const message = String(report.message ?? report.error);
    if (report.error === 'not-found') throw new NotFoundError(message);
    throw new FuseAttachError(`the volume file helper for ${args.export} failed: ${message}`);
  }

  /** Unmount the volume file (the helper flushes and exits), then remove the directory. */
  private async removeHelperDir(dir: string, pid?: number): Promise<void> {
    const mountPoint = join(dir, 'mnt');
    if (await findMount(mountPoint)) {
      const result = await runCommand('umount', [mountPoint], 30_000);
      if (result.code !== 0 && (await findMount(mountPoint))) {
        throw new CommandError(`umount ${mountPoint}`, result);
      }
    }
    if (pid !== undefined && helperAlive(pid, dir)) {
      const gone = await waitFor(async () => !helperAlive(pid, dir), STOP_TIMEOUT_MS);
      if (!gone) {
        this.log.error({ pid, dir }, 'volume file helper did not exit after unmount; killing it');
        process.kill(pid, 'SIGKILL');
      }
    }
    await rm(dir, { recursive: true, force: true });
  }
}

/** The helper with this pid still runs (and is ours: its command line names the directory). */
export function helperAlive(pid: number | undefined, dir: string | undefined): boolean {
  if (pid === undefined || dir === undefined) return false;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir);
  } catch {
    return false;
  }
}

function logTail(dir: string): string {
  const path = join(dir, 'helper.log');
  if (!existsSync(path)) return '(no log)';
  return readFileSync(path, 'utf8').trim().split('\n').slice(-5).join('\n');
}

/** One request on the helper's control socket: a line out, a JSON line back. */
function controlRequest(dir: string, line: string): Promise<Record<string, unknown>> {
  return new Promise((done, fail) => {
    const socket = connect(join(dir, 'control.sock'));
    let text = '';
    const timer = setTimeout(() => {
      socket.destroy();
      fail(new FuseAttachError(`the volume file helper in ${dir} did not answer ${line}`));
    }, 60_000);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(line + '\n'));
    socket.on('data', (d: string) => (text += d));
    socket.on('error', (err) => {
      clearTimeout(timer);
      fail(err);
    });
    socket.on('end', () => {
      clearTimeout(timer);
      try {
        done(JSON.parse(text) as Record<string, unknown>);
      } catch {
        fail(new FuseAttachError(`the volume file helper in ${dir} answered ${text || 'nothing'}`));
      }
    });
  });
}
