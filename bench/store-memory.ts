/**
 * `npm run bench:store-memory -- [--capacity 60GiB] [--data 1GiB]
 * [--block-size 64KiB] [--cache-size 64MiB]`: what a torusd's memory costs
 * per unit of store capacity and per stored block, at rest.
 *
 * One torusd over a fresh store of --capacity (the data file is
 * preallocated: it needs that much disk), its anonymous memory (RssAnon)
 * read once it is idle. Then fio writes --data sequentially through NBD
 * (1 MiB writes, a flush at the end), torusd is restarted over the same
 * store, and its memory is read again once idle: the difference over the
 * blocks stored is the memory a stored block costs a node that has just
 * started (its index, its record), without the traffic's share. Run it with
 * two capacities to see what capacity alone costs.
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { formatSize, parseSize } from '../src/common/size.js';
import { cleanupAll, removeDirLater } from './cleanup.js';
import { runFio } from './fio.js';
import { freePort } from './processes.js';
import { launch } from './server-launch.js';
import { prepareTorus, type BenchServer } from './servers.js';

const MiB = 2 ** 20;

function anonBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/^RssAnon:\s+(\d+) kB/m.exec(status)?.[1] ?? 0) * 1024;
}

/** RssAnon once it holds still (two reads a second apart within 1 MiB), at most 30 s after start-up. */
async function idleAnonBytes(server: BenchServer): Promise<number> {
  let last = anonBytes(server.pid);
  for (let waited = 0; waited < 30_000; waited += 1000) {
    await new Promise((done) => setTimeout(done, 1000));
    const now = anonBytes(server.pid);
    if (Math.abs(now - last) < MiB) return now;
    last = now;
  }
  return last;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      capacity: { type: 'string', default: '60GiB' },
      data: { type: 'string', default: '1GiB' },
      'block-size': { type: 'string', default: '64KiB' },
      'cache-size': { type: 'string', default: '64MiB' },
    },
  });
  const capacity = parseSize(values.capacity!);
  const data = parseSize(values.data!);
  const blockSize = parseSize(values['block-size']!);
  const workDir = mkdtempSync(join(tmpdir(), 'torus-store-memory-'));
  removeDirLater(workDir);
  const port = await freePort();
  const { argv, uri } = prepareTorus(
    { workDir, exportBytes: data, encrypt: false, blockSize: values['block-size'] },
    port,
  );
  argv[argv.indexOf('--size') + 1] = String(capacity);
  argv.push('--cache-size', String(parseSize(values['cache-size']!)));

  let server = await launch('torus', argv, port, uri, workDir);
  const empty = await idleAnonBytes(server);
  process.stderr.write(`store-memory: writing ${formatSize(data)}\n`);
  await runFio(
    [
      '--name=fill',
      '--ioengine=nbd',
      `--uri=${uri}`,
      `--size=${data}`,
      '--rw=write',
      '--bs=1m',
      '--iodepth=8',
      '--end_fsync=1',
      '--output-format=json',
      `--output=${join(workDir, 'fill.json')}`,
    ],
    30 * 60_000,
  );
  await server.stop();
  server = await launch('torus', argv, port, uri, workDir);
  const stored = await idleAnonBytes(server);
  await server.stop();

  const blocks = Math.ceil(data / blockSize);
  const m = (bytes: number) => `${(bytes / MiB).toFixed(0)} MiB`;
  process.stdout.write(
    [
      `torusd over a ${formatSize(capacity)} store of ${formatSize(blockSize)} blocks, --cache-size ${values['cache-size']}, idle (RssAnon):`,
      `  empty: ${m(empty)}`,
      `  restarted over ${formatSize(data)} stored (${blocks} blocks): ${m(stored)}, ${((stored - empty) / blocks).toFixed(0)} bytes a stored block`,
    ].join('\n') + '\n',
  );
}

main().then(
  () => cleanupAll(),
  (err) => {
    process.stderr.write(
      `store-memory: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    cleanupAll();
    process.exitCode = 1;
  },
);
