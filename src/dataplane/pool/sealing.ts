/**
 * Per-worker cache of block sealers, one per encrypted volume, and the
 * associated data that binds a sealed block to its identity.
 */
import { IoError } from '../../common/errors.js';

export interface WorkerSealer {
  seal(plain: Uint8Array, out: Uint8Array, nonceOut: Uint8Array, tagOut: Uint8Array, aad: Uint8Array, generation: number): void;
  open(sealed: Uint8Array, out: Uint8Array, nonce: Uint8Array, tag: Uint8Array, aad: Uint8Array, generation: number): void;
}

const aad = new Uint8Array(16);
const aadView = new DataView(aad.buffer);

/** volume id, generation, index: the block ref as 16 bytes (reused buffer). */
export function refAad(volumeId: number, generation: number, index: number): Uint8Array {
  aadView.setUint32(0, volumeId, true);
  aadView.setUint32(4, generation, true);
  aadView.setUint32(8, index >>> 0, true);
  aadView.setUint32(12, Math.floor(index / 0x1_0000_0000), true);
  return aad;
}

export function blockSealerFor(_volumeId: number, _key: Uint8Array): WorkerSealer {
  throw new IoError('ENOTSUP', 'encryption is not wired into the pool yet');
}
