/**
 * `npm run bench:fuzz-soak -- [--minutes 30] [--cache-size 64MiB]`: does
 * torusd's memory stay flat under hostile input? One torusd with a small
 * cache; the seeded fuzzer (test/support/nbd-fuzz.ts) runs without pause
 * against one export while a well-behaved client writes and reads 1 MiB
 * pieces at random offsets of a 1 GiB volume (so the cache fills and keeps
 * turning over). VmRSS is sampled every --sample seconds.
 *
 * Each sample also splits RSS by kind of mapping (/proc/PID/smaps: V8 heap
 * pages, glibc's [heap] and thread arenas, other anonymous memory, files)
 * and gives each thread's JS heap and external bytes (torusd's
 * TORUS_MEMORY_REPORT_MS lines). --parallel sets the fuzzer's lanes (8);
 * --env NAME=VALUE (repeatable) is passed to torusd, e.g. MALLOC_ARENA_MAX=2;
 * --only fuzz|good runs one of the two loads, to tell their effects apart.
 *
 * Reports the samples, the least RSS in each fifth of the run after
 * warm-up (the trend without the fuzzer's transient 64 MiB reply buffers),
 * then RSS at the end of warm-up (the first fifth of
 * the run) against the last sample and the maximum after warm-up: "flat"
 * when the growth after warm-up is under 10 %. Writes only in the temp dir.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { MEMORY_REPORT_PREFIX } from '../src/common/memory-report.js';
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
    parallel: { type: 'string', default: '8' },
    only: { type: 'string' },
    env: { type: 'string', multiple: true, default: [] },
  },
});
const runMs = Number(values.minutes) * 60_000;
const sampleMs = Number(values.sample) * 1000;
const seed = Number(values.seed ?? Date.now() % 2 ** 31);

function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/**
 * Resident bytes by kind of mapping. V8 allocates its heap in 256 KiB
 * anonymous pages; glibc's thread arenas are 64 MiB reservations (a
 * read-write part followed by a PROT_NONE rest); the block cache is one
 * shared anonymous mapping. Only a guide: neighbouring V8 pages can merge.
 */
function smapsByKind(pid: number): Record<string, number> {
  const kinds: Record<string, number> = { v8: 0, heap: 0, arenas: 0, shared: 0, anon: 0, files: 0 };
  const maps: { kB: number; perms: string; path: string; rss: number }[] = [];
  for (const line of readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const header = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (header) {
      const kB = (parseInt(header[2], 16) - parseInt(header[1], 16)) / 1024;
      maps.push({ kB, perms: header[3], path: header[4], rss: 0 });
    } else if (line.startsWith('Rss:')) maps.at(-1)!.rss = Number(/\d+/.exec(line)![0]) * 1024;
  }
  maps.forEach((m, i) => {
    const next = maps[i + 1];
    let kind = 'anon';
    if (m.path === '[heap]') kind = 'heap';
    else if (m.path.startsWith('/')) kind = m.perms.endsWith('s') ? 'shared' : 'files';
    else if (m.path !== '') kind = 'files';
    else if (m.perms.endsWith('s')) kind = 'shared';
    else if (m.kB === 256) kind = 'v8';
    else if (next && next.path === '' && next.perms === '---p' && m.kB + next.kB === 65_536)
      kind = 'arenas';
    kinds[kind] += m.rss;
  });
  return kinds;
}

/** The latest torus-memory line of each thread, from torusd's output. */
function threadMemory(
  output: string,
): Map<string, { heapUsed: number; heapTotal: number; external: number }> {
  const latest = new Map<string, { heapUsed: number; heapTotal: number; external: number }>();
  for (const line of output.split('\n')) {
    const at = line.indexOf(MEMORY_REPORT_PREFIX);
    if (at < 0) continue;
    try {
      const r = JSON.parse(line.slice(at + MEMORY_REPORT_PREFIX.length));
      latest.set(r.thread, r);
    } catch {
      // A line cut by a sample taken mid-write: the next sample has it whole.
    }
  }
  return latest;
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
  env: {
    TORUS_LOG_LEVEL: 'error',
    TORUS_MEMORY_REPORT_MS: String(Math.min(sampleMs, 10_000)),
    ...Object.fromEntries(
      values.env!.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]),
    ),
  },
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
  while (values.only !== 'good' && Date.now() - started < runMs) {
    await fuzzRound(target, rng, 64, Number(values.parallel));
    cases += 64;
  }
})();

const goodClient = (async () => {
  if (values.only === 'fuzz') return;
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
      // A dead torusd fails every call at once: without a pause this loop
      // would starve the event loop (no samples, no SIGINT, no child reaped).
      if (node.child.exitCode !== null || node.child.signalCode !== null) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  await client.close();
})();

const sampler = setInterval(() => {
  const sample = { seconds: (Date.now() - started) / 1000, rss: rss(node.pid), cases, goodOps };
  samples.push(sample);
  const mb = (n: number) => (n / MiB).toFixed(0);
  const kinds = Object.entries(smapsByKind(node.pid)).map(([k, n]) => `${k} ${mb(n)}`);
  const threads = [...threadMemory(node.output()).entries()].map(
    ([t, m]) =>
      `${t.replace('worker-', 'w')} ${mb(m.heapUsed)}/${mb(m.heapTotal)}/${mb(m.external)}`,
  );
  console.log(
    `${sample.seconds.toFixed(0).padStart(6)} s  RSS ${mb(sample.rss).padStart(5)} MiB  fuzz cases ${cases}  good ops ${goodOps}\n` +
      `         smaps MiB: ${kinds.join(', ')}; JS heap used/total/external MiB: ${threads.join(', ')}`,
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
// Single samples jump by 64 MiB while a fuzzed 33 MiB READ holds its reply
// buffer; the least RSS of each fifth after warm-up shows the trend without them.
const fifths = [2, 3, 4, 5].map((k) => {
  const inFifth = samples.filter(
    (s) => s.seconds * 1000 > ((k - 1) * runMs) / 5 && s.seconds * 1000 <= (k * runMs) / 5 + 1000,
  );
  return inFifth.length ? (Math.min(...inFifth.map((s) => s.rss)) / MiB).toFixed(0) : '-';
});
console.log(`\nleast RSS in each fifth after warm-up: ${fifths.join(' → ')} MiB`);
console.log(
  `warm-up end ${(warm.rss / MiB).toFixed(0)} MiB, last ${(last.rss / MiB).toFixed(0)} MiB, peak after warm-up ${(peak / MiB).toFixed(0)} MiB: growth ${(growth * 100).toFixed(1)} % (${growth < 0.1 ? 'flat' : 'GROWING'}); ${cases} fuzz cases, ${goodOps} good ops, ${failures} good-client failures, torusd ${alive ? 'alive' : 'DEAD'}`,
);
