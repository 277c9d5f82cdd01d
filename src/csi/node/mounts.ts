/**
 * The mount table as the kernel sees it (/proc/self/mountinfo): what makes
 * every stage, publish and their undoing idempotent — each call looks at what
 * is mounted where before it changes anything.
 */
import { readFile } from 'node:fs/promises';

export interface MountEntry {
  id: number;
  parentId: number;
  /** `major:minor` of the mounted filesystem's device. */
  device: string;
  /** The path inside the filesystem that is mounted (a bind mount's source). */
  root: string;
  mountPoint: string;
  /** Per-mount options (ro/rw, nosuid, …). */
  options: string[];
  fsType: string;
  source: string;
  superOptions: string[];
}

/** mountinfo escapes space, tab, newline and backslash as \ooo octal. */
function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) =>
    String.fromCharCode(parseInt(octal, 8)),
  );
}

export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const fields = line.split(' ');
    const separator = fields.indexOf('-', 6);
    if (separator < 0) continue;
    entries.push({
      id: Number(fields[0]),
      parentId: Number(fields[1]),
      device: fields[2]!,
      root: unescape(fields[3]!),
      mountPoint: unescape(fields[4]!),
      options: fields[5]!.split(','),
      fsType: fields[separator + 1]!,
      source: unescape(fields[separator + 2] ?? ''),
      superOptions: (fields[separator + 3] ?? '').split(','),
    });
  }
  return entries;
}

export async function readMounts(): Promise<MountEntry[]> {
  return parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
}

/** The mount on top at exactly this path (the last one mounted there), if any. */
export async function findMount(path: string): Promise<MountEntry | undefined> {
  const mounts = await readMounts();
  return mounts.filter((m) => m.mountPoint === path).at(-1);
}

/** Every mount of a device's filesystem (the staging mount and its bind mounts). */
export async function mountsOfDevice(device: string): Promise<MountEntry[]> {
  return (await readMounts()).filter((m) => m.device === device);
}

export function isReadOnly(mount: MountEntry): boolean {
  return mount.options.includes('ro');
}
