/**
 * Turning individual runs into the figures people compare: per job and
 * server the median of each measure (robust to one noisy run on a shared
 * 2-core machine), and torus's median IOPS over each peer's.
 */
import type { FioResult } from './fio.js';
import { BASELINE, type ServerName } from './servers.js';
import type { ServerCounters } from './server-counters.js';

export interface RunRecord {
  job: string;
  server: ServerName;
  repeat: number;
  /** Seconds spent waiting for the servers to go quiet before the run. */
  settledSeconds?: number;
  result?: FioResult & { serverCpuPercent: number; fioCpuPercent: number };
  /** torus: what its serving node's /metrics counted during the run. */
  serverCounters?: ServerCounters;
  error?: string;
}

export interface JobSummary {
  job: string;
  server: ServerName;
  runs: number;
  failures: number;
  iops: number;
  mibPerSecond: number;
  p99Micros: number;
  /** Median FLUSH latencies of the runs that flushed (fio --fsync jobs); NaN for the others */
  flushP50Micros: number;
  flushP99Micros: number;
  serverCpuPercent: number;
  fioCpuPercent: number;
}

export interface Ratio {
  job: string;
  /** Which of ours: torus (one node) or a torus-cluster mode. */
  ours: ServerName;
  /** A C server, or (for a degraded cluster) the healthy mode it is measured against. */
  peer: ServerName;
  /** our median IOPS / peer median IOPS */
  ratio: number;
}

const isOurs = (server: ServerName) => server.startsWith('torus');

export function median(values: number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export function summarize(runs: RunRecord[], jobs: string[], servers: ServerName[]): JobSummary[] {
  const summaries: JobSummary[] = [];
  for (const job of jobs) {
    for (const server of servers) {
      const mine = runs.filter((r) => r.job === job && r.server === server);
      const ok = mine.flatMap((r) => (r.result ? [r.result] : []));
      const med = (pick: (r: (typeof ok)[number]) => number) => median(ok.map(pick));
      summaries.push({
        job,
        server,
        runs: ok.length,
        failures: mine.length - ok.length,
        iops: med((r) => r.iops),
        mibPerSecond: med((r) => r.mibPerSecond),
        p99Micros: med((r) => r.p99Micros),
        flushP50Micros: median(ok.flatMap((r) => r.flushP50Micros ?? [])),
        flushP99Micros: median(ok.flatMap((r) => r.flushP99Micros ?? [])),
        serverCpuPercent: med((r) => r.serverCpuPercent),
        fioCpuPercent: med((r) => r.fioCpuPercent),
      });
    }
  }
  return summaries;
}

export function ratios(summaries: JobSummary[]): Ratio[] {
  const out: Ratio[] = [];
  for (const ours of summaries.filter((s) => isOurs(s.server) && s.runs > 0)) {
    for (const peer of summaries.filter(
      (s) => s.job === ours.job && !isOurs(s.server) && s.runs > 0,
    )) {
      out.push({
        job: ours.job,
        ours: ours.server,
        peer: peer.server,
        ratio: ours.iops / peer.iops,
      });
    }
    const healthy = summaries.find(
      (s) => s.job === ours.job && s.server === BASELINE[ours.server] && s.runs > 0,
    );
    if (healthy)
      out.push({
        job: ours.job,
        ours: ours.server,
        peer: healthy.server,
        ratio: ours.iops / healthy.iops,
      });
  }
  return out;
}

const number = (value: number, digits = 0) =>
  Number.isFinite(value) ? value.toFixed(digits) : '-';

export function formatReport(
  summaries: JobSummary[],
  ratioList: Ratio[],
  peakRss: Partial<Record<ServerName, number>>,
): string {
  const lines: string[] = [];
  // The FLUSH columns appear when a durable-write job ran; '-' on the other jobs' rows.
  const showFlush = summaries.some((s) => Number.isFinite(s.flushP99Micros));
  const flushHeader = showFlush ? ['flush p50 us', 'flush p99 us'] : [];
  const header = ['job', 'server', 'IOPS', 'MiB/s', 'p99 us', ...flushHeader];
  header.push('srv CPU%', 'fio CPU%', 'runs');
  const widths = [26, 22, 10, 9, 9, ...flushHeader.map(() => 12), 9, 9, 6];
  const row = (cells: string[]) =>
    cells
      .map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join(' ')
      .trimEnd();
  lines.push(row(header));
  let lastJob = '';
  for (const s of summaries) {
    const runs = s.failures > 0 ? `${s.runs}+${s.failures}err` : String(s.runs);
    lines.push(
      row([
        s.job === lastJob ? '' : s.job,
        s.server,
        number(s.iops),
        number(s.mibPerSecond, 1),
        number(s.p99Micros),
        ...(showFlush ? [number(s.flushP50Micros), number(s.flushP99Micros)] : []),
        number(s.serverCpuPercent),
        number(s.fioCpuPercent),
        runs,
      ]),
    );
    const mine = ratioList.filter((r) => r.job === s.job);
    const lastOfJob = summaries.filter((x) => x.job === s.job).at(-1) === s;
    if (lastOfJob && mine.length > 0)
      lines.push(
        `${''.padEnd(widths[0])} ${mine.map((r) => `${r.ours}/${r.peer} ${number(r.ratio, 2)}`).join('   ')}`,
      );
    lastJob = s.job;
  }
  const rss = Object.entries(peakRss).map(
    ([server, bytes]) => `${server} ${number(bytes! / 2 ** 20, 1)} MiB`,
  );
  if (rss.length > 0) lines.push('', `peak RSS (server and its children): ${rss.join(', ')}`);
  return lines.join('\n');
}
