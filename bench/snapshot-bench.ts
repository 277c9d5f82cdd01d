/**
 * `npm run bench:snapshots`: what snapshots cost, on a single torusd.
 *
 *   1. Snapshot and clone create time on a big volume with data: a volume of
 *      --volume (default 100GiB) with --data (default 8GiB) written
 *      sequentially by fio; then 10 snapshots and 10 clones, each timed
 *      through the node's admin API (what torusctl calls, without the
 *      process start) — medians. Create is metadata only, so its time should
 *      not depend on the data.
 *   2. Write throughput with 10 snapshots vs none: fio 4k random writes on
 *      a fresh 1 GiB volume (fully written first), plain and with a flush
 *      every 16 writes, alternating between a volume with no snapshots and
 *      one with 10, --repeats times; medians and the ratio.
 *
 * Prints a table; writes nothing under the repository.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { adminCall } from '../src/node/admin-api.js';
import { parseSize } from '../src/common/size.js';

const BIN = resolve(import.meta.dirname, '../../bin');

const { values } = parseArgs({
  options: {
    volume: { type: 'string', default: '100GiB' },
    data: { type: 'string', default: '8GiB' },
    repeats: { type: 'string', default: '3' },
    runtime: { type: 'string', default: '10' },
  },
});
const volumeBytes = parseSize(values.volume!);
const dataBytes = parseSize(values.data!);
const repeats = Number(values.repeats);
const runtime = Number(values.runtime);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function fio(uri: string, args: string[]): { iops: number; bw: number } {
  const output = join(tmpdir(), `torus-snapbench-fio-${process.pid}.json`);
  const r = spawnSync(
    'fio',
    [
      '--name=job',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--output-format=json',
      `--output=${output}`,
      ...args,
    ],
    { encoding: 'utf8', maxBuffer: 64 << 20 },
  );
  if (r.status !== 0) throw new Error(`fio ${args.join(' ')}: ${r.stderr}`);
  const job = JSON.parse(readFileSync(output, 'utf8')).jobs[0];
  rmSync(output, { force: true });
  return { iops: job.write.iops, bw: job.write.bw_bytes };
}

/** A free TCP port on 127.0.0.1. */
function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => done(port));
    });
  });
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'torus-snapbench-'));
  const storeBytes = dataBytes + 4 * 2 ** 30;
  // torusd logs to a file: fio runs synchronously here, and a pipe nobody drains
  // meanwhile would block torusd's writes (pipes are synchronous on Linux).
  const logPath = join(dir, 'torusd.log');
  const log = openSync(logPath, 'w');
  const port = await freePort();
  const torusd = spawn(
    process.execPath,
    [
      join(BIN, 'torusd'),
      '-d',
      dir,
      '--size',
      String(storeBytes),
      '--nbd',
      `127.0.0.1:${port}`,
      '--cache-size',
      '512MiB',
    ],
    { stdio: ['ignore', log, log], env: { ...process.env, TORUS_LOG_FORMAT: 'json' } },
  );
  try {
    for (
      let waited = 0;
      !readFileSync(logPath, 'utf8').includes('torusd listening');
      waited += 100
    ) {
      if (torusd.exitCode !== null || waited > 30_000)
        throw new Error(`torusd did not start:\n${readFileSync(logPath, 'utf8')}`);
      await new Promise((done) => setTimeout(done, 100));
    }
    const socket = join(dir, 'torusd.sock');
    const call = (method: string, path: string, body?: unknown) =>
      adminCall(socket, method, path, body);
    const uri = (name: string) => `nbd://127.0.0.1:${port}/${name}`;

    // 1. create times on a big volume with data
    await call('POST', '/v1/volumes', { name: 'big', size: volumeBytes });
    const started = Date.now();
    fio(uri('big'), [
      '--rw=write',
      '--bs=1M',
      '--iodepth=16',
      `--size=${dataBytes}`,
      '--end_fsync=1',
    ]);
    const writeSeconds = (Date.now() - started) / 1000;
    const snapMs: number[] = [];
    const cloneMs: number[] = [];
    for (let i = 0; i < 10; i++) {
      let t = process.hrtime.bigint();
      await call('POST', '/v1/volumes/big/snapshots', { name: `s${i}` });
      snapMs.push(Number(process.hrtime.bigint() - t) / 1e6);
      t = process.hrtime.bigint();
      await call('POST', '/v1/clones', { source: `big@s${i}`, name: `c${i}` });
      cloneMs.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
    for (let i = 0; i < 10; i++) await call('DELETE', `/v1/volumes/c${i}`);
    await call('DELETE', '/v1/volumes/big?with-snapshots=1');

    // 2. write throughput, 10 snapshots vs none
    for (const name of ['none', 'ten']) {
      await call('POST', '/v1/volumes', { name, size: 2 ** 30 });
      fio(uri(name), ['--rw=write', '--bs=1M', '--iodepth=16', '--size=1G', '--end_fsync=1']);
    }
    for (let i = 0; i < 10; i++) await call('POST', '/v1/volumes/ten/snapshots', { name: `s${i}` });
    const jobs: [string, string[]][] = [
      ['4k randwrite qd32', ['--rw=randwrite', '--bs=4k', '--iodepth=32']],
      [
        '4k randwrite qd32, flush every 16',
        ['--rw=randwrite', '--bs=4k', '--iodepth=32', '--fsync=16'],
      ],
    ];
    const rows: string[] = [];
    for (const [label, args] of jobs) {
      const iops: Record<string, number[]> = { none: [], ten: [] };
      for (let r = 0; r < repeats; r++) {
        for (const name of r % 2 === 0 ? ['none', 'ten'] : ['ten', 'none']) {
          iops[name].push(
            fio(uri(name), [
              ...args,
              '--size=1G',
              '--time_based',
              `--runtime=${runtime}`,
              '--ramp_time=1',
            ]).iops,
          );
        }
      }
      const none = median(iops.none);
      const ten = median(iops.ten);
      rows.push(
        `| ${label} | ${none.toFixed(0)} | ${ten.toFixed(0)} | ${(ten / none).toFixed(2)}× |`,
      );
    }
    process.stdout.write(
      [
        `volume ${values.volume} with ${values.data} written (${writeSeconds.toFixed(1)} s)`,
        `snapshot create: median ${median(snapMs).toFixed(1)} ms (min ${Math.min(...snapMs).toFixed(1)}, max ${Math.max(...snapMs).toFixed(1)}) over 10`,
        `clone create:    median ${median(cloneMs).toFixed(1)} ms (min ${Math.min(...cloneMs).toFixed(1)}, max ${Math.max(...cloneMs).toFixed(1)}) over 10`,
        '',
        '| job (1 GiB volume) | IOPS, no snapshots | IOPS, 10 snapshots | ratio |',
        '|---|---|---|---|',
        ...rows,
        `(medians of ${repeats}, ${runtime} s each, alternating)`,
        '',
      ].join('\n'),
    );
  } catch (err) {
    const tail = readFileSync(logPath, 'utf8').slice(-4000);
    process.stderr.write(
      `torusd ${torusd.exitCode === null ? 'still runs' : `exited ${torusd.exitCode}`}; its log ends:\n${tail}\n`,
    );
    throw err;
  } finally {
    torusd.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
