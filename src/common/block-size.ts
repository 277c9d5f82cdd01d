/**
 * The limits on a cluster's block size, fixed at init and never changed
 * after, so they are checked before the settings are first written.
 *
 * Smallest: 4 KiB, the slot store's floor (and the NBD sector multiple
 * clients expect). Largest: 8 MiB, the largest power of two whose
 * PUT_BLOCKS frame (count, descriptor, data) still fits the peer
 * protocol's 16 MiB MAX_PAYLOAD_BYTES; a larger block could never be
 * replicated. wire.test checks that the two stay in step.
 */
import { formatSize } from './size.js';

export const MIN_BLOCK_SIZE = 4 * 1024;
export const MAX_BLOCK_SIZE = 8 * 1024 * 1024;

/** Why `bytes` cannot be a block size, or undefined when it can. */
export function blockSizeProblem(bytes: number): string | undefined {
  if (
    !Number.isSafeInteger(bytes) ||
    bytes < MIN_BLOCK_SIZE ||
    bytes > MAX_BLOCK_SIZE ||
    (bytes & (bytes - 1)) !== 0
  ) {
    return `expected a power of two from ${formatSize(MIN_BLOCK_SIZE)} to ${formatSize(MAX_BLOCK_SIZE)} (e.g. 64KiB), got ${bytes} bytes`;
  }
  return undefined;
}

/** The block size a store or cluster gets unless told otherwise. */
export const DEFAULT_BLOCK_SIZE = 64 * 1024;
