/**
 * An exclusive, crash-tolerant lock on the store's directory: a LOCK file
 * created with O_EXCL that holds the owner's pid.
 *
 * Node has no flock(), and a plain "file exists" lock would stay stuck after
 * kill -9. So a lock whose pid is dead (or a zombie) is stale and taken over.
 * Within one process a registry tells "I hold it" from "a previous process
 * that happened to have my pid held it" (pid reuse is common in containers,
 * where torusd may be pid 1 every time).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { link, open, readFile, rename, unlink } from 'node:fs/promises';
import { ConflictError } from '../../../common/errors.js';
import type { Logger } from '../../../common/log.js';
import { LOCK_FILE, pathIn, syncDirectory } from './files.js';

const heldInThisProcess = new Set<string>();

export class DirectoryLock {
  private released = false;
  private constructor(readonly path: string) {}

  static async acquire(dir: string, log: Logger): Promise<DirectoryLock> {
    const path = pathIn(dir, LOCK_FILE);
    if (heldInThisProcess.has(path)) {
      throw new ConflictError(
        `metadata directory ${dir} is already open in this process (pid ${process.pid}); lock file ${path}`,
      );
    }
    // Two attempts: the second follows breaking a stale lock. If someone else
    // wins the race to re-create it, the second attempt reports them.
    for (let attempt = 0; attempt < 2; attempt++) {
      if (await tryCreate(path)) {
        heldInThisProcess.add(path);
        await syncDirectory(dir);
        return new DirectoryLock(path);
      }
      const owner = await readOwner(path);
      if (owner === undefined) continue; // removed meanwhile, or never written: try again
      if (owner !== process.pid && isAlive(owner)) {
        throw new ConflictError(
          `metadata directory ${dir} is in use by pid ${owner} (lock file ${path}); stop that process first`,
        );
      }
      log.warn(
        { lock: path, stalePid: owner },
        'taking over stale metadata lock left by a dead process',
      );
      await breakStaleLock(path, owner);
    }
    const owner = await readOwner(path);
    throw new ConflictError(
      `metadata directory ${dir} is in use by pid ${owner ?? 'unknown'} (lock file ${path})`,
    );
  }

  /** Remove the lock file if it is still ours. */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    heldInThisProcess.delete(this.path);
    if ((await readOwner(this.path)) === process.pid)
      await unlink(this.path).catch(() => undefined);
  }
}

/**
 * Create the lock complete or not at all: write the pid to a private file,
 * then link() it into place, which fails with EEXIST if a lock exists. A
 * reader therefore never sees an empty LOCK from a half-done acquire.
 */
async function tryCreate(path: string): Promise<boolean> {
  const temp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}`;
  const handle = await open(temp, 'wx');
  try {
    await handle.writeFile(`${process.pid}\n`);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    await link(temp, path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    await unlink(temp).catch(() => undefined);
  }
}

async function readOwner(path: string): Promise<number | undefined> {
  try {
    const pid = Number.parseInt((await readFile(path, 'utf8')).trim(), 10);
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/**
 * Move the stale lock aside and check that what moved is the stale one. Two
 * openers racing to break the same stale lock could otherwise have the slower
 * one delete the faster one's fresh lock; if we moved a live lock, link it
 * back (EEXIST then means a third lock exists, which stands on its own).
 */
async function breakStaleLock(path: string, stalePid: number): Promise<void> {
  const aside = `${path}.stale.${process.pid}.${randomBytes(4).toString('hex')}`;
  try {
    await rename(path, aside);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  const moved = await readOwner(aside);
  if (moved !== stalePid) await link(aside, path).catch(() => undefined);
  await unlink(aside).catch(() => undefined);
}

/** kill(pid, 0) says whether a pid exists; a zombie (killed, not yet reaped) counts as dead. */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  return !isZombie(pid);
}

function isZombie(pid: number): boolean {
  try {
    // /proc/<pid>/stat: "pid (comm) S …"; comm may contain spaces and parens.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z';
  } catch {
    return false;
  }
}
