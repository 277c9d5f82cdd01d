/**
 * `npm run bench:fuzz-soak -- [--minutes 30] [--cache-size 64MiB]`: does
 * torusd's memory stay flat under hostile input? One torusd with a small
 * cache; the seeded fuzzer (test/support/nbd-fuzz.ts) runs without pause
 * against one export while a well-behaved client writes and reads 1 MiB
 * pieces at random offsets of a 1 GiB volume (so the cache fills and keeps
 * turning over). VmRSS is sampled every --sample seconds.
 *
 * Reports the samples, then RSS at the end of warm-up (the first fifth of
 * the run) against the last sample and the maximum after warm-up: "flat"
 * when the growth after warm-up is under 10 %. Writes only in the temp dir.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { NbdClient } from '../src/dataplane/nbd-client/client.js';
import { Rng, fuzzRound } from '../test/support/nbd-fuzz.js';
import { makeDataDir, removeDir, startTorusd } from '../test/torusd-process.js';

const MiB = 2 ** 20;
const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '30' },
    'cache-size': { type: 'string', default: '64MiB' },
    sample: { type: 'string', default: '30' },
    seed: { type: 'string' },
  },
});
const runMs = Number(values.minutes) * 60_000;
const sampleMs = Number(values.sample) * 1000;
const seed = Number(values.seed ?? Date.now() % 2 ** 31);

function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

const dir = await makeDataDir('fuzz-soak');
const node = await startTorusd({
  dataDir: dir,
  size: '2GiB',
  args: [
    '--cache-size',
    values['cache-size']!,
    '--ensure-volume',
    'good=1GiB',
    '--ensure-volume',
    'fuzz=64MiB',
  ],
  env: { TORUS_LOG_LEVEL: 'error' },
});
const stop = async () => {
  await node.stop('SIGTERM');
  await removeDir(dir);
};
process.on('SIGINT', () => void stop().then(() => process.exit(130)));

console.log(
  `fuzz soak: ${values.minutes} min, cache ${values['cache-size']}, seed ${seed}, torusd pid ${node.pid}`,
);
const started = Date.now();
const samples: { seconds: number; rss: number; cases: number; goodOps: number }[] = [];
let cases = 0;
let goodOps = 0;
let failures = 0;

const fuzzing = (async () => {
  const rng = new Rng(seed);
  const target = { host: '127.0.0.1', port: node.port, exportName: 'fuzz', exportBytes: 64 * MiB };
  while (Date.now() - started < runMs) {
    await fuzzRound(target, rng, 64);
    cases += 64;
  }
})();

const goodClient = (async () => {
  const client = await NbdClient.connect({ host: '127.0.0.1', port: node.port }, 'good');
  const piece = randomBytes(MiB);
  const back = Buffer.alloc(MiB);
  while (Date.now() - started < runMs) {
    const at = Math.floor(Math.random() * 1024) * MiB;
    try {
      if (Math.random() < 0.5) await client.write(piece, at);
      else await client.read(back, at);
      if (goodOps % 64 === 0) await client.flush();
      goodOps++;
    } catch (err) {
      failures++;
      if (failures < 5) console.log(`good client: ${(err as Error).message}`);
    }
  }
  await client.close();
})();

const sampler = setInterval(() => {
  const sample = { seconds: (Date.now() - started) / 1000, rss: rss(node.pid), cases, goodOps };
  samples.push(sample);
  console.log(
    `${sample.seconds.toFixed(0).padStart(6)} s  RSS ${(sample.rss / MiB).toFixed(0).padStart(5)} MiB  fuzz cases ${cases}  good ops ${goodOps}`,
  );
}, sampleMs);

await Promise.all([fuzzing, goodClient]);
clearInterval(sampler);
const alive = node.child.exitCode === null;
await stop();

const warm = samples.filter((s) => s.seconds * 1000 <= runMs / 5).at(-1) ?? samples[0];
const after = samples.filter((s) => s.seconds * 1000 > runMs / 5);
const last = samples.at(-1)!;
const peak = Math.max(...after.map((s) => s.rss));
const growth = (last.rss - warm.rss) / warm.rss;
console.log(
  `\nwarm-up end ${(warm.rss / MiB).toFixed(0)} MiB, last ${(last.rss / MiB).toFixed(0)} MiB, peak after warm-up ${(peak / MiB).toFixed(0)} MiB: growth ${(growth * 100).toFixed(1)} % (${growth < 0.1 ? 'flat' : 'GROWING'}); ${cases} fuzz cases, ${goodOps} good ops, ${failures} good-client failures, torusd ${alive ? 'alive' : 'DEAD'}`,
);
