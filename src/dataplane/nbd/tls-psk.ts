/**
 * Pre-shared key files for NBD over TLS, in the format GnuTLS's `psktool`
 * writes and nbdkit, qemu-nbd and libnbd read: one `identity:hexkey` per
 * line. Blank lines are skipped; anything else that is not that shape is an
 * error naming the file and line, never silently ignored (a typo would
 * otherwise lock a client out with no hint why).
 */

/** An identity is the username a client presents; GnuTLS allows up to 128 bytes. */
const MAX_IDENTITY_BYTES = 128;
/** Keys shorter than 128 bits are refused: a guessable key is no key. */
const MIN_KEY_BYTES = 16;
/** TLS-PSK keys are at most 512 bytes (RFC 4279 leaves it open; OpenSSL's limit). */
const MAX_KEY_BYTES = 512;

/** A malformed PSK file; the message names the file and line. */
export class PskFileError extends Error {
  override name = 'PskFileError';
}

/** identity → key. */
export type PskKeys = ReadonlyMap<string, Buffer>;

/** Parse the text of a PSK file; `path` is only used in error messages. */
export function parsePskFile(text: string, path: string): PskKeys {
  const keys = new Map<string, Buffer>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    const where = `${path} line ${i + 1}`;
    const colon = line.lastIndexOf(':');
    if (colon <= 0)
      throw new PskFileError(`${where}: expected IDENTITY:HEXKEY (as psktool writes it)`);
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (Buffer.byteLength(identity, 'utf8') > MAX_IDENTITY_BYTES)
      throw new PskFileError(`${where}: identity longer than ${MAX_IDENTITY_BYTES} bytes`);
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex))
      throw new PskFileError(`${where}: the key must be an even number of hex digits`);
    const key = Buffer.from(hex, 'hex');
    if (key.length < MIN_KEY_BYTES || key.length > MAX_KEY_BYTES)
      throw new PskFileError(
        `${where}: a ${key.length}-byte key; use ${MIN_KEY_BYTES} to ${MAX_KEY_BYTES} bytes (psktool -s 32)`,
      );
    if (keys.has(identity))
      throw new PskFileError(`${where}: identity ${JSON.stringify(identity)} appears twice`);
    keys.set(identity, key);
  }
  if (keys.size === 0) throw new PskFileError(`${path}: no keys in the file`);
  return keys;
}
