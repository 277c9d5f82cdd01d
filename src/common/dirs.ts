/**
 * ensureDirectory: mkdir -p that fails at once, naming the path and why;
 * ensurePrivateDirectory: the same, then mode 0700.
 *
 * Node's own recursive mkdir (20.x) never returns for a path under /proc or
 * /sys: mkdir("/proc/x") fails with ENOENT, the parent "/proc" exists, so it
 * retries the child, forever, on every thread of the pool. Here each missing
 * component is created once, without recursion, and any failure is a
 * DirectoryError: an operating error (exit 1), not a usage error.
 */
import { constants } from 'node:fs';
import { access, chmod, mkdir, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { markExpected } from './errors.js';

/** A directory that cannot be created or used; the message names the path and the reason. */
export class DirectoryError extends Error {
  override name = 'DirectoryError';
  constructor(
    readonly path: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
markExpected(DirectoryError);

/** Why a filesystem call failed, for a person reading the message. */
function reasonOf(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  switch (e.code) {
    case 'EACCES':
    case 'EPERM':
      return `permission denied (${e.code})`;
    case 'EROFS':
      return 'read-only filesystem (EROFS)';
    case 'ENOSPC':
      return 'no space left on the filesystem (ENOSPC)';
    case 'ENOTDIR':
      return 'a component of the path is not a directory (ENOTDIR)';
    default:
      return e.code ?? e.message;
  }
}

/**
 * Make sure `path` is a directory this process can create files in, creating
 * it and its missing parents. Throws DirectoryError when it cannot be
 * created, is not a directory, or is not writable. `what` names it in the
 * message (e.g. "data directory").
 */
export async function ensureDirectory(path: string, what = 'directory'): Promise<void> {
  const target = resolve(path);
  const fail = (why: string, cause?: unknown): never => {
    throw new DirectoryError(target, `${what} ${target}: ${why}`, { cause });
  };
  // Walk up to the nearest existing ancestor, remembering what is missing.
  const missing: string[] = [];
  let at = target;
  for (;;) {
    try {
      const st = await stat(at);
      if (!st.isDirectory()) fail(`${at} exists and is not a directory`);
      break;
    } catch (err) {
      if (err instanceof DirectoryError) throw err;
      // ENOTDIR: a file on the way up, which the next stat names.
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTDIR') fail(reasonOf(err), err);
      const parent = dirname(at);
      if (parent === at) fail(`the root ${at} does not exist`, err);
      missing.push(at);
      at = parent;
    }
  }
  for (const dir of missing.reverse()) {
    try {
      await mkdir(dir);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      // Created meanwhile by someone else: fine if it is a directory.
      if (code === 'EEXIST' && (await stat(dir).catch(() => undefined))?.isDirectory()) continue;
      fail(
        code === 'ENOENT'
          ? `cannot create ${dir}: ${dirname(dir)} does not accept new entries (a virtual filesystem such as /proc or /sys?)`
          : `cannot create ${dir}: ${reasonOf(err)}`,
        err,
      );
    }
  }
  try {
    await access(target, constants.W_OK | constants.X_OK);
  } catch (err) {
    fail(`not writable: ${reasonOf(err)}`, err);
  }
}

/** Group and other permission bits: a private directory has none. */
const SHARED_MODE_BITS = 0o077;

/**
 * ensureDirectory, then make `path` the owner's only (mode 0700): a node's
 * data directory holds its blocks, its metadata, the admin socket and, by
 * default, the master key, none of which anyone else should read. Returns
 * the mode it had when it was opened to others and this tightened it, so
 * the caller can say so. Throws DirectoryError when it cannot.
 */
export async function ensurePrivateDirectory(
  path: string,
  what = 'directory',
): Promise<{ tightenedFrom?: number }> {
  await ensureDirectory(path, what);
  const target = resolve(path);
  const mode = (await stat(target)).mode & 0o777;
  if ((mode & SHARED_MODE_BITS) === 0) return {};
  try {
    await chmod(target, 0o700);
  } catch (err) {
    throw new DirectoryError(
      target,
      `${what} ${target} is open to group or others (mode ${mode.toString(8)}) and cannot be made private: ${reasonOf(err)}; run: chmod 700 ${target}`,
      { cause: err },
    );
  }
  return { tightenedFrom: mode };
}
