/**
 * What torusd checks of its files before it serves anything: the data
 * directory is the owner's only, and the master key file is not readable by
 * anyone else (who could then open every encrypted volume).
 */
import { stat } from 'node:fs/promises';
import { ensurePrivateDirectory } from '../common/dirs.js';
import type { Logger } from '../common/log.js';
import { EXPOSED_MODE_BITS } from '../dataplane/crypto/master-key.js';

/** A file torusd will not start with; the message says what to run. */
export class ExposedKeyFileError extends Error {
  override name = 'ExposedKeyFileError';
  constructor(
    readonly path: string,
    readonly mode: number,
  ) {
    super(
      `master key file ${path} is readable or writable by group or others (mode ${mode.toString(8)}): anyone who can read it can open every encrypted volume. Run: chmod 600 ${path} (or start with --allow-exposed-key to accept the risk)`,
    );
  }
}

/**
 * Refuse (ExposedKeyFileError) a master key file that group or others may
 * read or write, unless `allow`; then warn. No file yet is fine: it is
 * created 0600 on first use.
 */
export async function checkKeyFileMode(path: string, allow: boolean, log: Logger): Promise<void> {
  let mode: number;
  try {
    mode = (await stat(path)).mode & 0o777;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if ((mode & EXPOSED_MODE_BITS) === 0) return;
  if (!allow) throw new ExposedKeyFileError(path, mode);
  log.warn(
    { keyFile: path, mode: mode.toString(8) },
    'the master key file is readable or writable by group or others (allowed by --allow-exposed-key)',
  );
}

/**
 * Create the data directory owner-only (0700), or make an existing one so,
 * saying so: it holds the blocks, the metadata and the admin socket.
 */
export async function makeDataDirPrivate(dataDir: string, log: Logger): Promise<void> {
  const { tightenedFrom } = await ensurePrivateDirectory(dataDir, 'data directory');
  if (tightenedFrom !== undefined)
    log.warn(
      { dataDir, was: tightenedFrom.toString(8), now: '700' },
      'the data directory was open to group or others; made it the owner’s only',
    );
}
