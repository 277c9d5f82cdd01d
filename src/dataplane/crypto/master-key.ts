/**
 * The node's master key: 32 random bytes in a file, as 64 lowercase hex
 * characters and a newline, mode 0600. It never leaves the node and is never
 * written to metadata; only its fingerprint is, so that a node started with
 * the wrong key file says "wrong key" instead of failing block by block.
 */
import { createHash, randomBytes } from 'node:crypto';
import { link, open, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { MasterKeyExistsError, MasterKeyFormatError, MasterKeyMissingError } from './errors.js';

export const MASTER_KEY_BYTES = 32;
const HEX_CHARS = MASTER_KEY_BYTES * 2;
/** Anything larger is not a key file; checked before reading so a wrong path can't make us read a disk image. */
const MAX_KEY_FILE_BYTES = HEX_CHARS + 2;
/** Group or other may read or write it: a leaked or substituted key. */
export const EXPOSED_MODE_BITS = 0o077;
const FINGERPRINT_LABEL = Buffer.from('torus master key fingerprint v1\0');

export interface LoadedMasterKey {
  path: string;
  key: Uint8Array;
  /** 16 hex characters; safe to store and log. */
  fingerprint: string;
  /**
   * True when group or other have any permission on the file. Returned rather
   * than logged or refused so the caller decides (torusd warns at start-up).
   */
  exposed: boolean;
}

/**
 * First 8 bytes of SHA-256 over a fixed label and the key, as hex.
 * The label keeps this value from being the plain hash of the key, which some
 * other tool might also compute and publish. 64 bits is plenty to tell keys
 * apart; it is not meant to resist a search (the key itself is 256 random bits).
 */
export function masterKeyFingerprint(key: Uint8Array): string {
  if (key.byteLength !== MASTER_KEY_BYTES)
    throw new RangeError(`a master key is ${MASTER_KEY_BYTES} bytes, got ${key.byteLength}`);
  return createHash('sha256')
    .update(FINGERPRINT_LABEL)
    .update(key)
    .digest()
    .subarray(0, 8)
    .toString('hex');
}

/** Read and check a master key file. Throws MasterKeyMissingError or MasterKeyFormatError. */
export async function loadMasterKey(path: string): Promise<LoadedMasterKey> {
  let file;
  try {
    file = await open(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new MasterKeyMissingError(path);
    throw err;
  }
  let text: string;
  let mode: number;
  try {
    const info = await file.stat();
    if (!info.isFile()) throw new MasterKeyFormatError(path, 'not a regular file');
    if (info.size > MAX_KEY_FILE_BYTES) {
      throw new MasterKeyFormatError(
        path,
        `${info.size} bytes; expected ${HEX_CHARS} hex characters and a newline`,
      );
    }
    mode = info.mode;
    const bytes = Buffer.alloc(MAX_KEY_FILE_BYTES + 1);
    const { bytesRead } = await file.read(bytes, 0, bytes.length, 0);
    text = bytes.toString('latin1', 0, bytesRead);
  } finally {
    await file.close();
  }
  return { path, ...parseMasterKey(path, text), exposed: (mode & EXPOSED_MODE_BITS) !== 0 };
}

function parseMasterKey(path: string, text: string): { key: Uint8Array; fingerprint: string } {
  // One trailing newline is the format; a CRLF from an editor is forgiven,
  // anything else (spaces, a second line) is refused rather than guessed at.
  const hex = text.endsWith('\r\n')
    ? text.slice(0, -2)
    : text.endsWith('\n')
      ? text.slice(0, -1)
      : text;
  if (hex.length !== HEX_CHARS) {
    throw new MasterKeyFormatError(
      path,
      `${hex.length} characters; expected ${HEX_CHARS} hex characters (${MASTER_KEY_BYTES} bytes) and a newline`,
    );
  }
  const bad = hex.search(/[^0-9a-fA-F]/);
  if (bad >= 0) throw new MasterKeyFormatError(path, `character ${bad + 1} is not a hex digit`);
  const key = Buffer.from(hex, 'hex');
  // A zero key is what `head -c 32 /dev/zero | xxd -p` or an unfilled template gives; never a random one.
  if (key.every((b) => b === 0))
    throw new MasterKeyFormatError(path, 'the key is all zeros, so it was not generated randomly');
  return { key, fingerprint: masterKeyFingerprint(key) };
}

/**
 * Create a new random master key file at path, atomically and without ever
 * replacing an existing one.
 *
 * The key is written to a temporary file in the same directory (mode 0600,
 * fsynced), then hard-linked to its final name: link() fails with EEXIST if
 * the name is taken, which rename() would not (it silently replaces), so two
 * nodes or two commands racing here cannot both win. The directory is fsynced
 * so the name survives a crash. The parent directory must exist and support
 * hard links (ext4, xfs and tmpfs do).
 */
export async function createMasterKeyFile(path: string): Promise<LoadedMasterKey> {
  const key = randomBytes(MASTER_KEY_BYTES);
  const dir = dirname(path);
  const temp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const file = await open(temp, 'wx', 0o600);
  try {
    try {
      // The umask may have narrowed the mode; make it exactly 0600.
      await file.chmod(0o600);
      await file.writeFile(`${key.toString('hex')}\n`, 'latin1');
      await file.sync();
    } finally {
      await file.close();
    }
    try {
      await link(temp, path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new MasterKeyExistsError(path);
      throw err;
    }
  } finally {
    await unlink(temp).catch(() => undefined);
  }
  await syncDirectory(dir);
  return { path, key, fingerprint: masterKeyFingerprint(key), exposed: false };
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
