/**
 * The library handle against NBD, for the closing note of issue 10: the
 * same VolumeHandle calls from one process, (a) over NBD to a torusd on the
 * data directory (through its unix socket: what Torus.open gives while
 * torusd runs), then (b) in this process with torusd stopped (the library's
 * own node on the same directory: no socket). Same data, same cache size,
 * each warmed by reading the working set once first. Not a test (nothing is
 * asserted on time); run after `npm run build`:
 *
 *   node dist/bench/library-vs-nbd.js [--seconds 3] [--rounds 3]
 *
 * Jobs: 4 KiB random reads at queue depth 1 and 32 over a 256 MiB working
 * set, 1 MiB sequential reads and writes at queue depth 8 (each write round
 * ends with a flush, inside the timing). Each figure is the median of the
 * rounds; the ratio is library / NBD (above 1: the library is faster).
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Torus, type VolumeHandle } from '../src/index.js';
import { PROJECT } from './servers.js';

const MiB = 1024 * 1024;
const VOLUME = 'bench';
const VOLUME_BYTES = 1024 * MiB;
const WORKING_SET = 256 * MiB;
const CACHE = '512MiB';
const CACHE_BYTES = 512 * MiB;

function argValue(name: string, fallback: number): number {
  const at = process.argv.indexOf(name);
  return at >= 0 ? Number(process.argv[at + 1]) : fallback;
}

interface Job {
  name: string;
  unit: 'IOPS' | 'MiB/s';
  run(handle: VolumeHandle, seconds: number): Promise<number>;
}

/** `depth` loops issuing `op` until the time is up; resolves with ops per second. */
async function loop(
  depth: number,
  seconds: number,
  op: (worker: number, n: number) => Promise<unknown>,
): Promise<number> {
  const deadline = performance.now() + seconds * 1000;
  let ops = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: depth }, async (_, worker) => {
      for (let n = 0; performance.now() < deadline; n++) {
        await op(worker, n);
        ops++;
      }
    }),
  );
  return ops / ((performance.now() - started) / 1000);
}

function randomRead(depth: number): Job {
  return {
    name: `randread-4k-qd${depth}`,
    unit: 'IOPS',
    run(handle, seconds) {
      const buffers = Array.from({ length: depth }, () => Buffer.allocUnsafe(4096));
      const slots = WORKING_SET / 4096;
      return loop(depth, seconds, (w) =>
        handle.read(buffers[w], Math.floor(Math.random() * slots) * 4096),
      );
    },
  };
}

function sequential(kind: 'read' | 'write', depth: number): Job {
  return {
    name: `seq${kind}-1m-qd${depth}`,
    unit: 'MiB/s',
    async run(handle, seconds) {
      const buffers = Array.from({ length: depth }, () =>
        Buffer.alloc(MiB, kind === 'write' ? 0x5a : 0),
      );
      let next = 0;
      const chunks = WORKING_SET / MiB;
      const started = performance.now();
      const perSecond = await loop(depth, seconds, (w) => {
        const at = (next++ % chunks) * MiB;
        return kind === 'read' ? handle.read(buffers[w], at) : handle.write(buffers[w], at);
      });
      if (kind === 'read') return perSecond;
      // Writes count only once durable: the flush is inside the time.
      const ops = perSecond * ((performance.now() - started) / 1000);
      await handle.flush();
      return ops / ((performance.now() - started) / 1000);
    },
  };
}

const JOBS: Job[] = [randomRead(1), randomRead(32), sequential('read', 8), sequential('write', 8)];

async function measure(
  handle: VolumeHandle,
  seconds: number,
  rounds: number,
): Promise<Map<string, number>> {
  // Warm: the working set once into the cache.
  const warm = Buffer.allocUnsafe(8 * MiB);
  for (let at = 0; at < WORKING_SET; at += warm.length) await handle.read(warm, at);
  const medians = new Map<string, number>();
  for (const job of JOBS) {
    const figures: number[] = [];
    for (let r = 0; r < rounds; r++) figures.push(await job.run(handle, seconds));
    figures.sort((a, b) => a - b);
    medians.set(job.name, figures[Math.floor(figures.length / 2)]);
  }
  return medians;
}

/** torusd on `dataDir`, started and waited for; resolves with a stop function. */
async function startTorusd(dataDir: string): Promise<() => Promise<void>> {
  const child = spawn(
    process.execPath,
    [
      join(PROJECT, 'bin', 'torusd'),
      '--data-dir',
      dataDir,
      '--size',
      '2GiB',
      '--cache-size',
      CACHE,
      '--nbd',
      '127.0.0.1:0',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TORUS_LOG_LEVEL: 'warn' } },
  );
  const exited = new Promise<void>((done) => child.once('exit', () => done()));
  await new Promise<void>((done, fail) => {
    let text = '';
    child.stdout!.on('data', (d: Buffer) => {
      text += d.toString();
      if (/torusd listening on nbd:/.test(text)) done();
    });
    child.stderr!.on('data', (d: Buffer) => (text += d.toString()));
    void exited.then(() => fail(new Error(`torusd exited before listening:\n${text}`)));
  });
  return async () => {
    child.kill('SIGTERM');
    await exited;
  };
}

async function main(): Promise<void> {
  const seconds = argValue('--seconds', 3);
  const rounds = argValue('--rounds', 3);
  const dataDir = await mkdtemp(join(tmpdir(), 'torus-library-bench-'));
  let stop: (() => Promise<void>) | undefined;
  try {
    stop = await startTorusd(dataDir);
    const overNbd = await Torus.open({ dataDir });
    await overNbd.createVolume(VOLUME, VOLUME_BYTES);
    let handle = await overNbd.openVolume(VOLUME);
    // Data everywhere in the working set, so reads are of stored blocks.
    const fill = Buffer.alloc(8 * MiB, 0xa5);
    for (let at = 0; at < WORKING_SET; at += fill.length) await handle.write(fill, at);
    await handle.flush();
    const nbd = await measure(handle, seconds, rounds);
    await overNbd.close();
    await stop();
    stop = undefined;

    const inProcess = await Torus.open({ dataDir, cacheSize: CACHE_BYTES });
    handle = await inProcess.openVolume(VOLUME);
    const library = await measure(handle, seconds, rounds);
    await inProcess.close();

    const rows = JOBS.map((job) => {
      const a = library.get(job.name)!;
      const b = nbd.get(job.name)!;
      return `| ${job.name} | ${job.unit} | ${Math.round(a).toLocaleString('en')} | ${Math.round(b).toLocaleString('en')} | ${(a / b).toFixed(2)}× |`;
    });
    process.stdout.write(
      [
        `library handle (in process) vs NBD to torusd (unix socket), medians of ${rounds} × ${seconds} s`,
        '',
        '| job | unit | library | NBD | library / NBD |',
        '|---|---|---|---|---|',
        ...rows,
        '',
      ].join('\n'),
    );
  } finally {
    await stop?.();
    await rm(dataDir, { recursive: true, force: true });
  }
}

await main();
