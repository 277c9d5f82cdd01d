/**
 * Peer transport throughput over loopback: single-block puts and gets of
 * 4 KiB and 64 KiB blocks with 32 requests outstanding, through TBP and, for
 * comparison, through the gRPC fallback. Not a test.
 *
 *   npm run build && node dist/bench/bench-peer.js [--seconds N] [--outstanding N] [--batch N] [--sizes 4096,65536] [--no-grpc] [--in-process] [--profile DIR]
 *
 * The server (PeerServer + MemoryPeerBackend, which hashes every put) runs
 * in a child process (test/support/peer-child.ts) so client and server each have a core;
 * --in-process runs both on one thread. Refs cycle over a fixed set so the
 * memory backend stays small (a put of a held ref replaces it). --batch N
 * adds a run of N-block puts. --profile DIR writes the server's CPU profile
 * there (run the bench itself under node --cpu-prof for the client's).
 */
import { performance } from 'node:perf_hooks';
import { MemoryPeerBackend } from '../test/support/memory-peer-backend.js';
import { PeerClient } from '../src/dataplane/peer/client.js';
import { PeerGrpcClient } from '../src/dataplane/peer/grpc.js';
import { PeerServer } from '../src/dataplane/peer/server.js';
import {
  CLUSTER,
  blockBytes,
  makeBlock,
  quietLogger,
  startChildPeer,
} from '../test/support/peer-helpers.js';
import type { WireBlock } from '../src/dataplane/peer/wire.js';
import type { BlockRef } from '../src/model/block-ref.js';

interface Args {
  seconds: number;
  outstanding: number;
  batch: number;
  grpc: boolean;
  inProcess: boolean;
  profileDir: string | undefined;
  sizes: number[];
}

function parseArgs(argv: string[]): Args {
  const args: Args = {
    seconds: 3,
    outstanding: 32,
    batch: 16,
    grpc: true,
    inProcess: false,
    profileDir: undefined,
    sizes: [4096, 65536],
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--seconds') args.seconds = Number(argv[++i]);
    else if (a === '--outstanding') args.outstanding = Number(argv[++i]);
    else if (a === '--batch') args.batch = Number(argv[++i]);
    else if (a === '--no-grpc') args.grpc = false;
    else if (a === '--in-process') args.inProcess = true;
    else if (a === '--profile') args.profileDir = argv[++i];
    else if (a === '--sizes') args.sizes = argv[++i].split(',').map(Number);
    else throw new Error(`unknown argument ${a}`);
  }
  return args;
}

/** The operations a run drives; both clients have them. */
interface Target {
  putBlocks(blocks: readonly WireBlock[]): Promise<void>;
  getBlock(ref: BlockRef): Promise<WireBlock | undefined>;
}

interface Result {
  ops: number;
  bytes: number;
  seconds: number;
  p50: number;
  p99: number;
  /** CPU time of this process per op (with --in-process: client and server together). */
  cpuMicros: number;
}

/** `outstanding` loops, each issuing its next request when the last settles, for `seconds`. */
async function drive(
  seconds: number,
  outstanding: number,
  op: (i: number) => Promise<number>,
): Promise<Result> {
  const latencies: number[] = [];
  let ops = 0;
  let bytes = 0;
  let next = 0;
  const started = performance.now();
  const cpu = process.cpuUsage();
  const end = started + seconds * 1000;
  await Promise.all(
    Array.from({ length: outstanding }, async () => {
      while (performance.now() < end) {
        const t0 = performance.now();
        // Not `bytes += await …`: that reads bytes before the await and loses the other loops' updates.
        const moved = await op(next++);
        bytes += moved;
        latencies.push(performance.now() - t0);
        ops++;
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  const used = process.cpuUsage(cpu);
  latencies.sort((a, b) => a - b);
  return {
    ops,
    bytes,
    seconds: elapsed,
    p50: latencies[Math.floor(latencies.length * 0.5)],
    p99: latencies[Math.floor(latencies.length * 0.99)],
    cpuMicros: (used.user + used.system) / ops,
  };
}

function row(label: string, r: Result): string {
  const opsPerSec = r.ops / r.seconds;
  const mbPerSec = r.bytes / r.seconds / 1e6;
  return `${label.padEnd(34)} ${Math.round(opsPerSec).toLocaleString('en-US').padStart(9)} ops/s ${mbPerSec.toFixed(0).padStart(6)} MB/s   p50 ${r.p50.toFixed(2)} ms  p99 ${r.p99.toFixed(2)} ms  cpu ${r.cpuMicros.toFixed(1)} µs/op`;
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  let tbpPort: number;
  let grpcPort: number;
  let stop: () => Promise<void>;
  if (args.inProcess) {
    const server = new PeerServer(
      new MemoryPeerBackend({ uuid: 'bench-server', capacityBytes: 8 * 1024 ** 3 }),
      { clusterId: CLUSTER, log: quietLogger() },
    );
    tbpPort = (await server.listen('127.0.0.1', 0)).port;
    grpcPort = await server.listenGrpc('127.0.0.1', 0);
    stop = () => server.close({ drainMs: 1000 });
  } else {
    const child = await startChildPeer(
      'bench-server',
      CLUSTER,
      args.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${args.profileDir}`] : [],
    );
    ({ tbpPort, grpcPort } = child);
    stop = () => child.stop();
  }
  const tbp = new PeerClient({
    host: '127.0.0.1',
    port: tbpPort,
    clusterId: CLUSTER,
    nodeId: 'bench-client',
    putTimeoutMs: 30_000,
    getTimeoutMs: 30_000,
    log: quietLogger(),
  });
  const grpcClient = new PeerGrpcClient({
    address: `127.0.0.1:${grpcPort}`,
    clusterId: CLUSTER,
    nodeId: 'bench-client',
    timeoutMs: 30_000,
  });

  console.log(
    `peer bench: ${args.outstanding} outstanding, ${args.seconds} s per run, server ${args.inProcess ? 'in process' : 'in a child process'}, node ${process.version}`,
  );
  try {
    for (const size of args.sizes) {
      // Refs cycle over this many blocks: ~128 MiB of 64 KiB blocks held by the server.
      const distinct = Math.max(64, Math.min(16_384, Math.floor((128 * 1024 * 1024) / size)));
      const data = blockBytes(size, size);
      const template = await makeBlock({ volumeId: 1, generation: 1, index: 0 }, data);
      const blocks: WireBlock[] = Array.from({ length: distinct }, (_, i) => ({
        ...template,
        ref: { volumeId: 1, generation: 1, index: i },
      }));
      const label = `${size / 1024} KiB`;
      const targets: [string, Target][] = [['TBP', tbp]];
      if (args.grpc) targets.push(['gRPC', grpcClient]);
      for (const [name, target] of targets) {
        // Warm up: fill the ref set so gets always hit, and let JIT settle.
        for (let i = 0; i < distinct; i += 64)
          await target.putBlocks(blocks.slice(i, Math.min(distinct, i + 64)));
        console.log(
          row(
            `${name} put ${label} x1`,
            await drive(
              args.seconds,
              args.outstanding,
              async (i) => (await target.putBlocks([blocks[i % distinct]]), size),
            ),
          ),
        );
        if (args.batch > 1) {
          const n = args.batch;
          console.log(
            row(
              `${name} put ${label} x${n} (per block)`,
              await drive(args.seconds, args.outstanding, async (i) => {
                const start = (i * n) % distinct;
                const batch = blocks.slice(start, start + n);
                await target.putBlocks(batch);
                return batch.length * size;
              }).then((r) => ({
                ...r,
                ops: r.bytes / size,
                cpuMicros: (r.cpuMicros * r.ops) / (r.bytes / size),
              })),
            ),
          );
        }
        console.log(
          row(
            `${name} get ${label}`,
            await drive(args.seconds, args.outstanding, async (i) => {
              const got = await target.getBlock(blocks[i % distinct].ref);
              if (!got) throw new Error('block missing');
              return got.data.length;
            }),
          ),
        );
      }
    }
  } finally {
    await tbp.close();
    grpcClient.close();
    await stop();
  }
}

await main();
