/**
 * ownedCopy: a copy of some bytes in memory of their own, for buffers that
 * are kept for a long time.
 *
 * Why: Buffer.from(small) and Buffer.allocUnsafe(small) (under 4 KiB) are
 * slices of a shared 8 KiB slab, and a slice keeps its whole slab alive. A
 * server that makes thousands of small buffers a second (NBD reply headers)
 * and keeps one now and then (a metadata value in the embedded store's key
 * space and watch history) pins a fresh 8 KiB slab for every one it keeps:
 * the soak under fuzzing grew RSS by about 1.5 MiB a minute this way, with
 * one 8 KiB slab per volume commit held by the 10,000-event watch history.
 * Likewise a subarray of a file read whole keeps the whole file alive.
 * allocUnsafeSlow gives an ArrayBuffer of exactly the length, so what is
 * kept costs only its own bytes.
 */
export function ownedCopy(bytes: Uint8Array): Buffer {
  const copy = Buffer.allocUnsafeSlow(bytes.length);
  copy.set(bytes);
  return copy;
}
