/**
 * The fio workloads, run through fio's userspace nbd engine (libnbd), so every
 * server is measured through the same client with no kernel nbd module.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { runFlushCadence } from './flush-cadence.js';
import { runTool } from './tool-run.js';

export interface JobSpec {
  name: string;
  rw: 'randread' | 'randwrite' | 'randrw' | 'read' | 'write';
  blockSize: string;
  iodepth: number;
  /** fio processes, each with its own NBD connection */
  connections: number;
  extra: string[];
  /**
   * A FLUSH after exactly every this many writes, sent by the libnbd driver
   * (flush-cadence.ts) instead of fio, which at a queue depth above 1 does
   * not keep to its --fsync=N.
   */
  flushEvery?: number;
  /**
   * Another job (by name) run first, not measured, before every measured run
   * of this one on each server: the state a user's workload leaves behind.
   */
  after?: string;
  /**
   * Seconds with no I/O between the job run first (`after`) and this one,
   * on every server alike: a scan some time after the writes, when a server
   * may have tidied up what they left (torus folds a quiet volume's patches).
   */
  idleSeconds?: number;
}

export const JOBS: readonly JobSpec[] = [
  {
    name: 'randread-4k-qd32',
    rw: 'randread',
    blockSize: '4k',
    iodepth: 32,
    connections: 1,
    extra: [],
  },
  {
    name: 'randwrite-4k-qd32',
    rw: 'randwrite',
    blockSize: '4k',
    iodepth: 32,
    connections: 1,
    extra: [],
  },
  {
    name: 'randrw70-64k-qd16',
    rw: 'randrw',
    blockSize: '64k',
    iodepth: 16,
    connections: 1,
    extra: ['--rwmixread=70'],
  },
  { name: 'seqwrite-1m-qd8', rw: 'write', blockSize: '1m', iodepth: 8, connections: 1, extra: [] },
  { name: 'seqread-1m-qd8', rw: 'read', blockSize: '1m', iodepth: 8, connections: 1, extra: [] },
  {
    name: 'randread-4k-qd32-4conn',
    rw: 'randread',
    blockSize: '4k',
    iodepth: 32,
    connections: 4,
    extra: [],
  },
  // Durable writes: fio's --fsync=N sends an NBD_CMD_FLUSH after every N
  // writes (the nbd engine maps fsync to FLUSH), and waits for it. Their
  // IOPS count writes only; the FLUSH latency is reported on its own.
  // At a queue depth above 1, fio 3.33 flushes more often than every N:
  // against nbdkit's memory plugin, 64 KiB writes with --fsync=16 made a
  // FLUSH every 16.0 writes at iodepth 1 and every 5.1 at iodepth 4 (the
  // bench's runs: every 4.0, every server alike). The report's flush count
  // is what was sent.
  // A database's commit log: every 4 KiB write made durable before the next.
  {
    name: 'randwrite-4k-qd1-fsync1',
    rw: 'randwrite',
    blockSize: '4k',
    iodepth: 1,
    connections: 1,
    extra: ['--fsync=1'],
  },
  // Page write-back of a database or a filesystem journal committing in batches.
  {
    name: 'randwrite-64k-qd4-fsync16',
    rw: 'randwrite',
    blockSize: '64k',
    iodepth: 4,
    connections: 1,
    extra: ['--fsync=16'],
  },
  // A bulk load or a backup written with periodic syncs.
  {
    name: 'seqwrite-1m-qd8-fsync32',
    rw: 'write',
    blockSize: '1m',
    iodepth: 8,
    connections: 1,
    extra: ['--fsync=32'],
  },
  // The same with a FLUSH after exactly every 32 writes (flush-cadence.ts):
  // 32 MiB to make durable each time, the workload fio's job above names.
  {
    name: 'seqwrite-1m-qd8-flush32',
    rw: 'write',
    blockSize: '1m',
    iodepth: 8,
    connections: 1,
    extra: [],
    flushEvery: 32,
  },
  // A backup or a scan after a database's random writes: the bench's other
  // sequential reads follow a sequential write, which rewrites the region
  // whole. Last, so the default order's other jobs never see what it leaves.
  {
    name: 'seqread-1m-qd8-after-randwrite',
    rw: 'read',
    blockSize: '1m',
    iodepth: 8,
    connections: 1,
    extra: [],
    after: 'randwrite-4k-qd32',
  },
  // The same scan 30 s after the writes (a nightly backup after a day's
  // writes): the immediate one above stays, this is beside it.
  {
    name: 'seqread-1m-qd8-after-randwrite-idle',
    rw: 'read',
    blockSize: '1m',
    iodepth: 8,
    connections: 1,
    extra: [],
    after: 'randwrite-4k-qd32',
    idleSeconds: 30,
  },
];

/** The job a job runs after (JobSpec.after), or undefined. */
export function jobBefore(job: JobSpec): JobSpec | undefined {
  if (job.after === undefined) return undefined;
  const before = JOBS.find((j) => j.name === job.after);
  if (!before) throw new Error(`${job.name} runs after ${job.after}, which is no job`);
  return before;
}

/** Jobs that send FLUSH (fio --fsync=N, or the libnbd driver), whose flush latency the report shows. */
export function flushes(job: JobSpec): boolean {
  return job.flushEvery !== undefined || job.extra.some((flag) => flag.startsWith('--fsync='));
}

/** Reads only: what a degraded cluster is measured with. */
export function readOnly(job: JobSpec): boolean {
  const before = jobBefore(job);
  return (job.rw === 'randread' || job.rw === 'read') && (!before || readOnly(before));
}

export function readsData(job: JobSpec): boolean {
  return job.rw === 'randread' || job.rw === 'read' || job.rw === 'randrw';
}

export interface FioSettings {
  uri: string;
  /** bytes of the export every job works in, from offset 0 */
  regionBytes: number;
  runtimeSeconds: number;
  rampSeconds: number;
  /** fio's JSON goes here */
  outputFile: string;
}

/** fio's command line for one timed job. */
export function fioArgs(job: JobSpec, s: FioSettings): string[] {
  return [
    `--name=${job.name}`,
    '--ioengine=nbd',
    `--uri=${s.uri}`,
    `--size=${s.regionBytes}`,
    `--rw=${job.rw}`,
    `--bs=${job.blockSize}`,
    `--iodepth=${job.iodepth}`,
    `--numjobs=${job.connections}`,
    ...job.extra,
    '--time_based',
    `--runtime=${s.runtimeSeconds}`,
    `--ramp_time=${s.rampSeconds}`,
    // Same random offsets for every server (fio's fixed seed), without the
    // bookkeeping of a random map that a time-based run does not need.
    '--randrepeat=1',
    '--norandommap',
    '--group_reporting',
    '--output-format=json',
    `--output=${s.outputFile}`,
  ];
}

/** One sequential pass over the region so read jobs find data, not holes a server can answer without I/O. */
export function prefillArgs(s: Omit<FioSettings, 'runtimeSeconds' | 'rampSeconds'>): string[] {
  return [
    '--name=prefill',
    '--ioengine=nbd',
    `--uri=${s.uri}`,
    `--size=${s.regionBytes}`,
    '--rw=write',
    '--bs=1m',
    '--iodepth=8',
    '--output-format=json',
    `--output=${s.outputFile}`,
  ];
}

export interface FioResult {
  iops: number;
  readIops: number;
  writeIops: number;
  mibPerSecond: number;
  /** 99th percentile completion latency in microseconds, the worse of read and write */
  p99Micros: number;
  /** FLUSH requests completed in the measured time (fio's "sync" section); 0 for jobs without --fsync */
  flushCount: number;
  /** Median and 99th percentile FLUSH latency in microseconds; absent when nothing was flushed */
  flushP50Micros?: number;
  flushP99Micros?: number;
}

interface FioDirection {
  iops: number;
  bw_bytes: number;
  clat_ns?: { percentile?: Record<string, number> };
}

/**
 * fio's completion-time record of fsyncs (for the nbd engine: NBD_CMD_FLUSH),
 * kept apart from the read and write figures. fio 3.33 writes it per job as
 * "sync": { total_ios, lat_ns: { N, percentile: { "50.000000": ns, ... } } }.
 */
interface FioSync {
  total_ios?: number;
  lat_ns?: { N?: number; percentile?: Record<string, number> };
}

interface FioJson {
  jobs: { error: number; read: FioDirection; write: FioDirection; sync?: FioSync }[];
}

/** Sums a group-reported (or per-job) fio JSON result. fio may print warnings before the JSON. */
export function parseFioJson(text: string): FioResult {
  const start = text.indexOf('{');
  if (start < 0) throw new Error('fio produced no JSON output');
  const report = JSON.parse(text.slice(start)) as FioJson;
  if (!Array.isArray(report.jobs) || report.jobs.length === 0)
    throw new Error('fio JSON has no jobs');
  const failed = report.jobs.find((j) => j.error !== 0);
  if (failed) throw new Error(`fio reported error ${failed.error}`);
  let readIops = 0;
  let writeIops = 0;
  let bytesPerSecond = 0;
  let p99Nanos = 0;
  let flushCount = 0;
  // Percentiles of separate jobs cannot be merged exactly; with several jobs
  // (no group reporting) the worst job's percentile is reported, an upper bound.
  let flushP50Nanos: number | undefined;
  let flushP99Nanos: number | undefined;
  for (const j of report.jobs) {
    const flushed = j.sync?.lat_ns?.N ?? j.sync?.total_ios ?? 0;
    const percentile = j.sync?.lat_ns?.percentile;
    if (flushed > 0 && percentile) {
      flushCount += flushed;
      const worse = (a: number | undefined, b: number | undefined) =>
        b === undefined ? a : Math.max(a ?? 0, b);
      flushP50Nanos = worse(flushP50Nanos, percentile['50.000000']);
      flushP99Nanos = worse(flushP99Nanos, percentile['99.000000']);
    }
    readIops += j.read.iops;
    writeIops += j.write.iops;
    bytesPerSecond += j.read.bw_bytes + j.write.bw_bytes;
    for (const direction of [j.read, j.write]) {
      const p99 = direction.clat_ns?.percentile?.['99.000000'];
      if (direction.iops > 0 && p99 !== undefined) p99Nanos = Math.max(p99Nanos, p99);
    }
  }
  return {
    iops: readIops + writeIops,
    readIops,
    writeIops,
    mibPerSecond: bytesPerSecond / 2 ** 20,
    p99Micros: p99Nanos / 1000,
    flushCount,
    ...(flushP50Nanos === undefined ? {} : { flushP50Micros: flushP50Nanos / 1000 }),
    ...(flushP99Nanos === undefined ? {} : { flushP99Micros: flushP99Nanos / 1000 }),
  };
}

/** Beyond ramp+runtime, how long a fio run may take before it counts as hung. */
const FIO_SLACK_MS = 60_000;

/** Run fio to completion (killed if it hangs); throws with fio's output on failure. */
export async function runFio(args: string[], timeoutMs: number): Promise<void> {
  await runTool('fio', args, timeoutMs);
}

/** A job's block size in bytes ('4k', '64k', '1m'). */
export function blockBytes(job: JobSpec): number {
  const match = /^(\d+)([km])$/.exec(job.blockSize);
  if (!match) throw new Error(`block size ${job.blockSize}: expected a number of k or m`);
  return Number(match[1]) * (match[2] === 'k' ? 1024 : 1024 * 1024);
}

/** Run one timed job: fio, or the libnbd driver for a job with `flushEvery`; its JSON lands in settings.outputFile. */
export function runJob(job: JobSpec, settings: FioSettings): Promise<void> {
  if (job.flushEvery === undefined) return runFio(fioArgs(job, settings), fioTimeoutMs(settings));
  if (job.rw !== 'write' && job.rw !== 'randwrite')
    throw new Error(`${job.name}: the flush-cadence driver writes only`);
  if (job.connections !== 1)
    throw new Error(`${job.name}: the flush-cadence driver uses one connection`);
  return runFlushCadence(
    {
      uri: settings.uri,
      rw: job.rw,
      blockSize: blockBytes(job),
      iodepth: job.iodepth,
      flushEvery: job.flushEvery,
      regionBytes: settings.regionBytes,
      runtimeSeconds: settings.runtimeSeconds,
      rampSeconds: settings.rampSeconds,
    },
    settings.outputFile,
    fioTimeoutMs(settings),
  );
}

export function fioTimeoutMs(s: Pick<FioSettings, 'runtimeSeconds' | 'rampSeconds'>): number {
  return (s.runtimeSeconds + s.rampSeconds) * 1000 + FIO_SLACK_MS;
}

export function readFioResult(path: string): FioResult {
  return parseFioJson(readFileSync(path, 'utf8'));
}

export function fioVersion(): string {
  return spawnSync('fio', ['--version'], { encoding: 'utf8' }).stdout.trim();
}

/** Debian's fio has had the nbd engine since 3.20; a build without libnbd does not. */
export function fioHasNbdEngine(): boolean {
  return spawnSync('fio', ['--enghelp=nbd'], { stdio: 'ignore' }).status === 0;
}
