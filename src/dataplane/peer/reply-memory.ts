/**
 * Memory for the replies a PeerClient's caller keeps (blocks, ranges):
 * small ones carved from slabs (frame-reader.ts, slabAllocator), large ones
 * — whole blocks — from one pool per thread, so the memory of a block read
 * is used again once its caller gives it back (recycleReceived). A fresh
 * 64 KiB ArrayBuffer per block read kept nbdserve's garbage collector busy
 * (sequential reads, docs/benchmarks.md, session 19). A caller that never
 * gives a block back just leaves it to the GC.
 */
import { BufferPool } from '../transport/buffer-pool.js';
import { slabAllocator } from './frame-reader.js';

const receivedBlocks = new BufferPool(8 * 1024 * 1024);

/** An allocator for one client's kept replies. */
export function replyAllocator(): (size: number) => Buffer {
  return slabAllocator((size) => receivedBlocks.acquire(size));
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
