/**
 * Memory for the replies a PeerClient's caller keeps (blocks, ranges):
 * small ones carved from slabs (frame-reader.ts, slabAllocator), large ones
 * — whole blocks — from one pool per thread, so the memory of a block read
 * is used again once its caller gives it back (recycleReceived). A fresh
 * 64 KiB ArrayBuffer per block read kept nbdserve's garbage collector busy
 * (sequential reads, docs/benchmarks.md, session 19). A caller that never
 * gives a block back just leaves it to the GC.
 *
 * Where a block's bytes land: reply memory starts BLOCK_DATA_SKEW bytes
 * past an 8-byte boundary, so the data of a GET_BLOCK or GET_RANGE reply —
 * after a 60-byte descriptor, and before that the 16-byte header, or the
 * range's 8 bytes and entry (multiples of 8 for blocks of 8 KiB and more)
 * — starts on one. The caller copies it into the block cache, a
 * SharedArrayBuffer, and V8 copies into one word by word only when source
 * and destination are equally aligned, otherwise byte by byte: that was a
 * fifth of nbdserve's CPU in 1 MiB sequential reads (session 26).
 */
import { BufferPool } from '../transport/buffer-pool.js';
import { slabAllocator } from './frame-reader.js';
import { BLOCK_DESCRIPTOR_SIZE } from './wire.js';

const receivedBlocks = new BufferPool(8 * 1024 * 1024);

/** Bytes from an 8-byte boundary to where reply memory starts (4). */
export const BLOCK_DATA_SKEW = (8 - (BLOCK_DESCRIPTOR_SIZE % 8)) % 8;

/** An allocator for one client's kept replies. */
export function replyAllocator(): (size: number) => Buffer {
  return slabAllocator(
    (size) => receivedBlocks.acquire(size + BLOCK_DATA_SKEW).subarray(BLOCK_DATA_SKEW),
    BLOCK_DATA_SKEW,
  );
}

/**
 * Give back a received block's bytes (WireBlock.data from getBlock) once
 * nothing uses them any more: not a view of them, not a put still sending
 * them. Bytes the pool did not make (small replies, carved from slabs) are
 * ignored.
 */
export function recycleReceived(data: Uint8Array): void {
  receivedBlocks.release(data as Buffer);
}
