/**
 * `npm run bench`: torus against nbd-server and nbdkit, side by side on this
 * machine through the same fio nbd client. All servers run for the whole
 * benchmark; each job's runs alternate between servers (rotating which goes
 * first) so drift in the machine's state hits every server alike. See
 * docs/benchmarks.md for the procedure and reference figures.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { cleanupAll, removeDirLater } from './cleanup.js';
import { libnbdPython } from './flush-cadence.js';
import {
  fioHasNbdEngine,
  fioTimeoutMs,
  fioVersion,
  jobBefore,
  prefillArgs,
  readFioResult,
  readOnly,
  runFio,
  runJob,
  type FioSettings,
  type JobSpec,
} from './fio.js';
import { findMemoryController, MemoryCgroupError } from './memory-cgroup.js';
import {
  exportBytesFor,
  USAGE,
  UsageError,
  parseBenchOptions,
  type BenchOptions,
} from './options.js';
import {
  CLOCK_TICKS_PER_SECOND,
  isAlive,
  ownReapedChildTicks,
  peakRssBytes,
  treeCpuTicks,
  treeRssBytes,
} from './processes.js';
import { formatReport, ratios, summarize, type RunRecord } from './report.js';
import { counterDeltas, formatCounters, scrapeCounters } from './server-counters.js';
import {
  SERVER_TOOLS,
  startServer,
  torusCacheBytes,
  type BenchServer,
  type ServerName,
  type ServerOptions,
} from './servers.js';

/** How often memory is sampled during a run; a per-connection child lives only as long as fio's connection. */
const RSS_SAMPLE_MS = 250;
/** After fio exits, time for a forking server to reap its per-connection child so that child's CPU is counted. */
const REAP_SETTLE_MS = 300;
/** Quiet means every server's process tree used less than this share of a core over one sample. */
const QUIET_CORE_SHARE = 0.05;
const QUIET_SAMPLE_MS = 500;

function missingTools(servers: ServerName[], jobs: readonly JobSpec[]): string[] {
  const problems: string[] = [];
  const driven = jobs.filter((job) => job.flushEvery !== undefined);
  if (driven.length > 0 && !libnbdPython())
    problems.push(
      `python3 cannot import nbd (for ${driven.map((j) => j.name).join(', ')}): apt-get install python3-libnbd`,
    );
  const have = (tool: string) =>
    spawnSync('sh', ['-c', 'command -v "$1"', 'sh', tool], { stdio: 'ignore' }).status === 0;
  if (!have('fio')) problems.push('fio not found: apt-get install fio');
  else if (!fioHasNbdEngine())
    problems.push(
      `this fio (${fioVersion()}) has no nbd engine: install Debian's fio (>= 3.20, built with libnbd)`,
    );
  for (const server of servers) {
    for (const [tool, pkg] of Object.entries(SERVER_TOOLS[server])) {
      if (!have(tool))
        problems.push(`${tool} (for --servers ${server}) not found: apt-get install ${pkg}`);
    }
  }
  return problems;
}

interface Tracker {
  server: BenchServer;
  peakTreeRss: number;
}

async function measure(
  job: JobSpec,
  tracker: Tracker,
  settings: FioSettings,
): Promise<Pick<RunRecord, 'result' | 'serverCounters'>> {
  const { pid, metricsUrl } = tracker.server;
  const countersBefore = metricsUrl && (await scrapeCounters(metricsUrl));
  const sample = () => (tracker.peakTreeRss = Math.max(tracker.peakTreeRss, treeRssBytes(pid)));
  const ticksBefore = treeCpuTicks(pid);
  const fioTicksBefore = ownReapedChildTicks();
  const started = performance.now();
  const sampler = setInterval(sample, RSS_SAMPLE_MS);
  try {
    await runJob(job, settings);
  } finally {
    clearInterval(sampler);
  }
  const wallSeconds = (performance.now() - started) / 1000;
  const fioCpuSeconds = (ownReapedChildTicks() - fioTicksBefore) / CLOCK_TICKS_PER_SECOND;
  await sleep(REAP_SETTLE_MS);
  if (!isAlive(pid)) throw new Error(`${tracker.server.name} died during the run`);
  const serverCpuSeconds = (treeCpuTicks(pid) - ticksBefore) / CLOCK_TICKS_PER_SECOND;
  const countersAfter = countersBefore && (await scrapeCounters(metricsUrl));
  return {
    result: {
      ...readFioResult(settings.outputFile),
      serverCpuPercent: (100 * serverCpuSeconds) / wallSeconds,
      fioCpuPercent: (100 * fioCpuSeconds) / wallSeconds,
    },
    ...(countersBefore && countersAfter
      ? { serverCounters: counterDeltas(countersBefore, countersAfter) }
      : {}),
  };
}

/**
 * Before a run: flush the page cache (`sync`) and wait until every server is
 * quiet, so work a previous run left behind — a cluster replicating and
 * committing what the last write job wrote, nbd-server's file in kernel
 * write-back — is not measured as part of the next run of whichever server
 * comes next. Returns the seconds waited, and whether the limit was hit.
 */
async function settle(
  trackers: readonly Tracker[],
  limitSeconds: number,
): Promise<{ seconds: number; timedOut: boolean }> {
  const started = performance.now();
  if (limitSeconds === 0) return { seconds: 0, timedOut: false };
  spawnSync('sync', { stdio: 'ignore' });
  const busiest = async () => {
    const before = trackers.map((t) => treeCpuTicks(t.server.pid));
    await sleep(QUIET_SAMPLE_MS);
    const shares = trackers.map(
      (t, i) =>
        (treeCpuTicks(t.server.pid) - before[i]) /
        CLOCK_TICKS_PER_SECOND /
        (QUIET_SAMPLE_MS / 1000),
    );
    return Math.max(0, ...shares);
  };
  while ((await busiest()) >= QUIET_CORE_SHARE) {
    if (performance.now() - started > limitSeconds * 1000)
      return { seconds: (performance.now() - started) / 1000, timedOut: true };
  }
  return { seconds: (performance.now() - started) / 1000, timedOut: false };
}

async function benchmark(options: BenchOptions): Promise<number> {
  const workRoot = mkdtempSync(join(tmpdir(), 'torus-bench-'));
  removeDirLater(workRoot);
  const version = fioVersion();
  // Other work on the box skews every server; the load averages at start and end let a reader judge the figures.
  const loadAtStart = loadavg()[0];
  process.stderr.write(
    `bench: ${version}, ${options.runtimeSeconds} s + ${options.rampSeconds} s ramp per run, ${options.repeats} repeats, region ${options.regionBytes / 2 ** 20} MiB, temp ${workRoot}\n`,
  );

  let memory: ServerOptions['memory'];
  const budget = options.memoryBudgetBytes;
  if (budget !== undefined) {
    const controller = findMemoryController();
    if (!controller) {
      process.stderr.write(
        'bench: --memory-budget: no cgroup memory controller found under /sys/fs/cgroup (v2 memory.max or v1 memory.limit_in_bytes)\n',
      );
      return 1;
    }
    memory = { controller, budgetBytes: budget };
    process.stderr.write(
      `bench: same-memory mode: every server in a cgroup ${controller.version} of ${budget / 2 ** 20} MiB (${controller.root}), torus --cache-size ${torusCacheBytes(budget) / 2 ** 20} MiB\n`,
    );
    if (options.regionBytes < 2 * budget)
      process.stderr.write(
        `bench: warning: region ${options.regionBytes / 2 ** 20} MiB is not several times the budget; the page cache may hold it all\n`,
      );
    if (options.servers.includes('nbdkit'))
      process.stderr.write(
        'bench: warning: nbdkit (memory plugin) keeps the export in RAM and cannot live within a budget smaller than it; use nbdkit-file\n',
      );
  }

  const trackers: Tracker[] = [];
  try {
    for (const name of options.servers) {
      const workDir = join(workRoot, name);
      mkdirSync(workDir);
      const server = await startServer(name, {
        workDir,
        exportBytes: exportBytesFor(options),
        encrypt: options.encrypt,
        blockSize: options.blockSize,
        memory,
      });
      trackers.push({ server, peakTreeRss: 0 });
      process.stderr.write(
        `bench: ${name} serving ${server.uri} (pid ${server.pid}): ${server.commandLine}\n`,
      );
    }
  } catch (err) {
    if (err instanceof MemoryCgroupError) {
      process.stderr.write(`bench: ${err.message}\n`);
      return 1;
    }
    process.stderr.write(
      `bench: ${(err as Error).message}\n(compare the others with --servers, e.g. --servers nbd-server,nbdkit)\n`,
    );
    return 1;
  }

  // Every job runs over a written region, as --help says: reads find data, and
  // writes land on allocated storage (a database's files are, and so is
  // nbd-server's preallocated file) whether a job runs alone or in the full set.
  for (const { server } of trackers) {
    process.stderr.write(
      `bench: prefilling ${options.regionBytes / 2 ** 20} MiB of ${server.name}\n`,
    );
    const outputFile = join(workRoot, `prefill-${server.name}.json`);
    try {
      await runFio(
        prefillArgs({ uri: server.uri, regionBytes: options.regionBytes, outputFile }),
        fioTimeoutMs({ runtimeSeconds: 600, rampSeconds: 0 }),
      );
    } catch (err) {
      const hits = (server.cgroups ?? []).map((c) => c.limitHits() ?? 0);
      const oom = hits.some((n) => n > 0)
        ? ` (its memory cgroup hit the limit ${hits.join('+')} times: killed by the OOM killer? see dmesg; give a larger --memory-budget)`
        : '';
      process.stderr.write(
        `bench: prefilling ${server.name} failed: ${(err as Error).message}${oom}\n`,
      );
      return 1;
    }
  }
  for (const { server } of trackers) {
    if (!server.afterPrefill) continue;
    try {
      process.stderr.write(`bench: ${server.name}: ${await server.afterPrefill()}\n`);
    } catch (err) {
      process.stderr.write(`bench: preparing ${server.name} failed: ${(err as Error).message}\n`);
      return 1;
    }
  }

  const runs: RunRecord[] = [];
  const runsOn = (job: JobSpec, t: Tracker) => !t.server.readJobsOnly || readOnly(job);
  const total =
    options.repeats *
    options.jobs.reduce((sum, job) => sum + trackers.filter((t) => runsOn(job, t)).length, 0);
  for (const job of options.jobs) {
    for (let repeat = 0; repeat < options.repeats; repeat++) {
      const order = trackers
        .map((_, i) => trackers[(i + repeat) % trackers.length])
        .filter((t) => runsOn(job, t));
      for (const tracker of order) {
        const { name, uri } = tracker.server;
        const settings: FioSettings = {
          uri,
          regionBytes: options.regionBytes,
          runtimeSeconds: options.runtimeSeconds,
          rampSeconds: options.rampSeconds,
          outputFile: join(workRoot, `${job.name}-${name}-${repeat}.json`),
        };
        const record: RunRecord = { job: job.name, server: name, repeat };
        const before = jobBefore(job);
        if (before) {
          try {
            await runJob(before, { ...settings, outputFile: `${settings.outputFile}.before` });
          } catch (err) {
            record.error = `${before.name}, run first: ${(err as Error).message}`;
          }
          if (job.idleSeconds) await sleep(job.idleSeconds * 1000);
        }
        const settled = await settle(trackers, options.settleSeconds);
        record.settledSeconds = Math.round(settled.seconds * 10) / 10;
        if (settled.timedOut)
          process.stderr.write(
            `bench: servers still busy after --settle ${options.settleSeconds} s; running ${job.name} on ${name} anyway\n`,
          );
        try {
          if (!record.error) Object.assign(record, await measure(job, tracker, settings));
        } catch (err) {
          record.error = (err as Error).message;
        }
        runs.push(record);
        const r = record.result;
        const line = r
          ? `${r.iops.toFixed(0)} IOPS, ${r.mibPerSecond.toFixed(1)} MiB/s, p99 ${r.p99Micros.toFixed(0)} us, ` +
            (r.flushP99Micros === undefined
              ? ''
              : `${r.flushCount} flushes p50 ${r.flushP50Micros!.toFixed(0)} us p99 ${r.flushP99Micros.toFixed(0)} us, `) +
            `server CPU ${r.serverCpuPercent.toFixed(0)}%` +
            (record.serverCounters ? `; ${formatCounters(record.serverCounters)}` : '')
          : `ERROR ${record.error}`;
        const waited =
          record.settledSeconds! >= 1 ? ` (after ${record.settledSeconds} s settling)` : '';
        process.stderr.write(
          `[${runs.length}/${total}] ${job.name} ${name} #${repeat + 1}: ${line}${waited}\n`,
        );
      }
    }
  }

  const peakRss: Partial<Record<ServerName, number>> = {};
  for (const t of trackers)
    peakRss[t.server.name] = Math.max(t.peakTreeRss, peakRssBytes(t.server.pid));
  // Read before stop() removes the cgroups: proof the budget was reached (page cache included) and held.
  const cgroupUse = trackers.flatMap(({ server }) =>
    (server.cgroups ?? []).map((cgroup) => ({
      server: server.name,
      cgroup: cgroup.path,
      limitBytes: cgroup.limitBytes,
      peakBytes: cgroup.peakBytes(),
      limitHits: cgroup.limitHits(),
    })),
  );
  for (const { server } of trackers) await server.stop();

  const summaries = summarize(
    runs,
    options.jobs.map((j) => j.name),
    options.servers,
  ).filter((s) => s.runs + s.failures > 0);
  const ratioList = ratios(summaries);
  const load = { start: loadAtStart, end: loadavg()[0] };
  process.stdout.write(
    `\n# ${version}, runtime ${options.runtimeSeconds} s, ramp ${options.rampSeconds} s, ${options.repeats} repeats, region ${options.regionBytes / 2 ** 20} MiB, ${cpus().length} CPUs, Linux ${release()}, load average ${load.start.toFixed(1)} at start, ${load.end.toFixed(1)} at end\n`,
  );
  process.stdout.write(
    `# medians over repeats; CPU% = user+sys of the server's (or fio's) processes over fio's wall time, 100 = one core\n`,
  );
  if (budget !== undefined)
    process.stdout.write(
      `# same memory: every server (each cluster node and nbdserve; not etcd) in a ${budget / 2 ** 20} MiB memory cgroup, page cache included; torus --cache-size ${torusCacheBytes(budget) / 2 ** 20} MiB\n`,
    );
  process.stdout.write(formatReport(summaries, ratioList, peakRss) + '\n');
  if (cgroupUse.length > 0)
    process.stdout.write(
      `memory cgroups (peak use of the limit, times the limit was hit): ${cgroupUse
        .map(
          (c) =>
            `${c.cgroup.split('/').at(-1)} ${c.peakBytes === undefined ? '?' : (c.peakBytes / 2 ** 20).toFixed(0)}/${c.limitBytes / 2 ** 20} MiB, ${c.limitHits ?? '?'}×`,
        )
        .join('; ')}\n`,
    );

  if (options.jsonFile) {
    const settings = { ...options, jobs: options.jobs.map((j) => j.name) };
    const servers = trackers.map((t) => ({
      name: t.server.name,
      commandLine: t.server.commandLine,
    }));
    writeFileSync(
      options.jsonFile,
      JSON.stringify(
        {
          date: new Date().toISOString(),
          fio: version,
          cpus: cpus().length,
          kernel: release(),
          loadAverage: load,
          settings,
          servers,
          runs,
          summaries,
          ratios: ratioList,
          peakRssBytes: peakRss,
          memoryCgroups: cgroupUse,
        },
        null,
        2,
      ) + '\n',
    );
    process.stderr.write(`bench: results written to ${options.jsonFile}\n`);
  }
  return runs.some((r) => r.error) ? 1 : 0;
}

async function main(argv: string[]): Promise<number> {
  let options: BenchOptions | undefined;
  try {
    options = parseBenchOptions(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`bench: ${err.message}\n\n${USAGE}\n`);
    return 2;
  }
  if (!options) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const problems = missingTools(options.servers, options.jobs);
  if (problems.length > 0) {
    for (const p of problems) process.stderr.write(`bench: ${p}\n`);
    return 1;
  }
  try {
    return await benchmark(options);
  } finally {
    cleanupAll();
  }
}

main(process.argv.slice(2)).then(
  (code) => (process.exitCode = code),
  (err) => {
    process.stderr.write(`bench: ${err instanceof Error ? err.stack : String(err)}\n`);
    cleanupAll();
    process.exitCode = 1;
  },
);
