/**
 * BufferPool: reusable large buffers for what a server holds per request
 * (NBD READ replies and gathered WRITE payloads, TBP frames that span socket
 * reads).
 *
 * Why: a fresh 1 MiB Buffer is fresh mmap'd memory, and the first write to
 * each of its pages faults; profiling 1 MiB sequential reads showed the copy
 * into new reply buffers costing six times what a copy into warm memory does,
 * plus the garbage collector's share. Reusing buffers keeps them warm.
 *
 * Buffers are pooled by power-of-two capacity from MIN_POOLED up; smaller
 * requests are ordinary allocations (Node's own slab handles those well, but
 * only those under 4 KiB: a 4 KiB read's reply was a fresh ArrayBuffer). A
 * buffer goes back to the pool only when its user says it is done with it
 * (the socket has taken a reply, the export has settled a write); the pool
 * holds at most maxPooledBytes, so an idle server keeps little.
 */
const MIN_POOLED = 4 * 1024;

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  /** Memory this pool made: release() ignores anything else, so a stray slice can never be recycled. */
  private readonly made = new WeakSet<ArrayBufferLike>();
  private pooledBytes = 0;

  constructor(private readonly maxPooledBytes = 16 * 1024 * 1024) {}

  /** A buffer of exactly `size` bytes (uninitialised). Give it back with release(). */
  acquire(size: number): Buffer {
    if (size < MIN_POOLED) return Buffer.allocUnsafe(size);
    const capacity = 2 ** Math.ceil(Math.log2(size));
    const list = this.free.get(capacity);
    const pooled = list?.pop();
    if (pooled) {
      this.pooledBytes -= capacity;
      return pooled.subarray(0, size);
    }
    const fresh = Buffer.allocUnsafeSlow(capacity);
    this.made.add(fresh.buffer);
    return fresh.subarray(0, size);
  }

  /** Return a buffer from acquire(); nothing may use it afterwards. Anything else is ignored. */
  release(buf: Buffer): void {
    if (!this.made.has(buf.buffer)) return;
    const capacity = buf.buffer.byteLength;
    if (this.pooledBytes + capacity > this.maxPooledBytes) return;
    let list = this.free.get(capacity);
    if (!list) this.free.set(capacity, (list = []));
    list.push(Buffer.from(buf.buffer, 0, capacity));
    this.pooledBytes += capacity;
  }
}
