/**
 * Every staging and target path a request names must lie inside the kubelet
 * directory: the plugin runs privileged, and a path elsewhere (/etc, /)
 * would let a request mount over or delete anything on the node. Symlinks
 * are resolved first, so a link inside pointing outside is refused too.
 */
import { realpath } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, normalize, sep } from 'node:path';
import { invalidArgument } from '../csi-error.js';

/**
 * The path with symlinks resolved, checked to be inside. Parts that do not
 * exist yet (a target the plugin is to create) cannot be links: the nearest
 * existing ancestor is resolved and the rest appended.
 */
export async function resolveInside(
  kubeletDir: string,
  path: string,
  field: string,
): Promise<string> {
  if (!isAbsolute(path)) throw invalidArgument(`${field} ${path} is not an absolute path`);
  const root = await realpath(kubeletDir);
  const resolved = await resolveExisting(normalize(path));
  if (!resolved.startsWith(root + sep))
    throw invalidArgument(
      `${field} ${path} is outside the kubelet directory ${root} (--kubelet-dir): refused`,
    );
  return resolved;
}

async function resolveExisting(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || dirname(path) === path) throw err;
    return join(await resolveExisting(dirname(path)), basename(path));
  }
}
