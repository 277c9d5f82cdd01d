/**
 * The ring's hash: XXH32, written out in plain JavaScript.
 *
 * Ring positions are part of the cluster's on-disk truth — change the hash and
 * every block is "somewhere else" — so the function must be a published,
 * fixed algorithm, the same on every node and every release. XXH32 is that
 * (the tests check it bit for bit against xxhash-wasm, the project's
 * reference implementation).
 *
 * Why not call xxhash-wasm directly: its init is async (a sync `buildRing`
 * could not use it), and every call copies the input into wasm memory and
 * crosses the boundary. Measured on the dev box (Node 20, 2 cores), hashing a
 * block ref's 16 bytes: 97 ns through xxhash-wasm `h32Raw`, 1.3 µs (md5) to
 * 2 µs (sha256) through node:crypto, 9 ns with `blockPoint` below.
 * Placement runs per block on the I/O path, so the plain function wins;
 * `bench/ring-bench.ts` repeats the measurement.
 */

const P1 = 0x9e3779b1;
const P2 = 0x85ebca77;
const P3 = 0xc2b2ae3d;
const P4 = 0x27d4eb2f;
const P5 = 0x165667b1;

const TWO_32 = 0x1_0000_0000;

function rotl(x: number, r: number): number {
  return (x << r) | (x >>> (32 - r));
}

/** One XXH32 lane step: acc + lane·P2, rotated 13, times P1. */
function round(acc: number, lane: number): number {
  return Math.imul(rotl((acc + Math.imul(lane, P2)) | 0, 13), P1);
}

function avalanche(h: number): number {
  h ^= h >>> 15;
  h = Math.imul(h, P2);
  h ^= h >>> 13;
  h = Math.imul(h, P3);
  h ^= h >>> 16;
  return h >>> 0;
}

function readU32(b: Uint8Array, i: number): number {
  return b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | (b[i + 3] << 24);
}

/** XXH32 of `bytes` with `seed` (an unsigned 32-bit result). */
export function xxh32(bytes: Uint8Array, seed = 0): number {
  const len = bytes.length;
  let i = 0;
  let h: number;
  if (len >= 16) {
    let v1 = (seed + P1 + P2) | 0;
    let v2 = (seed + P2) | 0;
    let v3 = seed | 0;
    let v4 = (seed - P1) | 0;
    for (; i + 16 <= len; i += 16) {
      v1 = round(v1, readU32(bytes, i));
      v2 = round(v2, readU32(bytes, i + 4));
      v3 = round(v3, readU32(bytes, i + 8));
      v4 = round(v4, readU32(bytes, i + 12));
    }
    h = (rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)) | 0;
  } else {
    h = (seed + P5) | 0;
  }
  h = (h + len) | 0;
  for (; i + 4 <= len; i += 4)
    h = Math.imul(rotl((h + Math.imul(readU32(bytes, i), P3)) | 0, 17), P4);
  for (; i < len; i++) h = Math.imul(rotl((h + Math.imul(bytes[i], P5)) | 0, 11), P1);
  return avalanche(h);
}

/**
 * Writes a block's ring key — volumeId then index, each as a u64 little-endian
 * — into `out` (16 bytes). `blockPoint` hashes exactly these bytes; this is
 * here so tests and tools can check that against any XXH32.
 */
export function encodeBlockKey(volumeId: number, index: number, out: Uint8Array): void {
  const view = new DataView(out.buffer, out.byteOffset, 16);
  view.setUint32(0, volumeId >>> 0, true);
  view.setUint32(4, Math.floor(volumeId / TWO_32) >>> 0, true);
  view.setUint32(8, index >>> 0, true);
  view.setUint32(12, Math.floor(index / TWO_32) >>> 0, true);
}

/**
 * A block's position on the ring: XXH32 (seed 0) of `encodeBlockKey`'s 16
 * bytes, computed without building them. Both arguments are non-negative
 * safe integers (the caller's contract; not checked here, on the hot path).
 * The generation is deliberately not an input: see ketama.ts.
 */
export function blockPoint(volumeId: number, index: number): number {
  // The 16-byte input is exactly one stripe: the four lanes are the two
  // halves of each number, then the length, then no tail.
  const v1 = round((P1 + P2) | 0, volumeId >>> 0);
  const v2 = round(P2, Math.floor(volumeId / TWO_32) >>> 0);
  const v3 = round(0, index >>> 0);
  const v4 = round(-P1 | 0, Math.floor(index / TWO_32) >>> 0);
  const h = (rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18) + 16) | 0;
  return avalanche(h);
}
