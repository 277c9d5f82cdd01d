/**
 * `node dist/bench/rss-bench.js [--cache-size 256MiB] [--size 1GiB]`: how much
 * memory a torusd holds beyond its cache. One torusd (a fresh data dir, a
 * volume of --size) is driven by fio through its whole volume — random
 * 64 KiB writes, then random 4 KiB reads, each pass once over the volume, so
 * the cache fills and turns over — while its VmRSS (main thread and pool
 * workers: one process) is sampled. Prints cache, peak RSS and the overhead
 * (RSS − cache), with the kernel's split of the peak into anonymous memory,
 * file pages and shared memory (the cache is a SharedArrayBuffer).
 */
import { mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseSize } from '../src/common/size.js';
import { cleanupAll, removeDirLater } from './cleanup.js';
import { runFio } from './fio.js';
import { freePort, isAlive, peakRssBytes } from './processes.js';
import { launch } from './server-launch.js';
import { prepareTorus } from './servers.js';

const SAMPLE_MS = 200;
const MiB = 2 ** 20;

interface RssSample {
  rss: number;
  anon: number;
  file: number;
  shmem: number;
}

function sampleRss(pid: number): RssSample | undefined {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const kib = (field: string) =>
    Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024;
  return {
    rss: kib('VmRSS'),
    anon: kib('RssAnon'),
    file: kib('RssFile'),
    shmem: kib('RssShmem'),
  };
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      'cache-size': { type: 'string', default: '256MiB' },
      size: { type: 'string', default: '1GiB' },
    },
  });
  const cacheBytes = parseSize(values['cache-size']!);
  const volumeBytes = parseSize(values.size!);
  const workDir = mkdtempSync(join(tmpdir(), 'torus-rss-'));
  removeDirLater(workDir);
  mkdirSync(workDir, { recursive: true });
  const port = await freePort();
  const { argv, uri } = prepareTorus({ workDir, exportBytes: volumeBytes, encrypt: false }, port);
  argv.push('--cache-size', String(cacheBytes));
  const server = await launch('torus', argv, port, uri, workDir);
  let peak: RssSample = { rss: 0, anon: 0, file: 0, shmem: 0 };
  const atStart = sampleRss(server.pid);
  const sampler = setInterval(() => {
    const s = sampleRss(server.pid);
    if (s && s.rss > peak.rss) peak = s;
  }, SAMPLE_MS);
  const passes = [
    ['randwrite', '64k', 16],
    ['randread', '4k', 32],
  ] as const;
  try {
    for (const [rw, bs, depth] of passes) {
      process.stderr.write(`rss-bench: ${rw} ${bs} over ${volumeBytes / MiB} MiB\n`);
      await runFio(
        [
          `--name=${rw}`,
          '--ioengine=nbd',
          `--uri=${uri}`,
          `--size=${volumeBytes}`,
          `--rw=${rw}`,
          `--bs=${bs}`,
          `--iodepth=${depth}`,
          '--randrepeat=1',
          '--output-format=json',
          `--output=${join(workDir, `${rw}.json`)}`,
        ],
        30 * 60_000,
      );
    }
  } finally {
    clearInterval(sampler);
  }
  if (!isAlive(server.pid)) throw new Error('torusd died during the run');
  const atEnd = sampleRss(server.pid);
  const hwm = peakRssBytes(server.pid);
  await server.stop();
  const m = (bytes: number | undefined) =>
    bytes === undefined ? '?' : `${(bytes / MiB).toFixed(0)} MiB`;
  process.stdout.write(
    [
      `torusd --cache-size ${m(cacheBytes)}, volume ${m(volumeBytes)}: 64k randwrite then 4k randread, once over the volume each`,
      `RSS at start ${m(atStart?.rss)}, at end ${m(atEnd?.rss)}, peak sampled ${m(peak.rss)} (anon ${m(peak.anon)}, file ${m(peak.file)}, shmem ${m(peak.shmem)}), VmHWM ${m(hwm)}`,
      `overhead beyond the cache: ${m(Math.max(peak.rss, hwm) - cacheBytes)} at peak, ${m((atEnd?.rss ?? 0) - cacheBytes)} at end`,
    ].join('\n') + '\n',
  );
  return 0;
}

main().then(
  (code) => {
    cleanupAll();
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`rss-bench: ${err instanceof Error ? err.stack : String(err)}\n`);
    cleanupAll();
    process.exitCode = 1;
  },
);
