/**
 * What a torusd did during one run, from its /metrics before and after: how
 * many versions it committed and how long they took, how often the intent
 * log was full or wrapped. A figure alone says how fast; these say why (a
 * FLUSH p99 of 100 ms with the log full 20 times is the log's size or the
 * commits' pace, not the disk).
 */

/** Counters read, each summed over its labels. */
const COUNTERS = [
  'torus_flush_seconds_count',
  'torus_flush_seconds_sum',
  'torus_flushed_blocks_total',
  'torus_intent_log_full_total',
  'torus_intent_log_wraps_total',
] as const;
type CounterName = (typeof COUNTERS)[number];
export type CounterSample = Record<CounterName, number>;

/** One run's differences, in the units people read. */
export interface ServerCounters {
  commits: number;
  /** Mean time a commit took, ms (NaN without commits). */
  commitMeanMs: number;
  committedBlocks: number;
  logFull: number;
  logWraps: number;
}

/**
 * The counters in Prometheus text exposition, each summed over every label
 * set; a counter absent from the text (no intent log, say) reads 0.
 */
export function parseCounters(text: string): CounterSample {
  const sample = Object.fromEntries(COUNTERS.map((name) => [name, 0])) as CounterSample;
  const wanted = new Set<string>(COUNTERS);
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const nameEnd = line.search(/[{ ]/);
    if (nameEnd <= 0) continue;
    const name = line.slice(0, nameEnd);
    if (!wanted.has(name)) continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(value)) sample[name as CounterName] += value;
  }
  return sample;
}

export function counterDeltas(before: CounterSample, after: CounterSample): ServerCounters {
  const delta = (name: CounterName) => after[name] - before[name];
  const commits = delta('torus_flush_seconds_count');
  return {
    commits,
    commitMeanMs: commits > 0 ? (1000 * delta('torus_flush_seconds_sum')) / commits : NaN,
    committedBlocks: delta('torus_flushed_blocks_total'),
    logFull: delta('torus_intent_log_full_total'),
    logWraps: delta('torus_intent_log_wraps_total'),
  };
}

/** The progress line's tail for one run. */
export function formatCounters(c: ServerCounters): string {
  const mean = Number.isNaN(c.commitMeanMs) ? '' : ` of ${c.commitMeanMs.toFixed(0)} ms mean`;
  return `${c.commits} commits${mean}, log full ${c.logFull}, wraps ${c.logWraps}`;
}

/** A scrape of url, or undefined when it cannot be read (the run is still measured). */
export async function scrapeCounters(url: string): Promise<CounterSample | undefined> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(5_000) });
    if (!response.ok) return undefined;
    return parseCounters(await response.text());
  } catch {
    return undefined;
  }
}
