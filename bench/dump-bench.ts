/**
 * `npm run bench:dump`: `torusctl block dump` and `block load` against
 * `nbdcopy` of the same volume, through the same torusd and the same unix
 * socket, in one run.
 *
 * Two volumes of --size (default 1 GiB): one half written (random data in
 * 1 MiB runs every other MiB, the rest holes), one fully written. Whole
 * commands are timed, so a small size weighs process start (~0.3 s for
 * torusctl, ~0.01 s for nbdcopy) heavily; a few GiB show the copy itself. For each, --repeats
 * rounds alternate the order of:
 *   - nbdcopy VOLUME FILE                  (a copy, no checksum)
 *   - nbdcopy VOLUME FILE && sha256sum FILE (what a user does to get one)
 *   - torusctl block dump VOLUME FILE      (a copy and its sha256)
 *   - torusctl block dump --no-checksum    (a copy only, as nbdcopy)
 *   - nbdcopy FILE VOLUME / torusctl block load FILE VOLUME (into a fresh volume)
 * each timed as a whole command, process start included. Prints medians
 * and ratios (nbdcopy's time / ours: above 1 is faster than nbdcopy).
 *
 * Before each timed command the bench waits for torusd to go quiet: deleting
 * the volume a load filled frees its blocks in the background, seconds of
 * torusd CPU that otherwise land on whichever command runs next. The load
 * average at start and end is printed with the table.
 *
 * Writes nothing under the repository; its files go in the temp dir.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, openSync, readFileSync, rmSync, writeSync, closeSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { formatSize, parseSize } from '../src/common/size.js';
import { freePort } from './processes.js';

const BIN = resolve(import.meta.dirname, '../../bin');
const GiB = 2 ** 30;
const MiB = 2 ** 20;

const { values } = parseArgs({
  options: {
    repeats: { type: 'string', default: '5' },
    size: { type: 'string', default: '1GiB' },
  },
});
const repeats = Number(values.repeats);
const size = parseSize(values.size!);
const sizeText = formatSize(size);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Run a command line (through sh), its wall time in seconds; throws on failure. */
function timed(command: string): number {
  const started = process.hrtime.bigint();
  const r = spawnSync('sh', ['-c', command], { encoding: 'utf8', maxBuffer: 16 << 20 });
  if (r.status !== 0) throw new Error(`${command}: exit ${r.status}\n${r.stderr}`);
  return Number(process.hrtime.bigint() - started) / 1e9;
}

/** CPU seconds `pid` has used (user + system), from /proc; undefined where there is no /proc. */
function cpuSeconds(pid: number): number | undefined {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after "pid (comm) ".
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return undefined;
  }
}

/** Wait (at most 30 s) until `pid` used under 5 % of a core over half a second. */
async function settle(pid: number): Promise<void> {
  for (let waited = 0; waited < 30_000; waited += 500) {
    const before = cpuSeconds(pid);
    await new Promise((done) => setTimeout(done, 500));
    const after = cpuSeconds(pid);
    if (before === undefined || after === undefined || after - before < 0.025) return;
  }
}

/** A file of `bytes`: random 1 MiB runs, every other one a hole when `half`. */
function makeImage(path: string, bytes: number, half: boolean): void {
  const fd = openSync(path, 'w');
  try {
    for (let at = 0; at < bytes; at += MiB)
      if (!half || (at / MiB) % 2 === 0) writeSync(fd, randomBytes(MiB), 0, MiB, at);
  } finally {
    closeSync(fd);
  }
  spawnSync('truncate', ['-s', String(bytes), path]);
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'torus-dumpbench-'));
  const data = join(dir, 'data');
  const logPath = join(dir, 'torusd.log');
  const log = openSync(logPath, 'w');
  const port = await freePort();
  const torusd = spawn(
    process.execPath,
    [
      join(BIN, 'torusd'),
      '-d',
      data,
      '--size',
      String(3 * size + GiB),
      '--nbd',
      `127.0.0.1:${port}`,
    ],
    { stdio: ['ignore', log, log] },
  );
  const ctl = `${process.execPath} ${join(BIN, 'torusctl')} -d ${data}`;
  try {
    for (let waited = 0; !readFileSync(logPath, 'utf8').includes('torusd listening');) {
      if (torusd.exitCode !== null || (waited += 100) > 30_000)
        throw new Error(`torusd did not start:\n${readFileSync(logPath, 'utf8')}`);
      await new Promise((done) => setTimeout(done, 100));
    }
    const socket = join(data, 'nbd.sock');
    const uri = (volume: string) => `'nbd+unix:///${volume}?socket=${socket}'`;
    const rows: string[] = [];
    const loadAtStart = loadavg()[0];
    for (const [label, half] of [
      [`${sizeText}, half written`, true],
      [`${sizeText}, fully written`, false],
    ] as const) {
      const image = join(dir, 'image');
      makeImage(image, size, half);
      const source = half ? 'half' : 'full';
      timed(`${ctl} volume create ${source} ${size}`);
      timed(`nbdcopy --flush ${image} ${uri(source)}`);
      const times: Record<string, number[]> = {
        copy: [],
        copySum: [],
        dump: [],
        dumpNoSum: [],
        nload: [],
        load: [],
        loadNoSum: [],
      };
      const out = join(dir, 'out');
      const steps: [string, () => number][] = [
        ['copy', () => timed(`rm -f ${out}; nbdcopy ${uri(source)} ${out}`)],
        [
          'copySum',
          () => timed(`rm -f ${out}; nbdcopy ${uri(source)} ${out} && sha256sum ${out} >/dev/null`),
        ],
        ['dump', () => timed(`rm -f ${out}; ${ctl} block dump ${source} ${out} >/dev/null`)],
        [
          'dumpNoSum',
          () => timed(`rm -f ${out}; ${ctl} block dump --no-checksum ${source} ${out} >/dev/null`),
        ],
        [
          'nload',
          () => {
            timed(`${ctl} volume create into ${size}`);
            const t = timed(`nbdcopy --flush ${image} ${uri('into')}`);
            timed(`${ctl} volume delete into`);
            return t;
          },
        ],
        [
          'load',
          () => {
            const t = timed(`${ctl} block load ${image} into ${size} >/dev/null`);
            timed(`${ctl} volume delete into`);
            return t;
          },
        ],
        [
          'loadNoSum',
          () => {
            const t = timed(`${ctl} block load --no-checksum ${image} into ${size} >/dev/null`);
            timed(`${ctl} volume delete into`);
            return t;
          },
        ],
      ];
      for (let r = 0; r < repeats; r++)
        for (const [name, step] of r % 2 === 0 ? steps : [...steps].reverse()) {
          await settle(torusd.pid!);
          times[name].push(step());
        }
      const m = Object.fromEntries(Object.entries(times).map(([k, v]) => [k, median(v)]));
      const x = (a: number, b: number) => `${(a / b).toFixed(2)}×`;
      rows.push(
        `| ${label} | dump | ${m.copy.toFixed(2)} s | ${m.copySum.toFixed(2)} s | ${m.dump.toFixed(2)} s | **${x(m.copy, m.dump)}** | ${x(m.copySum, m.dump)} | ${m.dumpNoSum.toFixed(2)} s | **${x(m.copy, m.dumpNoSum)}** |`,
        `| ${label} | load | ${m.nload.toFixed(2)} s | - | ${m.load.toFixed(2)} s | **${x(m.nload, m.load)}** | - | ${m.loadNoSum.toFixed(2)} s | **${x(m.nload, m.loadNoSum)}** |`,
      );
      timed(`${ctl} volume delete ${source}`);
      rmSync(image, { force: true });
      rmSync(out, { force: true });
    }
    process.stdout.write(
      [
        '| volume | way | nbdcopy | nbdcopy + sha256sum | torusctl (with its sha256) | vs nbdcopy | vs nbdcopy + sha256sum | torusctl --no-checksum | vs nbdcopy |',
        '|---|---|---|---|---|---|---|---|---|',
        ...rows,
        `(medians of ${repeats}, whole commands, alternating order; one torusd, its unix socket; load average ${loadAtStart.toFixed(1)} at start, ${loadavg()[0].toFixed(1)} at end)`,
        '',
      ].join('\n'),
    );
  } finally {
    torusd.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
