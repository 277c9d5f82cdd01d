/**
 * The fallback attach path: a volume file helper (fuse-file-main.ts) serves
 * the export as DIR/mnt/volume over FUSE, and a loop device makes it a block
 * device. DIR is `<stateDir>/fuse/<export>`; the helper runs detached in its
 * own session, its output in DIR/helper.log, so it outlives the plugin. Who
 * starts it is the HelperLauncher's business (helper-launcher.ts): this
 * process, or the attachment keeper in a container of its own (keeper.ts),
 * so that it outlives the plugin's container as well.
 *
 * Growing: the helper reconnects (a new handshake learns the new size), a
 * stat refreshes the kernel's idea of the file size, `losetup -c` re-reads
 * it: the loop device grows under a mounted filesystem, nothing remounted.
 */
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { basename, join } from 'node:path';
import type { Logger } from '../../common/log.js';
import type { AttachedDevice, Attacher, AttachmentProblem } from './attach.js';
import { CommandError, runChecked, runCommand } from './command.js';
import { VOLUME_FILE_NAME } from './fuse-file-server.js';
import { LocalHelperLauncher, type HelperLauncher } from './helper-launcher.js';
import { KeeperHelperLauncher } from './keeper-client.js';
import { findMount } from './mounts.js';
import type { NbdAddress } from './nbd-address.js';
import { blockDeviceSize } from './block-device.js';
import { waitFor } from './poll.js';

const STOP_TIMEOUT_MS = 15_000;
/** A live helper answers `status` at once; a wedged one is not waited on for long. */
const STATUS_TIMEOUT_MS = 10_000;
const GROW_TIMEOUT_MS = 60_000;

export class FuseAttachError extends Error {
  override name = 'FuseAttachError';
}

export class FuseAttacher implements Attacher {
  readonly mode = 'nbdfuse';
  private readonly launchers = new Map<string | undefined, HelperLauncher>();

  /** `launcher`: who starts new helpers (default: this process). */
  constructor(
    private readonly nbd: NbdAddress,
    private readonly stateDir: string,
    private readonly log: Logger,
    private readonly launcher: HelperLauncher = new LocalHelperLauncher(log),
  ) {
    this.launchers.set(launcher.keeper, launcher);
  }

  helperDir(exportName: string): string {
    return join(this.stateDir, 'fuse', exportName);
  }

  async attach(exportName: string, readOnly: boolean): Promise<AttachedDevice> {
    const dir = this.helperDir(exportName);
    // A directory left by an attachment nobody recorded (a crash mid-attach) goes first.
    await this.removeHelperDir(dir);
    await mkdir(join(dir, 'mnt'), { recursive: true });
    let pid: number;
    try {
      pid = await this.launcher.start({ nbd: this.nbd, export: exportName, dir, readOnly });
    } catch (err) {
      await this.removeHelperDir(dir);
      throw err;
    }
    const attached: AttachedDevice = {
      mode: 'nbdfuse',
      device: '',
      helperDir: dir,
      helperPid: pid,
      ...(this.launcher.keeper === undefined ? {} : { helperKeeper: this.launcher.keeper }),
    };
    try {
      const file = join(dir, 'mnt', VOLUME_FILE_NAME);
      const args = ['--find', '--show', ...(readOnly ? ['--read-only'] : []), file];
      attached.device = (await runChecked('losetup', args, 30_000)).trim();
      attached.backingFile = await this.loopBackingId(attached.device);
      if (attached.backingFile === undefined)
        throw new FuseAttachError(`${attached.device} lost its volume file at once`);
    } catch (err) {
      await this.detach(attached);
      throw err;
    }
    this.log.info(
      { export: exportName, device: attached.device, pid, keeper: attached.helperKeeper },
      'attached via FUSE + loop',
    );
    return attached;
  }

  async detach(attached: AttachedDevice): Promise<void> {
    const dir = attached.helperDir;
    if (await this.boundToFile(attached)) {
      // Whatever the page cache of the device holds goes down before it is let go.
      await runCommand('blockdev', ['--flushbufs', attached.device], 30_000);
      await runChecked('losetup', ['-d', attached.device], 30_000);
      // With autoclear the detach completes when the last opener closes.
      const released = await waitFor(async () => !(await this.boundToFile(attached)), 10_000);
      if (!released)
        throw new FuseAttachError(
          `${attached.device} is still in use after losetup -d: unmount whatever holds it`,
        );
    }
    if (dir) await this.removeHelperDir(dir, attached);
  }

  async grow(attached: AttachedDevice): Promise<number> {
    const reply = await controlRequest(attached.helperDir!, 'grow', GROW_TIMEOUT_MS);
    if (typeof reply.size !== 'number')
      throw new FuseAttachError(`the volume file helper could not reconnect: ${reply.error}`);
    await stat(this.fileOf(attached)); // the kernel learns the new file size here
    await runChecked('losetup', ['-c', attached.device], 30_000);
    return blockDeviceSize(attached.device);
  }

  /**
   * The helper answering on its control socket (in the state directory, so
   * whichever container started it) is what proves it runs; its pid, asked
   * of whoever started it, only tells a dead helper from a wedged one.
   */
  async problem(attached: AttachedDevice): Promise<AttachmentProblem | undefined> {
    let status: Record<string, unknown>;
    try {
      status = await controlRequest(attached.helperDir!, 'status', STATUS_TIMEOUT_MS);
    } catch (err) {
      const pid = attached.helperPid;
      const alive = await this.launcherOf(attached)
        .alive(pid ?? 0, attached.helperDir!)
        .catch(() => undefined);
      if (alive === true)
        return {
          message: `the volume file helper (pid ${pid}) does not answer: ${String(err)}`,
          broken: false,
        };
      const where = attached.helperKeeper
        ? ` (started by the keeper at ${attached.helperKeeper})`
        : '';
      return {
        message: `the volume file helper (pid ${pid})${where} is gone: restage the volume`,
        broken: true,
      };
    }
    if (!(await this.boundToFile(attached)))
      return {
        message: `${attached.device} is no longer attached to the volume file`,
        broken: true,
      };
    if (status.connected === false)
      return { message: 'the NBD server does not answer; reconnecting', broken: false };
    return undefined;
  }

  /** Who can see this attachment's helper pid: the launcher that started it. */
  private launcherOf(attached: AttachedDevice): HelperLauncher {
    const keeper = attached.helperKeeper;
    let launcher = this.launchers.get(keeper);
    if (!launcher) {
      launcher =
        keeper === undefined
          ? new LocalHelperLauncher(this.log)
          : new KeeperHelperLauncher(keeper, this.log);
      this.launchers.set(keeper, launcher);
    }
    return launcher;
  }

  private fileOf(attached: AttachedDevice): string {
    return join(attached.helperDir!, 'mnt', VOLUME_FILE_NAME);
  }

  /**
   * Whether the attachment's loop device is still bound to its volume file.
   * By `major:minor inode` when the kernel can tell it (it asks the file's
   * filesystem, which fails once the helper is gone); else by the path the
   * kernel shows: ours, or — when the mount the loop device was set up
   * through has gone with a container — the bare file name it keeps.
   */
  private async boundToFile(attached: AttachedDevice): Promise<boolean> {
    if (!attached.device) return false;
    const path = await this.loopBacking(attached.device);
    if (path === undefined) return false;
    const id = await this.loopBackingId(attached.device);
    if (id !== undefined && attached.backingFile !== undefined) return id === attached.backingFile;
    return path === this.fileOf(attached) || path === `/${VOLUME_FILE_NAME}`;
  }

  /** `major:minor inode` of the file a loop device is bound to, or undefined when it is free. */
  private async loopBackingId(device: string): Promise<string | undefined> {
    const output = ['--list', '--json', '--output', 'BACK-MAJ:MIN,BACK-INO', device];
    const result = await runCommand('losetup', output, 30_000);
    if (result.code !== 0) return undefined;
    type Listing = {
      loopdevices?: { 'back-maj:min'?: string | null; 'back-ino'?: number | null }[];
    };
    let entry;
    try {
      entry = (JSON.parse(result.stdout) as Listing).loopdevices?.[0];
    } catch {
      return undefined; // no listing: not a loop device we know
    }
    const majorMinor = entry?.['back-maj:min']?.trim();
    const inode = entry?.['back-ino'];
    return majorMinor && inode ? `${majorMinor} ${inode}` : undefined;
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

  /**
   * Unmount the volume file (the helper flushes and exits), wait for the
   * helper to go, then remove the directory. Without an attachment (a
   * leftover directory) there is no pid to wait on: the unmount ends it.
   */
  private async removeHelperDir(dir: string, attached?: AttachedDevice): Promise<void> {
    const mountPoint = join(dir, 'mnt');
    if (await findMount(mountPoint)) {
      const result = await runCommand('umount', [mountPoint], 30_000);
      if (result.code !== 0 && (await findMount(mountPoint))) {
        throw new CommandError(`umount ${mountPoint}`, result);
      }
    }
    const pid = attached?.helperPid;
    if (attached && pid !== undefined) {
      const launcher = this.launcherOf(attached);
      // A keeper that does not answer took its helpers with it (or will be asked again next time).
      const alive = () =>
        launcher.alive(pid, dir).catch((err: Error) => {
          this.log.warn({ pid, dir, err: err.message }, 'cannot ask whether the helper exited');
          return false;
        });
      if (await alive()) {
        const gone = await waitFor(async () => !(await alive()), STOP_TIMEOUT_MS);
        if (!gone) {
          this.log.error({ pid, dir }, 'volume file helper did not exit after unmount; killing it');
          await launcher.kill(pid, dir);
        }
      }
    }
    await rm(dir, { recursive: true, force: true });
  }
}

/** One request on the helper's control socket: a line out, a JSON line back. */
function controlRequest(
  dir: string,
  line: string,
  timeoutMs: number,
): Promise<Record<string, unknown>> {
  return new Promise((done, fail) => {
    const socket = connect(join(dir, 'control.sock'));
    let text = '';
    const timer = setTimeout(() => {
      socket.destroy();
      fail(new FuseAttachError(`the volume file helper in ${dir} did not answer ${line}`));
    }, timeoutMs);
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
