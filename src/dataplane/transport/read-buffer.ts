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
 *
 * A TLSSocket that wraps an accepted socket (NBD's STARTTLS) ignores
 * `onread`, and by default hands over each decrypted record (16 KiB at most)
 * in a freshly allocated buffer: for 1 MiB writes that was 64 allocations
 * per request and a quarter of the server's busy time in garbage collection.
 * `readTlsIntoBuffer` gives it a read buffer of ours the way `onread` would
 * have (see there).
 */
import { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';

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
 * Memory the reader wants the next read to fill directly (the rest of a
 * large frame being received, peer/frame-reader.ts inPlaceTarget), or
 * undefined for the connection's read buffer. Asked before every read.
 */
export type ReadTarget = () => Buffer | undefined;

/**
 * A received chunk: `view` is valid only during the call; `inPlace` when it
 * landed in memory the ReadTarget named (already where the reader wants it)
 * rather than in the read buffer.
 */
export type OnRead = (view: Buffer, inPlace: boolean) => void;

/**
 * `onread` options for a socket read into a read buffer of its own, or, with
 * `target`, into what it names when it names something: Node asks the
 * buffer function for the next read's memory after every read. A frame much
 * longer than a read (a PUT_PATCHES or PUT_BLOCKS batch of up to a few MiB)
 * then crosses from the kernel once instead of twice; one about a read long
 * (a 64 KiB block reply) mostly arrives with its header and is copied as
 * before (docs/benchmarks.md, session 30).
 */
export function onreadOptions(
  onRead: OnRead,
  target?: ReadTarget,
): { buffer: Buffer | (() => Buffer); callback: (bytes: number, buf: Uint8Array) => boolean } {
  const readBuffer = newReadBuffer();
  return {
    buffer: target ? () => target() ?? readBuffer : readBuffer,
    callback: (bytes, buf) => {
      onRead((buf as Buffer).subarray(0, bytes), buf !== readBuffer);
      return true;
    },
  };
}

/**
 * Re-create `accepted` (paused, from a server with pauseOnConnect) so that
 * each read lands in a read buffer of its own (or where `target` says) and
 * is passed to `onRead`. Returns the socket to use from now on, or undefined
 * if this Node does not allow it (then use `accepted` as usual).
 */
export function adoptWithReadBuffer(
  accepted: Socket,
  onRead: OnRead,
  options: { allowHalfOpen: boolean; target?: ReadTarget },
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
    onread: onreadOptions(onRead, options.target),
  } as ConstructorParameters<typeof Socket>[0]);
}

/**
 * The private keys under which net.Socket keeps an `onread` buffer and its
 * callback, found once by making a socket with `onread` and seeing where our
 * buffer and callback landed (Node names them only inside net.js). Undefined
 * when this Node keeps them some other way.
 */
interface OnreadKeys {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}
let onreadKeys: OnreadKeys | null | undefined;

function findOnreadKeys(): OnreadKeys | undefined {
  if (onreadKeys !== undefined) return onreadKeys ?? undefined;
  const buffer = Buffer.alloc(1);
  const callback = () => undefined;
  const generator = () => buffer;
  const holding = (socket: Socket, value: unknown) =>
    Object.getOwnPropertySymbols(socket).find(
      (key) => (socket as unknown as Record<symbol, unknown>)[key] === value,
    );
  type Options = ConstructorParameters<typeof Socket>[0];
  const probe = new Socket({ onread: { buffer, callback } } as Options);
  const generatorProbe = new Socket({ onread: { buffer: generator, callback } } as Options);
  const keys = {
    buffer: holding(probe, buffer),
    callback: holding(probe, callback),
    generator: holding(generatorProbe, generator),
  };
  probe.destroy();
  generatorProbe.destroy();
  onreadKeys = keys.buffer && keys.callback && keys.generator ? (keys as OnreadKeys) : null;
  return onreadKeys ?? undefined;
}

/**
 * Have `socket`'s decrypted bytes land in a read buffer of its own and be
 * passed to `onRead(view)` (valid only during that call) instead of as
 * 'data' events. Call it right after `new TLSSocket(...)`, before its first
 * read (Node starts reading on the next tick). Returns false, changing
 * nothing, where this Node does not allow it: then read 'data' as usual.
 *
 * How: net.Socket's own `onread` support is two private fields (the buffer,
 * the callback) that its read path consults, and `useUserBuffer` on the
 * handle, which for a TLSSocket is the TLS layer itself (a stream like the
 * TCP one, whose decrypted output then goes into our buffer). Pausing and
 * resuming still stop and start the handle's reads, as for an `onread` socket.
 */
export function readTlsIntoBuffer(socket: TLSSocket, onRead: (view: Buffer) => void): boolean {
  const keys = findOnreadKeys();
  const fields = socket as unknown as Record<symbol, unknown> & {
    _handle?: { useUserBuffer?: unknown } | null;
  };
  const handle = fields._handle;
  if (!keys || !handle || typeof handle.useUserBuffer !== 'function') return false;
  // A TLSSocket made around a socket has these fields, all empty.
  const own = Object.getOwnPropertySymbols(socket);
  if (!own.includes(keys.buffer) || !own.includes(keys.callback)) return false;
  if (fields[keys.buffer] != null || fields[keys.generator] != null) return false;
  const buffer = newReadBuffer();
  fields[keys.buffer] = buffer;
  fields[keys.callback] = (bytes: number, buf: Uint8Array) => {
    onRead((buf as Buffer).subarray(0, bytes));
  };
  (handle.useUserBuffer as (buf: Buffer) => void).call(handle, buffer);
  return true;
}
