/**
 * Facts about a block device read from sysfs, with no tool run: its size,
 * and whether a path is one.
 */
import { readFile, stat } from 'node:fs/promises';

/** The device's size in bytes (sysfs counts 512-byte sectors whatever the block size). */
export async function blockDeviceSize(device: string): Promise<number> {
  const info = await stat(device);
  if (!info.isBlockDevice()) throw new Error(`${device} is not a block device`);
  const sectors = await readFile(`/sys/dev/block/${deviceNumber(info.rdev)}/size`, 'utf8');
  return Number(sectors.trim()) * 512;
}

/** `major:minor` of a device number as the kernel splits it (dev_t encoding of glibc). */
export function deviceNumber(rdev: number): string {
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((Math.floor(rdev / 4096) & 0xfff00) >>> 0);
  return `${major}:${minor}`;
}
