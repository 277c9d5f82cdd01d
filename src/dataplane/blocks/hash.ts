/**
 * Block checksums: xxh64 (xxhash-wasm) of the bytes as stored, split into two
 * u32 halves so they fit typed arrays and records without BigInt churn.
 * Loaded once per thread (main and each pool worker) by awaiting `hasher()`.
 */
import xxhash from 'xxhash-wasm';
import { CHECKED_BYTES, OFF_CHECK } from './record.js';

export interface Hasher {
  /** xxh64 of bytes, written as [lo, hi] into out at outIndex. */
  hash64Into(bytes: Uint8Array, out: Uint32Array, outIndex: number): void;
  hash64(bytes: Uint8Array): { lo: number; hi: number };
  /** xxh32 (seed 0) of bytes: the sub-block checksums (sub-sums.ts). */
  hash32(bytes: Uint8Array): number;
  /** Seal a slot record: store the xxh32 of its first 60 bytes in its last 4. */
  stampRecord(record: DataView): void;
  recordIsIntact(record: DataView): boolean;
}

let loading: Promise<Hasher> | undefined;

export function hasher(): Promise<Hasher> {
  loading ??= xxhash().then((api): Hasher => {
    const MASK = 0xffff_ffffn;
    const view = (record: DataView) =>
      new Uint8Array(record.buffer, record.byteOffset, CHECKED_BYTES);
    return {
      hash64Into(bytes, out, outIndex) {
        const h = api.h64Raw(bytes);
        out[outIndex] = Number(h & MASK);
        out[outIndex + 1] = Number(h >> 32n);
      },
      hash64(bytes) {
        const h = api.h64Raw(bytes);
        return { lo: Number(h & MASK), hi: Number(h >> 32n) };
      },
      hash32(bytes) {
        return api.h32Raw(bytes);
      },
      stampRecord(record) {
        record.setUint32(OFF_CHECK, api.h32Raw(view(record)), true);
      },
      recordIsIntact(record) {
        return record.getUint32(OFF_CHECK, true) === api.h32Raw(view(record));
      },
    };
  });
  return loading;
}

/** True when every byte is zero: such blocks are stored as holes, not data. */
export function isAllZero(bytes: Uint8Array): boolean {
  // Four bytes at a time where alignment allows (blocks are 4 KiB multiples);
  // u32 reads stay small integers, where u64 reads would allocate BigInts.
  if (bytes.byteOffset % 4 === 0 && bytes.byteLength % 4 === 0) {
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
    return true;
  }
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}
