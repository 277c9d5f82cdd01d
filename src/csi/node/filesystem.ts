/**
 * Filesystems on attached volumes: what a device holds, making one on an
 * empty device, mounting, unmounting, growing.
 *
 * The rule that matters most: never format a device that holds anything.
 * blkid's low-level probe finds filesystems, RAID/LVM members and partition
 * tables; but data it does not recognise (an application's raw block data,
 * an encrypted blob) probes as nothing at all. So a device is only formatted
 * when blkid finds nothing AND its first and last MiB read as zeros — a fresh
 * Torus volume is all holes, so this costs a read of two MiB.
 */
import { open } from 'node:fs/promises';
import { CommandError, runChecked, runCommand } from './command.js';
import { blockDeviceSize } from './block-device.js';

export type FsType = 'ext4' | 'xfs';
export const SUPPORTED_FS_TYPES: readonly FsType[] = ['ext4', 'xfs'];

/** What a device holds, as far as formatting is concerned. */
export type DeviceContent =
  | { kind: 'empty' }
  | { kind: 'filesystem'; fsType: string }
  | { kind: 'other'; description: string };

/** The device holds something that is not the filesystem asked for; it is left alone. */
export class DeviceInUseError extends Error {
  override name = 'DeviceInUseError';
}

const ZERO_CHECK_BYTES = 1024 * 1024;

export async function probeDevice(device: string): Promise<DeviceContent> {
  // -p: low-level probe of the device itself, not blkid's cache; exit 2 = nothing found.
  const result = await runCommand('blkid', ['-p', '-o', 'export', device], 30_000);
  if (result.code === 0) {
    const fields = Object.fromEntries(
      result.stdout
        .trim()
        .split('\n')
        .map((line) => line.split('=', 2) as [string, string]),
    );
    if (fields.TYPE && fields.USAGE === 'filesystem')
      return { kind: 'filesystem', fsType: fields.TYPE };
    if (fields.PTTYPE) return { kind: 'other', description: `a ${fields.PTTYPE} partition table` };
    return {
      kind: 'other',
      description: `${fields.TYPE ?? 'a signature'} (${fields.USAGE ?? 'unknown use'})`,
    };
  }
  if (result.code === 8) return { kind: 'other', description: 'several conflicting signatures' };
  if (result.code !== 2) throw new Error(`blkid -p ${device} failed: ${result.stderr.trim()}`);
  return (await headAndTailAreZero(device))
    ? { kind: 'empty' }
    : {
        kind: 'other',
        description: 'data no tool recognises (the first or last MiB is not zeros)',
      };
}

async function headAndTailAreZero(device: string): Promise<boolean> {
  const size = await blockDeviceSize(device);
  const length = Math.min(ZERO_CHECK_BYTES, size);
  const handle = await open(device, 'r');
  try {
    const buffer = Buffer.alloc(length);
    for (const position of new Set([0, size - length])) {
      const { bytesRead } = await handle.read(buffer, 0, length, position);
      if (bytesRead !== length || !isZero(buffer)) return false;
    }
    return true;
  } finally {
    await handle.close();
  }
}

function isZero(buffer: Buffer): boolean {
  for (let i = 0; i < buffer.length; i += 8) if (buffer.readBigUInt64LE(i) !== 0n) return false;
  return true;
}

/**
 * Make a filesystem unless the device has one. Resolves with what it found
 * or made; rejects with DeviceInUseError when the device holds another
 * filesystem or anything else, rather than formatting over it.
 */
export async function ensureFilesystem(
  device: string,
  fsType: FsType,
  readOnly: boolean,
): Promise<'existing' | 'created'> {
  const content = await probeDevice(device);
  if (content.kind === 'filesystem') {
    if (content.fsType !== fsType)
      throw new DeviceInUseError(
        `the volume holds a ${content.fsType} filesystem, not ${fsType}: ask for fsType ${content.fsType}`,
      );
    return 'existing';
  }
  if (content.kind === 'other')
    throw new DeviceInUseError(
      `the volume holds ${content.description}; refusing to format it. ` +
        'If it is meant to be empty, wipe it first (wipefs -a, or zero its first MiB)',
    );
  if (readOnly)
    throw new DeviceInUseError('the volume is empty and attached read-only: nothing to mount');
  await makeFilesystem(device, fsType);
  return 'created';
}

/**
 * mkfs with no pass over the whole device: ext4's inode tables and journal
 * are zeroed lazily (the volume reads as zeros already), no discard at mkfs
 * (a fresh volume holds no blocks).
 */
export async function makeFilesystem(device: string, fsType: FsType): Promise<void> {
  if (fsType === 'ext4')
    await runChecked('mkfs.ext4', [
      '-q',
      '-F',
      '-E',
      'lazy_itable_init=1,lazy_journal_init=1,nodiscard',
      device,
    ]);
  else await runChecked('mkfs.xfs', ['-q', '-K', device]);
}

/**
 * Mount a device's filesystem. A read-only device's journal cannot be
 * replayed, so ro mounts skip replay (ext4 noload, xfs norecovery). xfs is
 * always mounted `nouuid`: a clone or a volume restored from a snapshot
 * carries its source's filesystem UUID, and xfs refuses a second mount of
 * one UUID on a machine ("wrong fs type, bad superblock") — a pod using a
 * volume and its restored copy on the same node would never start.
 */
export async function mountFilesystem(
  device: string,
  target: string,
  fsType: FsType,
  options: { readOnly: boolean; flags: string[] },
): Promise<void> {
  const flags = [...options.flags];
  if (options.readOnly) flags.push('ro', fsType === 'ext4' ? 'noload' : 'norecovery');
  if (fsType === 'xfs' && !flags.includes('nouuid')) flags.push('nouuid');
  const args = ['-t', fsType, ...(flags.length > 0 ? ['-o', flags.join(',')] : []), device, target];
  await runChecked('mount', args, 60_000);
}

/** Bind mount `source` (a directory or a device node) onto `target`, read-only when asked. */
export async function bindMount(source: string, target: string, readOnly: boolean): Promise<void> {
  await runChecked('mount', ['-o', readOnly ? 'bind,ro' : 'bind', source, target], 30_000);
}

export async function unmount(target: string): Promise<void> {
  await runChecked('umount', [target], 60_000);
}

/** Grow a mounted filesystem to its device's size (online). */
export async function growFilesystem(
  device: string,
  mountPoint: string,
  fsType: FsType,
): Promise<void> {
  if (fsType === 'xfs') {
    await runChecked('xfs_growfs', [mountPoint], 120_000);
    return;
  }
  const result = await runCommand('resize2fs', [device], 120_000);
  if (result.code === 0) return;
  // The kernel refuses ext4's online resize ioctl (EPERM) to a process without CAP_SYS_RESOURCE.
  if (/Permission denied/.test(result.stderr))
    throw new DeviceInUseError(
      `resize2fs ${device} was refused: growing ext4 online needs CAP_SYS_RESOURCE; run the node plugin privileged`,
    );
  throw new CommandError(`resize2fs ${device}`, result);
}
