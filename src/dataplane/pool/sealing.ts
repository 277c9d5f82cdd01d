/**
 * Per-worker cache of block sealers, one per encrypted volume, and the
 * associated data that binds a sealed block to its identity.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { BlockSealer } from '../crypto/block-sealer.js';

export interface WorkerSealer {
  seal(
    plain: Uint8Array,
    out: Uint8Array,
    nonceOut: Uint8Array,
    tagOut: Uint8Array,
    aad: Uint8Array,
    generation: number,
  ): void;
  open(
    sealed: Uint8Array,
    out: Uint8Array,
    nonce: Uint8Array,
    tag: Uint8Array,
    aad: Uint8Array,
    generation: number,
  ): void;
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

/** Sealers live as long as the worker: deriving per-generation keys is the costly part. */
const sealers = new Map<number, { key: Uint8Array; sealer: WorkerSealer }>();

function sameKey(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function blockSealerFor(volumeId: number, key: Uint8Array): WorkerSealer {
  const cached = sealers.get(volumeId);
  // Volume ids are never reused while a node runs, but a deleted and
  // recreated id must not pick up a stale key: compare the key too.
  if (cached && sameKey(cached.key, key)) return cached.sealer;
  const inner = new BlockSealer(key);
  const sealer: WorkerSealer = {
    seal(plain, out, nonceOut, tagOut, aadBytes, generation) {
      inner.seal(plain, out, nonceOut, tagOut, aadBytes, generation);
      countCryptoGarbage();
    },
    open(sealed, out, nonce, tag, aadBytes, generation) {
      inner.open(sealed, out, nonce, tag, aadBytes, generation);
      countCryptoGarbage();
    },
  };
  sealers.set(volumeId, { key: Uint8Array.from(key), sealer });
  return sealer;
}

/**
 * node:crypto returns every sealed or opened block as a fresh 64 KiB buffer
 * (it has no output-buffer API). V8 frees those only when its heuristics
 * collect, by which time a worker's malloc arena has grown by tens of MiB
 * that glibc keeps; measured, that put an encrypted node 14 MiB over its
 * memory budget (cache + 200 MiB). A minor collection every
 * BLOCKS_PER_COLLECTION blocks (2 MiB of garbage) frees them while few.
 * Workers only: this module is loaded by the pool worker, never by the
 * main thread.
 */
const BLOCKS_PER_COLLECTION = 32;
let sinceCollection = 0;
const collect = exposeGc();

function countCryptoGarbage(): void {
  if (++sinceCollection < BLOCKS_PER_COLLECTION) return;
  sinceCollection = 0;
  collect?.({ type: 'minor' });
}

/** V8's gc(), without starting the process with --expose-gc; undefined if this Node will not give it. */
function exposeGc(): ((options: { type: 'minor' | 'major' }) => void) | undefined {
  try {
    setFlagsFromString('--expose-gc');
    return runInNewContext('gc') as (options: { type: 'minor' | 'major' }) => void;
  } catch {
    return undefined;
  }
}
