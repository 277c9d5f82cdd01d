/**
 * Sealing of an encrypted volume's intent-log payloads: nothing of such a
 * volume reaches the log in clear. AES-256-GCM under a sub-key of the
 * volume key kept for the log alone
 *   logKey = HKDF-SHA256(ikm = volume key, salt = none, info = INFO, 32 bytes)
 * so the log's seals never eat into the blocks' per-generation budgets
 * (crypto/block-sealer.ts), with 12 random bytes of nonce per record (2^32
 * seals per key is far beyond what a log holds between two resets of a
 * volume's key use). The aad is the record's header fields (record.ts
 * sealAad): a payload moved to another record fails to open.
 */
import {
  createCipheriv,
  createDecipheriv,
  createSecretKey,
  hkdfSync,
  randomFillSync,
} from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { BlockAuthError } from '../crypto/errors.js';
import { SEAL_NONCE_BYTES, SEAL_TAG_BYTES } from './record.js';

const INFO = 'torus intent-log key v1';
const ALGORITHM = 'aes-256-gcm';

export class IntentSealer {
  readonly #key: KeyObject;

  constructor(volumeKey: Uint8Array) {
    this.#key = createSecretKey(
      Buffer.from(hkdfSync('sha256', volumeKey, Buffer.alloc(0), INFO, 32)),
    );
  }

  /** Seal `plain` into out[at, at + plain.length + SEAL_OVERHEAD): nonce, ciphertext, tag. */
  seal(plain: Uint8Array, out: Buffer, at: number, aad: Uint8Array): void {
    const nonce = out.subarray(at, at + SEAL_NONCE_BYTES);
    randomFillSync(nonce);
    const cipher = createCipheriv(ALGORITHM, this.#key, nonce, { authTagLength: SEAL_TAG_BYTES });
    cipher.setAAD(aad);
    const body = cipher.update(plain);
    cipher.final();
    body.copy(out, at + SEAL_NONCE_BYTES);
    cipher.getAuthTag().copy(out, at + SEAL_NONCE_BYTES + plain.length);
  }

  /** The plaintext of a sealed payload; BlockAuthError when it does not authenticate. */
  open(payload: Buffer, aad: Uint8Array, what: string): Buffer {
    const length = payload.length - SEAL_NONCE_BYTES - SEAL_TAG_BYTES;
    const nonce = payload.subarray(0, SEAL_NONCE_BYTES);
    const decipher = createDecipheriv(ALGORITHM, this.#key, nonce, {
      authTagLength: SEAL_TAG_BYTES,
    });
    decipher.setAAD(aad);
    decipher.setAuthTag(payload.subarray(SEAL_NONCE_BYTES + length));
    const plain = decipher.update(payload.subarray(SEAL_NONCE_BYTES, SEAL_NONCE_BYTES + length));
    try {
      decipher.final();
    } catch {
      plain.fill(0);
      throw new BlockAuthError(
        `${what}: sealed intent-log payload failed authentication (wrong key or damaged)`,
      );
    }
    return plain;
  }
}
