/**
 * Command-line flags of `npm run bench`, checked up front so a typo fails in
 * a second rather than after minutes of benchmarking.
 */
import { parseArgs } from 'node:util';
import { parseSize } from '../src/common/size.js';
import { JOBS, type JobSpec } from './fio.js';
import { DEFAULT_SERVERS, SERVER_NAMES, type ServerName } from './servers.js';

/** Every server exports this much, or the region when that is larger; the region lies inside it. */
export const EXPORT_BYTES = 2 ** 30;
/** Largest --region: a same-memory run wants several times the budget, and servers preallocate it. */
export const MAX_REGION_BYTES = 64 * 2 ** 30;
/** Smallest --memory-budget: below this a Node server cannot start. */
export const MIN_MEMORY_BUDGET_BYTES = 64 * 2 ** 20;

export interface BenchOptions {
  runtimeSeconds: number;
  rampSeconds: number;
  repeats: number;
  jobs: JobSpec[];
  servers: ServerName[];
  regionBytes: number;
  jsonFile?: string;
  encrypt: boolean;
  blockSize?: string;
  /** Before each run, wait up to this long for every server to go quiet (0: don't). */
  settleSeconds: number;
  /**
   * Same-memory mode: every server (each cluster node) runs in a memory
   * cgroup of this many bytes, page cache included; torus's cache is half of it.
   */
  memoryBudgetBytes?: number;
}

/** What every server exports: 1 GiB, or the region when larger. */
export function exportBytesFor(options: Pick<BenchOptions, 'regionBytes'>): number {
  return Math.max(EXPORT_BYTES, options.regionBytes);
}

export const USAGE = `usage: npm run bench -- [flags]

Runs fio (nbd engine) against torus, nbd-server and nbdkit on this machine,
alternating servers run by run, and prints per-job medians and ratios.

  --runtime SECONDS    measured time per run (default 10)
  --ramp SECONDS       warm-up per run, not measured (default 2)
  --repeats N          runs per job and server (default 3)
  --jobs A,B           jobs to run (default all): ${JOBS.map((j) => j.name).join(', ')}
  --servers A,B        servers to compare (default ${DEFAULT_SERVERS.join(',')}); any of ${SERVER_NAMES.join(', ')}.
                       torus-cluster is the cluster mode: etcd and 3 torusd nodes, replication 2,
                       fio through node 1 (e.g. --servers torus-cluster,nbd-server);
                       torus-cluster-cold: the same with 64 MiB caches, so reads go to stores and replicas;
                       torus-cluster-degraded: cold, node 2 killed after the prefill, read jobs only,
                       also reported as a ratio of torus-cluster-cold
  --region SIZE        what the jobs touch, prefilled first (default 512MiB); the export is
                       1 GiB, or the region when larger (up to 64GiB)
  --memory-budget SIZE same-memory mode: every server, each cluster node, in a memory cgroup
                       of SIZE (page cache included; needs root); torus --cache-size SIZE/2.
                       Give a region several times SIZE, e.g. --memory-budget 512MiB --region 4GiB
  --json FILE          also write every run and the medians as JSON
  --encrypt            create the torus volume encrypted
  --block-size SIZE    torus store block size (passed to torusctl init)
  --settle SECONDS     before each run, sync and wait up to this long until no
                       server uses more than 5% of a core (default 60; 0: don't),
                       so one run's write-back is not billed to the next
  -h, --help           this text`;

export class UsageError extends Error {}

function positiveInteger(flag: string, text: string, allowZero = false): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < (allowZero ? 0 : 1)) {
    throw new UsageError(
      `--${flag}: expected a ${allowZero ? 'non-negative' : 'positive'} integer, got "${text}"`,
    );
  }
  return value;
}

function pickList<T>(
  flag: string,
  text: string,
  known: readonly T[],
  nameOf: (item: T) => string,
): T[] {
  const picked: T[] = [];
  for (const name of text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)) {
    const item = known.find((k) => nameOf(k) === name);
    if (!item)
      throw new UsageError(
        `--${flag}: unknown "${name}"; expected some of ${known.map(nameOf).join(', ')}`,
      );
    if (!picked.includes(item)) picked.push(item);
  }
  if (picked.length === 0) throw new UsageError(`--${flag}: empty list`);
  return picked;
}

/** Parsed options, or undefined when help was asked for. Throws UsageError on bad flags. */
export function parseBenchOptions(argv: string[]): BenchOptions | undefined {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        runtime: { type: 'string', default: '10' },
        ramp: { type: 'string', default: '2' },
        repeats: { type: 'string', default: '3' },
        jobs: { type: 'string' },
        servers: { type: 'string', default: DEFAULT_SERVERS.join(',') },
        region: { type: 'string', default: '512MiB' },
        json: { type: 'string' },
        encrypt: { type: 'boolean', default: false },
        'block-size': { type: 'string' },
        settle: { type: 'string', default: '60' },
        'memory-budget': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const v = parsed.values;
  if (v.help) return undefined;
  let regionBytes: number;
  try {
    regionBytes = parseSize(v.region!);
  } catch (err) {
    throw new UsageError(`--region: ${(err as Error).message}`);
  }
  if (regionBytes < 2 ** 20 || regionBytes > MAX_REGION_BYTES || regionBytes % 2 ** 20 !== 0) {
    throw new UsageError(
      `--region: expected a whole number of MiB between 1MiB and 64GiB, got "${v.region}"`,
    );
  }
  let memoryBudgetBytes: number | undefined;
  if (v['memory-budget'] !== undefined) {
    try {
      memoryBudgetBytes = parseSize(v['memory-budget']);
    } catch (err) {
      throw new UsageError(`--memory-budget: ${(err as Error).message}`);
    }
    if (memoryBudgetBytes < MIN_MEMORY_BUDGET_BYTES || memoryBudgetBytes % 2 ** 20 !== 0)
      throw new UsageError(
        `--memory-budget: expected a whole number of MiB, at least 64MiB, got "${v['memory-budget']}"`,
      );
  }
  if (v['block-size'] !== undefined) {
    try {
      parseSize(v['block-size']);
    } catch (err) {
      throw new UsageError(`--block-size: ${(err as Error).message}`);
    }
  }
  return {
    runtimeSeconds: positiveInteger('runtime', v.runtime!),
    rampSeconds: positiveInteger('ramp', v.ramp!, true),
    repeats: positiveInteger('repeats', v.repeats!),
    jobs: v.jobs === undefined ? [...JOBS] : pickList('jobs', v.jobs, JOBS, (j) => j.name),
    servers: pickList('servers', v.servers!, SERVER_NAMES, (s) => s),
    regionBytes,
    jsonFile: v.json,
    encrypt: v.encrypt!,
    blockSize: v['block-size'],
    settleSeconds: positiveInteger('settle', v.settle!, true),
    ...(memoryBudgetBytes === undefined ? {} : { memoryBudgetBytes }),
  };
}
