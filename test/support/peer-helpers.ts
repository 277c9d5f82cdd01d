/**
 * Helpers shared by the peer tests (not a test file itself): block
 * construction with real hashes, stackable fault layers over a backend, a
 * capturing logger, raw sockets that speak or break TBP, and a peer node in a
 * child process that can be frozen.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { pino } from 'pino';
import { childScript } from './child-scripts.js';
import type { Logger } from '../../src/common/log.js';
import { hasher } from '../../src/dataplane/blocks/hash.js';
import type { BlockRef } from '../../src/model/block-ref.js';
import type {
  ListBlocksFilter,
  PeerBlockBackend,
  PeerNodeInfo,
} from '../../src/dataplane/peer/backend.js';
import { FrameReader } from '../../src/dataplane/peer/frame-reader.js';
import {
  HEADER_SIZE,
  checkFrameHeader,
  headerFlags,
  headerOpcode,
  headerPayloadLength,
  headerRequestId,
  headerStatus,
  type ListedBlock,
  type WireBlock,
} from '../../src/dataplane/peer/wire.js';

export const CLUSTER = 'test-cluster';

/** A block with its real xxh64 (not sealed, no nonce or tag). */
export async function makeBlock(ref: BlockRef, data: Buffer, flags = 0): Promise<WireBlock> {
  const { lo, hi } = (await hasher()).hash64(data);
  return {
    ref,
    flags,
    hashLo: lo,
    hashHi: hi,
    nonce: Buffer.alloc(12),
    tag: Buffer.alloc(16),
    data,
  };
}

/** Deterministic bytes for block i. */
export function blockBytes(i: number, size: number): Buffer {
  const buf = Buffer.allocUnsafe(size);
  for (let at = 0; at < size; at += 4) buf.writeUInt32LE(((i + 1) * 2654435761 + at) >>> 0, at);
  return buf;
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Poll until cond() holds; fail after timeoutMs. */
export async function until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** A logger whose lines the test can read. */
export function capturingLogger(): { log: Logger; lines: () => Record<string, unknown>[] } {
  const raw: string[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void raw.push(line) });
  return { log, lines: () => raw.map((line) => JSON.parse(line) as Record<string, unknown>) };
}

/** A logger that says nothing (unless TORUS_LOG_LEVEL asks). */
export const quietLogger = (): Logger => pino({ level: process.env.TORUS_LOG_LEVEL ?? 'silent' });

/**
 * A fault layer over any backend: delays, gates, and a count of calls running
 * at once, so tests can see pipelining and backpressure from the storage side.
 */
export class FaultLayer implements PeerBlockBackend {
  running = 0;
  maxRunning = 0;
  /** ms to wait before each call (by op, and ref when there is one). */
  delay: (op: string, ref?: BlockRef) => number = () => 0;
  /** While set, every call waits for it. */
  gate: Promise<void> | undefined;

  constructor(readonly inner: PeerBlockBackend) {}

  private async enter<T>(op: string, ref: BlockRef | undefined, run: () => Promise<T>): Promise<T> {
    this.running++;
    this.maxRunning = Math.max(this.maxRunning, this.running);
    try {
      if (this.gate) await this.gate;
      const ms = this.delay(op, ref);
      if (ms > 0) await sleep(ms);
      return await run();
    } finally {
      this.running--;
    }
  }

  putBlocks(blocks: readonly WireBlock[]): Promise<void> {
    return this.enter('put', blocks[0]?.ref, () => this.inner.putBlocks(blocks));
  }
  getBlock(ref: BlockRef): Promise<WireBlock | undefined> {
    return this.enter('get', ref, () => this.inner.getBlock(ref));
  }
  hasBlocks(refs: readonly BlockRef[], hashes?: Uint32Array): Promise<boolean[]> {
    return this.enter('has', refs[0], () => this.inner.hasBlocks(refs, hashes));
  }
  deleteBlocks(refs: readonly BlockRef[]): Promise<number> {
    return this.enter('delete', refs[0], () => this.inner.deleteBlocks(refs));
  }
  sync(): Promise<void> {
    return this.enter('sync', undefined, () => this.inner.sync());
  }
  info(): PeerNodeInfo {
    return this.inner.info();
  }
  listBlocks(filter: ListBlocksFilter): AsyncIterable<ListedBlock> {
    return this.inner.listBlocks(filter);
  }
}

export interface RawFrame {
  opcode: number;
  flags: number;
  status: number;
  id: number;
  payload: Buffer;
}

/** A raw TCP connection that collects whatever TBP frames come back. */
export class RawPeer {
  readonly frames: RawFrame[] = [];
  closed = false;
  readonly closedPromise: Promise<void>;
  private readonly reader = new FrameReader((n) => Buffer.alloc(n));
  /** Our end's port (kept: a closed socket forgets it), as the server logs it. */
  readonly localPort: number;

  private constructor(readonly socket: Socket) {
    this.localPort = socket.localPort!;
    socket.on('error', () => {});
    this.closedPromise = new Promise((resolve) =>
      socket.once('close', () => ((this.closed = true), resolve())),
    );
    socket.on('data', (chunk: Buffer) => {
      this.reader.push(chunk);
      while (this.reader.peekHeader()) {
        const h = this.reader.headerBuf;
        const at = this.reader.headerAt;
        if (checkFrameHeader(h, at, true))
          return void this.socket.destroy(new Error('server sent a bad frame'));
        const length = headerPayloadLength(h, at);
        if (this.reader.available < HEADER_SIZE + length) break;
        const frame = {
          opcode: headerOpcode(h, at),
          flags: headerFlags(h, at),
          status: headerStatus(h, at),
          id: headerRequestId(h, at),
          payload: Buffer.alloc(0),
        };
        frame.payload = Buffer.from(this.reader.takeFrame(length));
        this.frames.push(frame);
      }
    });
  }

  static connect(port: number): Promise<RawPeer> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host: '127.0.0.1', port }, () => resolve(new RawPeer(socket)));
      socket.once('error', reject);
    });
  }

  write(...bufs: Buffer[]): void {
    for (const buf of bufs) this.socket.write(buf);
  }

  /** The next reply frame; fails after timeoutMs. */
  async next(timeoutMs = 2000): Promise<RawFrame> {
    await until(() => this.frames.length > 0 || this.closed, timeoutMs, 'a reply frame');
    const frame = this.frames.shift();
    if (!frame) throw new Error('connection closed before a reply');
    return frame;
  }

  /** Resolve once the server has closed the connection; fail after timeoutMs. */
  async waitClosed(timeoutMs = 2000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        this.closedPromise,
        new Promise<never>(
          (_, reject) =>
            (timer = setTimeout(
              () => reject(new Error('server did not close the connection')),
              timeoutMs,
            )),
        ),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** A TCP server that accepts, optionally answers, and otherwise ignores everything: a peer that hangs. */
export async function silentServer(
  onConnection?: (socket: Socket) => void,
): Promise<{ port: number; sockets: Set<Socket>; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    socket.on('close', () => sockets.delete(socket));
    if (onConnection) onConnection(socket);
    else socket.on('data', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    sockets,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A port nothing listens on (bound and released). */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export interface ChildPeer {
  child: ChildProcess;
  tbpPort: number;
  grpcPort: number;
  /** SIGCONT (in case it is frozen), then SIGTERM, SIGKILL after 3 s; resolves on exit. */
  stop(): Promise<void>;
}

/** A PeerServer with a memory backend in its own process (peer-child.ts); nodeArgs go to node (e.g. --cpu-prof). */
export async function startChildPeer(
  nodeId: string,
  clusterId = CLUSTER,
  nodeArgs: string[] = [],
): Promise<ChildPeer> {
  const script = childScript('peer-child');
  const child = spawn(process.execPath, [...nodeArgs, script, clusterId, nodeId], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, TORUS_LOG_LEVEL: process.env.TORUS_LOG_LEVEL ?? 'warn' },
  });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const ports = await new Promise<{ tbpPort: number; grpcPort: number }>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`peer child did not start within 10 s: ${err}`)),
      10_000,
    );
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n')[0];
      if (out.includes('\n')) {
        clearTimeout(timer);
        resolve(JSON.parse(line) as { tbpPort: number; grpcPort: number });
      }
    });
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`peer child exited before listening: ${err}`));
    });
  });
  return {
    child,
    ...ports,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGCONT');
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
      await exited;
      clearTimeout(timer);
    },
  };
}
