/**
 * Reading a socket into one reused buffer.
 *
 * Node reads a socket into a freshly allocated 64 KiB buffer per read unless
 * the socket was created with `onread: { buffer, callback }`, which refills
 * one buffer of ours instead. Measured here (loopback, 1 MiB writes): about
 * 520 ms of CPU per GB received the default way against about 200 ms with a
 * reused 64 KiB buffer — the kernel copies into warm cache lines, and there
 * is no allocation or garbage per read. For 1 MiB NBD writes that receive
 * path is the server's bottleneck; for 64 KiB TBP blocks the fresh buffer
 * per read measured as a fifth of the CPU (allocation plus the GC it drives).
 *
 * A client socket (`net.connect`) takes `onread` directly: use
 * `newReadBuffer()` for its buffer. `net.createServer` has no `onread`
 * option, so an accepted socket (created paused by `pauseOnConnect`, so
 * nothing has been read yet) hands its handle to a new Socket made with
 * `onread`. That uses `socket._handle`, which is not public API; where it is
 * missing (another Node), the socket is left as it is and read the default
 * way, which is slower but equivalent.
 */
import { Socket } from 'node:net';

/** 64 KiB: what the kernel hands over per read at most on loopback; bigger buffers measured slower (they leave the cache). */
export const READ_BUFFER_BYTES = 64 * 1024;

/** One connection's read buffer: memory of its own (not from Node's slab), READ_BUFFER_BYTES long. */
export function newReadBuffer(): Buffer {
  return Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
}

interface HandleOwner {
  _handle?: { useUserBuffer?: unknown } | null;
}

/**
 * Re-create `accepted` (paused, from a server with pauseOnConnect) so that
 * each read lands in a read buffer of its own and is passed to
 * `onRead(view)`; the view is valid only during that call. Returns the socket
 * to use from now on, or undefined if this Node does not allow it (then use
 * `accepted` as usual).
 */
export function adoptWithReadBuffer(
  accepted: Socket,
  onRead: (view: Buffer) => void,
  options: { allowHalfOpen: boolean },
): Socket | undefined {
  const owner = accepted as unknown as HandleOwner;
  const handle = owner._handle;
  if (!handle || typeof handle.useUserBuffer !== 'function') return undefined;
  owner._handle = null;
  // With its handle gone, destroying the husk closes nothing; it only
  // settles the server's own connection count.
  accepted.destroy();
  return new Socket({
    handle,
    allowHalfOpen: options.allowHalfOpen,
    onread: {
      buffer: newReadBuffer(),
      callback: (bytes: number, buf: Uint8Array) => {
        onRead((buf as Buffer).subarray(0, bytes));
      },
    },
  } as ConstructorParameters<typeof Socket>[0]);
}
