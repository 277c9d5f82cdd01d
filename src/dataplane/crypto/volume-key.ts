/**
 * Volume data keys and their wrapping under the node's master key.
 *
 * Each encrypted volume has its own random 32-byte data key. Metadata stores it
 * only wrapped: tweetnacl secretbox (XSalsa20-Poly1305) under the master key,
 * with a random 24-byte nonce — large enough that random nonces never collide,
 * so no counter has to be kept anywhere. Wrapping is rare (volume create/open),
 * so secretbox's speed does not matter here.
 *
 * Wrapped layout (73 bytes, base64 in metadata):
 *   0   u8    format version (WRAP_VERSION)
 *   1   24B   secretbox nonce
 *   25  48B   secretbox of the key (32 bytes + 16-byte Poly1305 tag)
 * The version byte is also authenticated: it is fed to the box as the first
 * byte of the plaintext, so changing it fails like any other corruption.
 */
import { randomBytes } from 'node:crypto';
import nacl from 'tweetnacl';
import { WrappedKeyError } from './errors.js';
import { MASTER_KEY_BYTES } from './master-key.js';

export const VOLUME_KEY_BYTES = 32;
export const WRAP_VERSION = 1;
const NONCE_BYTES = nacl.secretbox.nonceLength;
const BOXED_BYTES = 1 + VOLUME_KEY_BYTES + nacl.secretbox.overheadLength;
export const WRAPPED_KEY_BYTES = 1 + NONCE_BYTES + BOXED_BYTES;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;

export function generateVolumeKey(): Uint8Array {
  return randomBytes(VOLUME_KEY_BYTES);
}

/** Wrap a volume key under the master key. Returns WRAPPED_KEY_BYTES bytes; see wrappedKeyToString for metadata. */
export function wrapVolumeKey(volumeKey: Uint8Array, masterKey: Uint8Array): Buffer {
  checkLength('volume key', volumeKey, VOLUME_KEY_BYTES);
  checkLength('master key', masterKey, MASTER_KEY_BYTES);
  const nonce = randomBytes(NONCE_BYTES);
  const message = new Uint8Array(1 + VOLUME_KEY_BYTES);
  message[0] = WRAP_VERSION;
  message.set(volumeKey, 1);
  const box = nacl.secretbox(message, nonce, masterKey);
  message.fill(0);
  const out = Buffer.alloc(WRAPPED_KEY_BYTES);
  out[0] = WRAP_VERSION;
  out.set(nonce, 1);
  out.set(box, 1 + NONCE_BYTES);
  return out;
}

/**
 * Recover a volume key. Throws WrappedKeyError if the bytes are not a wrapped
 * key of a known version or do not authenticate under masterKey; never returns
 * bytes that were not sealed by wrapVolumeKey under this master key.
 */
export function unwrapVolumeKey(wrapped: Uint8Array | string, masterKey: Uint8Array): Uint8Array {
  checkLength('master key', masterKey, MASTER_KEY_BYTES);
  const bytes = typeof wrapped === 'string' ? wrappedKeyFromString(wrapped) : wrapped;
  if (bytes.byteLength !== WRAPPED_KEY_BYTES) {
    throw new WrappedKeyError(
      `corrupt wrapped key: ${bytes.byteLength} bytes, expected ${WRAPPED_KEY_BYTES}`,
    );
  }
  if (bytes[0] !== WRAP_VERSION) {
    throw new WrappedKeyError(
      `wrapped key format version ${bytes[0]} is not supported (this build knows version ${WRAP_VERSION})`,
    );
  }
  const nonce = bytes.subarray(1, 1 + NONCE_BYTES);
  const box = bytes.subarray(1 + NONCE_BYTES);
  const message = nacl.secretbox.open(box, nonce, masterKey);
  if (!message) throw new WrappedKeyError();
  // Authenticated, so this can only differ if someone wrapped it that way on purpose; still refuse.
  if (message[0] !== bytes[0])
    throw new WrappedKeyError('wrapped key version byte does not match its sealed copy');
  const key = Buffer.from(message.subarray(1));
  message.fill(0);
  return key;
}

export function wrappedKeyToString(wrapped: Uint8Array): string {
  return Buffer.from(wrapped.buffer, wrapped.byteOffset, wrapped.byteLength).toString('base64');
}

/** Strict base64: Buffer.from(…, 'base64') skips invalid characters, which would turn damage into a misleading length error. */
export function wrappedKeyFromString(text: string): Uint8Array {
  if (!BASE64.test(text)) throw new WrappedKeyError('corrupt wrapped key: not base64');
  return Buffer.from(text, 'base64');
}

function checkLength(what: string, bytes: Uint8Array, expected: number): void {
  if (bytes.byteLength !== expected)
    throw new RangeError(`a ${what} is ${expected} bytes, got ${bytes.byteLength}`);
}
