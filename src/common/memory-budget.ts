/**
 * The default block-cache size, from the memory this process may really use:
 * the machine's, or its container's (cgroup) limit when that is smaller.
 * A fixed default is wrong both ways: 1 GiB gets a node OOM-killed in a
 * 1 GiB container, and wastes a 64 GiB storage host.
 *
 * sizeCache() is pure (facts in, size and reason out) so it is tested
 * without a cgroup; readMemoryFacts() gathers the facts from this machine.
 */
import { readFileSync } from 'node:fs';
import { totalmem } from 'node:os';
import { formatSize } from './size.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

export interface MemoryFacts {
  /** os.totalmem(): the machine's (or VM's) memory. */
  totalBytes: number;
  /** This process's cgroup memory limit when one is set (the tightest of its ancestors). */
  cgroupLimitBytes?: number;
}

/**
 * How much of the available memory a cache takes, and its bounds.
 * storage node: a quarter — the rest is for the Node heaps of the main
 *   thread and the pool workers (about 100 MiB at rest, more under load),
 *   the page cache under the store's preads and writes, and whatever else
 *   the host runs; the ceiling because past a few GiB a bigger cache wins
 *   little and costs start-up time and a long CLOCK sweep.
 * client (torusblk nbdserve): a sixteenth, at most 256 MiB (its fixed
 *   default before): it runs beside the applications using the volume, whose
 *   own page cache holds their hot data already.
 * The floor: below 64 MiB (a thousand 64 KiB blocks) a cache thrashes under
 *   a single sequential reader; with less memory than that, nothing fits.
 */
export interface CacheSizing {
  fraction: number;
  floorBytes: number;
  ceilingBytes: number;
}

export const STORAGE_NODE_CACHE: CacheSizing = {
  fraction: 0.25,
  floorBytes: 64 * MiB,
  ceilingBytes: 4 * GiB,
};
export const CLIENT_CACHE: CacheSizing = {
  fraction: 1 / 16,
  floorBytes: 64 * MiB,
  ceilingBytes: 256 * MiB,
};

/** cgroup limits at or above this mean "no limit" (v1 writes 2^63 rounded down to a page). */
const UNLIMITED_BYTES = 2 ** 60;

export interface CacheSize {
  bytes: number;
  /** For the start-up log, e.g. "25 % of 4.0GiB cgroup limit". */
  reason: string;
}

/** The cache size for these facts: a whole number of MiB within the sizing's bounds. */
export function sizeCache(facts: MemoryFacts, sizing: CacheSizing): CacheSize {
  const limited = facts.cgroupLimitBytes !== undefined && facts.cgroupLimitBytes < facts.totalBytes;
  const available = limited ? facts.cgroupLimitBytes! : facts.totalBytes;
  const share = Math.floor((available * sizing.fraction) / MiB) * MiB;
  const percent = `${+(sizing.fraction * 100).toFixed(2)} %`;
  const of = `${formatSize(available)} ${limited ? 'cgroup limit' : 'memory'}`;
  if (share < sizing.floorBytes)
    return { bytes: sizing.floorBytes, reason: `floor (${percent} of ${of} is less)` };
  if (share > sizing.ceilingBytes)
    return { bytes: sizing.ceilingBytes, reason: `ceiling (${percent} of ${of} is more)` };
  return { bytes: share, reason: `${percent} of ${of}` };
}

/**
 * The memory limit of this process's cgroup, or undefined when there is none
 * (or it cannot be read: then the machine's memory is all we know).
 * v2: memory.max of the process's cgroup and each ancestor, the smallest.
 * v1: hierarchical_memory_limit in memory.stat, which already is that minimum.
 * `read` is injectable so the parsing is tested without a cgroup.
 */
export function cgroupMemoryLimit(
  read: (path: string) => string | undefined = readOrUndefined,
  mountRoot = '/sys/fs/cgroup',
): number | undefined {
  const membership = read('/proc/self/cgroup');
  if (membership === undefined) return undefined;
  const limits: number[] = [];
  for (const line of membership.split('\n')) {
    // hierarchy-id:controllers:path (the path may itself hold colons)
    const first = line.indexOf(':');
    const second = line.indexOf(':', first + 1);
    if (first < 0 || second < 0) continue;
    const id = line.slice(0, first);
    const controllers = line.slice(first + 1, second);
    const path = line.slice(second + 1);
    if (id === '0' && controllers === '') {
      const parts = path.split('/').filter(Boolean);
      for (let depth = parts.length; depth >= 0; depth--) {
        const dir = [mountRoot, ...parts.slice(0, depth)].join('/');
        const max = read(`${dir}/memory.max`);
        if (max !== undefined && /^\d+$/.test(max)) limits.push(Number(max));
      }
    } else if (controllers.split(',').includes('memory')) {
      const stat = read(`${mountRoot}/memory${path === '/' ? '' : path}/memory.stat`);
      const match = stat && /^hierarchical_memory_limit (\d+)$/m.exec(stat);
      if (match) limits.push(Number(match[1]));
    }
  }
  const limit = Math.min(...limits.filter((n) => n > 0 && n < UNLIMITED_BYTES));
  return Number.isFinite(limit) ? limit : undefined;
}

function readOrUndefined(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** This machine's memory and this process's cgroup limit. */
export function readMemoryFacts(): MemoryFacts {
  const cgroupLimitBytes = cgroupMemoryLimit();
  return cgroupLimitBytes === undefined
    ? { totalBytes: totalmem() }
    : { totalBytes: totalmem(), cgroupLimitBytes };
}

/** The default cache size here, for a storage node or a client. */
export function defaultCacheSize(sizing: CacheSizing): CacheSize {
  return sizeCache(readMemoryFacts(), sizing);
}

/**
 * The cache size a command uses: the flag's when given, else the default for
 * this machine. Either way logged at start-up with the reason, so an
 * operator sees why a node holds the memory it holds.
 */
export function cacheSizeOf(
  flagBytes: number | undefined,
  sizing: CacheSizing,
  log: { info(message: string): void },
): number {
  const size =
    flagBytes === undefined
      ? defaultCacheSize(sizing)
      : { bytes: flagBytes, reason: '--cache-size' };
  log.info(`cache ${formatSize(size.bytes)}: ${size.reason}`);
  return size.bytes;
}

/** torusd --direct-writes. */
export const DIRECT_WRITE_MODES = ['auto', 'on', 'off'] as const;
export type DirectWriteMode = (typeof DIRECT_WRITE_MODES)[number];

/**
 * Whether a storage node writes blocks around the page cache (O_DIRECT), and
 * why, for the start-up log. `auto`: when a cgroup limit below the machine's
 * memory holds the node. There the page cache is what the limit leaves past
 * the block cache and the heaps (a few hundred MiB), so it holds little the
 * block cache does not, and each write through it first reclaims a page of
 * it: in a 512 MiB limit, workers spent a quarter of their time in pwritev
 * and 1 MiB writes flushed every 32 went 680 → 830 MiB/s around it
 * (docs/benchmarks.md). Without a limit the page cache is a large second
 * cache under the block cache, which blocks written around it miss: 4 KiB
 * random reads of a 2 GiB volume through a 256 MiB cache fell from 60k to
 * 27k IOPS.
 */
export function directWritesWanted(
  mode: DirectWriteMode,
  facts: MemoryFacts,
): { on: boolean; reason: string } {
  if (mode !== 'auto') return { on: mode === 'on', reason: `--direct-writes ${mode}` };
  const limited = facts.cgroupLimitBytes !== undefined && facts.cgroupLimitBytes < facts.totalBytes;
  return limited
    ? { on: true, reason: `a ${formatSize(facts.cgroupLimitBytes!)} cgroup limit` }
    : { on: false, reason: 'no cgroup memory limit: the page cache is a second cache' };
}
