/**
 * A hostile NBD client for fault tests and the RSS soak: each case opens one
 * connection, sends something malformed or abusive, and always destroys its
 * socket within a bound. What it checks is not the replies (a server may
 * answer or hang up) but what the caller checks around it: the server keeps
 * serving a well-behaved client and loses nothing that client flushed.
 *
 * Cases are drawn from a seeded generator, so a failing run is repeated by
 * its seed. Kinds:
 *   garbage      random bytes instead of a handshake
 *   options      a valid greeting, then options with random numbers, lengths
 *                that lie (longer or shorter than the data sent), oversized
 *                names, and option sequences in odd orders
 *   requests     a correct handshake to the export, then requests with bad
 *                magic, unknown commands, unknown flags, ranges past the end,
 *                lengths up to 4 GiB, a write whose payload never comes, reads
 *                left unread, then a hang-up at a random point
 *   idle         connect and say nothing, then hang up
 */
import { Socket, connect } from 'node:net';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPTS_MAGIC,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REQUEST_MAGIC,
  SERVER_GREETING_SIZE,
} from '../../src/dataplane/nbd/wire.js';
import { encodeGoData, encodeMetaContextData } from '../../src/dataplane/nbd/client-wire.js';

export type FuzzKind = 'garbage' | 'options' | 'requests' | 'idle';
export const FUZZ_KINDS: readonly FuzzKind[] = ['garbage', 'options', 'requests', 'idle'];

export interface FuzzTarget {
  host: string;
  port: number;
  exportName: string;
  /** Export size, so some requests land just inside or just past the end. */
  exportBytes: number;
}

/** xorshift32: small, fast, and repeatable from a seed. */
export class Rng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let x = this.state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.state = x >>> 0;
    return this.state;
  }
  below(n: number): number {
    return this.next() % n;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)];
  }
  bytes(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) out[i] = this.next() & 0xff;
    return out;
  }
}

/** A case never holds its socket longer than this. */
const CASE_LIMIT_MS = 1_500;

/** Run one case of `kind`; resolves when its socket is gone. Never rejects. */
export async function fuzzCase(target: FuzzTarget, kind: FuzzKind, rng: Rng): Promise<void> {
  const socket = connect({ host: target.host, port: target.port });
  socket.on('error', () => undefined);
  const received = new Received(socket);
  const limit = setTimeout(() => socket.destroy(), CASE_LIMIT_MS);
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('close', () => reject(new Error('closed')));
    });
    switch (kind) {
      case 'garbage':
        socket.write(rng.bytes(1 + rng.below(4096)));
        await pause(rng.below(50));
        break;
      case 'options':
        await hostileOptions(socket, received, target, rng);
        break;
      case 'requests':
        await hostileRequests(socket, received, target, rng);
        break;
      case 'idle':
        await pause(100 + rng.below(400));
        break;
    }
  } catch {
    // The server hanging up on a hostile client is an acceptable answer.
  } finally {
    clearTimeout(limit);
    socket.destroy();
  }
}

async function hostileOptions(
  socket: Socket,
  received: Received,
  target: FuzzTarget,
  rng: Rng,
): Promise<void> {
  await received.take(SERVER_GREETING_SIZE);
  const flags = rng.below(4) === 0 ? rng.next() : NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;
  socket.write(u32(flags));
  const count = 1 + rng.below(6);
  for (let i = 0; i < count; i++) {
    const option = rng.pick([
      NBD_OPT_GO,
      NBD_OPT_INFO,
      NBD_OPT_LIST,
      NBD_OPT_STRUCTURED_REPLY,
      NBD_OPT_SET_META_CONTEXT,
      NBD_OPT_LIST_META_CONTEXT,
      rng.below(64),
      rng.next(),
    ]);
    let data: Buffer;
    switch (rng.below(5)) {
      case 0:
        data = encodeGoData(rng.pick([target.exportName, '', 'x'.repeat(4096)]), [
          rng.below(8),
          rng.next() & 0xffff,
        ]);
        break;
      case 1:
        data = encodeMetaContextData(target.exportName, ['base:allocation', 'z'.repeat(300)]);
        break;
      case 2:
        data = rng.bytes(rng.below(256));
        break;
      default:
        data = Buffer.alloc(0);
    }
    // A declared length that lies about the data half the time.
    const declared = rng.below(2) === 0 ? data.length : rng.pick([0, 3, 65_536, 0xffffffff]);
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(rng.below(16) === 0 ? 0n : NBD_OPTS_MAGIC, 0);
    header.writeUInt32BE(option >>> 0, 8);
    header.writeUInt32BE(declared >>> 0, 12);
    socket.write(Buffer.concat([header, data]));
    await pause(rng.below(20));
  }
  await pause(rng.below(100));
}

async function hostileRequests(
  socket: Socket,
  received: Received,
  target: FuzzTarget,
  rng: Rng,
): Promise<void> {
  await received.take(SERVER_GREETING_SIZE);
  socket.write(u32(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
  const go = encodeGoData(target.exportName, []);
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
  header.writeUInt32BE(NBD_OPT_GO, 8);
  header.writeUInt32BE(go.length, 12);
  socket.write(Buffer.concat([header, go]));
  // Option replies: INFO(s) then ACK; we do not parse them, only wait for them.
  await received.take(20 + 12);
  await pause(20);
  const count = 1 + rng.below(8);
  for (let i = 0; i < count; i++) socket.write(hostileRequest(target, rng));
  await pause(rng.below(200));
}

function hostileRequest(target: FuzzTarget, rng: Rng): Buffer {
  const request = Buffer.alloc(28);
  const magic = rng.below(12) === 0 ? rng.next() : NBD_REQUEST_MAGIC;
  const command = rng.pick([
    NBD_CMD_READ,
    NBD_CMD_WRITE,
    NBD_CMD_FLUSH,
    NBD_CMD_TRIM,
    NBD_CMD_CACHE,
    NBD_CMD_WRITE_ZEROES,
    NBD_CMD_BLOCK_STATUS,
    NBD_CMD_DISC,
    rng.below(64),
  ]);
  const flags = rng.below(3) === 0 ? rng.next() & 0xffff : 0;
  const offset = rng.pick([
    0,
    rng.below(target.exportBytes),
    target.exportBytes - 512,
    target.exportBytes,
    target.exportBytes + 4096,
    2 ** 52,
  ]);
  const length = rng.pick([0, 1, 512, 4096, 65_536, 33 * 1024 * 1024, 0xffffffff]);
  request.writeUInt32BE(magic >>> 0, 0);
  request.writeUInt16BE(flags, 4);
  request.writeUInt16BE(command & 0xffff, 6);
  request.writeBigUInt64BE(BigInt(rng.next()), 8);
  request.writeBigUInt64BE(BigInt(offset), 16);
  request.writeUInt32BE(length >>> 0, 24);
  // A write's payload: sometimes whole (if small), sometimes cut short, sometimes none.
  if (command === NBD_CMD_WRITE && length <= 65_536 && rng.below(2) === 0)
    return Buffer.concat([request, rng.bytes(rng.below(2) === 0 ? length : rng.below(length + 1))]);
  return request;
}

/** Bytes from the socket, taken in exact amounts; rejects when it closes first. */
class Received {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private closed = false;
  private waiter: (() => void) | undefined;
  constructor(socket: Socket) {
    socket.on('data', (data: Buffer) => {
      this.chunks.push(data);
      this.buffered += data.length;
      this.waiter?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.waiter?.();
    });
  }
  async take(bytes: number): Promise<Buffer> {
    while (this.buffered < bytes) {
      if (this.closed) throw new Error('closed');
      await new Promise<void>((resolve) => (this.waiter = resolve));
      this.waiter = undefined;
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = [all.subarray(bytes)];
    this.buffered -= bytes;
    return all.subarray(0, bytes);
  }
}

function u32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(value >>> 0);
  return out;
}

function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Run `cases` cases, `parallel` at a time, kinds drawn from the generator. */
export async function fuzzRound(
  target: FuzzTarget,
  rng: Rng,
  cases: number,
  parallel = 8,
): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < cases) {
      next++;
      await fuzzCase(target, rng.pick(FUZZ_KINDS), rng);
    }
  };
  await Promise.all(Array.from({ length: parallel }, lane));
}
