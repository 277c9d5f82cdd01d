/**
 * Memory cgroups for same-memory benchmarks: every server runs in a cgroup of
 * its own with the same limit, and the kernel charges a cgroup for its page
 * cache as well as its heap, so nbd-server cannot lean on a 24 GiB machine's
 * page cache while torus is held to its --cache-size.
 *
 * cgroup v2 (memory.max in the unified hierarchy) when the memory controller
 * is there, else v1 (memory.limit_in_bytes under the memory controller's
 * mount). The bench's cgroups live in one parent, torus-bench-PID, at the
 * top of the hierarchy (needs root); each is removed when the bench ends,
 * however it ends (cleanup.ts).
 */
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { onCleanup } from './cleanup.js';

export type CgroupVersion = 'v1' | 'v2';

export interface MemoryController {
  version: CgroupVersion;
  /** Where the hierarchy holding the memory controller is mounted. */
  root: string;
}

/** Typed so the bench can tell "this machine can't" apart from a bug. */
export class MemoryCgroupError extends Error {}

/**
 * Where the memory controller is: v2 when the unified hierarchy offers it
 * (mounted at /sys/fs/cgroup, or at /sys/fs/cgroup/unified beside v1), else v1.
 */
export function findMemoryController(cgroupRoot = '/sys/fs/cgroup'): MemoryController | undefined {
  for (const root of [cgroupRoot, join(cgroupRoot, 'unified')]) {
    const controllers = readOr(join(root, 'cgroup.controllers'));
    if (controllers !== undefined && controllers.split(/\s+/).includes('memory'))
      return { version: 'v2', root };
  }
  const v1 = join(cgroupRoot, 'memory');
  if (existsSync(join(v1, 'memory.limit_in_bytes'))) return { version: 'v1', root: v1 };
  return undefined;
}

function readOr(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return undefined;
  }
}

export interface MemoryCgroup {
  /** Directory of the cgroup. */
  path: string;
  limitBytes: number;
  /** Write a pid here to move that process (and the children it forks later) in. */
  procsFile: string;
  /**
   * argv that starts `argv` inside the cgroup: a shell moves itself in, then
   * execs the server, so the server's first allocation and first I/O are
   * already charged to the cgroup.
   */
  wrap(argv: string[]): string[];
  /** The same as one shell command line, for servers started from a script. */
  wrapShell(command: string): string;
  /** Most memory (page cache included) the cgroup has held, in bytes; undefined if unknown. */
  peakBytes(): number | undefined;
  /** Times the limit was hit (v1 failcnt, v2 memory.events "max"); undefined if unknown. */
  limitHits(): number | undefined;
  /** Remove the cgroup (its processes must be gone); done at exit in any case. */
  remove(): void;
}

let parent: string | undefined;

/**
 * A memory cgroup `name` with the limit, under this bench's parent. Swap is
 * limited too where the kernel lets us (v2 memory.swap.max = 0, v1
 * memsw = the limit), so a machine with swap cannot stretch the budget.
 */
export function createMemoryCgroup(
  controller: MemoryController,
  name: string,
  limitBytes: number,
): MemoryCgroup {
  if (parent === undefined) {
    const dir = join(controller.root, `torus-bench-${process.pid}`);
    try {
      mkdirSync(dir);
    } catch (err) {
      throw new MemoryCgroupError(
        `cannot create the memory cgroup ${dir} (${(err as Error).message}): --memory-budget needs root and a writable cgroup ${controller.version} memory controller`,
      );
    }
    if (controller.version === 'v2')
      // Children may use the memory controller only once their parent delegates it.
      writeFileSync(join(dir, 'cgroup.subtree_control'), '+memory');
    parent = dir;
    onCleanup(() => {
      removeDir(dir);
      parent = undefined;
    });
  }
  const path = join(parent, name);
  mkdirSync(path);
  const forget = onCleanup(() => removeDir(path));
  const file = (v1: string, v2: string) => join(path, controller.version === 'v1' ? v1 : v2);
  writeFileSync(file('memory.limit_in_bytes', 'memory.max'), String(limitBytes));
  if (controller.version === 'v2' && existsSync(join(path, 'memory.swap.max')))
    writeFileSync(join(path, 'memory.swap.max'), '0');
  if (controller.version === 'v1' && existsSync(join(path, 'memory.memsw.limit_in_bytes')))
    writeFileSync(join(path, 'memory.memsw.limit_in_bytes'), String(limitBytes));
  const procsFile = join(path, 'cgroup.procs');
  const number = (text: string | undefined) =>
    text === undefined || !/^\d+$/.test(text) ? undefined : Number(text);
  return {
    path,
    limitBytes,
    procsFile,
    wrap: (argv) => ['sh', '-c', 'echo $$ > "$0" && exec "$@"', procsFile, ...argv],
    wrapShell: (command) => `sh -c 'echo $$ > ${procsFile} && exec "$@"' sh ${command}`,
    peakBytes: () =>
      number(readOr(file('memory.max_usage_in_bytes', 'memory.peak'))) ??
      // memory.peak is recent (Linux 5.19); the current use is a lower bound.
      number(readOr(file('memory.usage_in_bytes', 'memory.current'))),
    limitHits: () =>
      controller.version === 'v1'
        ? number(readOr(join(path, 'memory.failcnt')))
        : number(/^max (\d+)$/m.exec(readOr(join(path, 'memory.events')) ?? '')?.[1]),
    remove: forget,
  };
}

/**
 * rmdir, retried for a moment: a process killed just before may not have
 * left the cgroup yet. Synchronous because cleanup also runs at exit.
 */
function removeDir(dir: string): void {
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (let attempt = 0; ; attempt++) {
    try {
      rmdirSync(dir);
      return;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (attempt >= 50) throw new MemoryCgroupError(`could not remove cgroup ${dir}: ${code}`);
      Atomics.wait(pause, 0, 0, 100);
    }
  }
}
