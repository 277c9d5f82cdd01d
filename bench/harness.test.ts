/**
 * The bench and profile scripts end to end, against the peer servers only
 * (torusd is exercised by its own tests): they produce figures, and leave no
 * process or temp dir behind, whether they finish or are interrupted.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { findMemoryController } from './memory-cgroup.js';
import { libnbdPython } from './flush-cadence.js';
import { freePort, waitForListener } from './processes.js';

const PROJECT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const DIST_BENCH = join(PROJECT, 'dist', 'bench');

const PACKAGES: Record<string, string> = {
  fio: 'fio',
  'nbd-server': 'nbd-server',
  nbdkit: 'nbdkit',
  fallocate: 'util-linux',
};
const have = (tool: string) =>
  spawnSync('sh', ['-c', 'command -v "$1"', 'sh', tool], { stdio: 'ignore' }).status === 0;
const absent = Object.keys(PACKAGES).filter((t) => !have(t));
const skipReason =
  absent.length > 0
    ? `needs ${absent.join(', ')}: apt-get install ${absent.map((t) => PACKAGES[t]).join(' ')}`
    : false;

const sameMemoryController = findMemoryController();
const sameMemorySkip =
  process.getuid?.() !== 0
    ? 'needs root to create memory cgroups'
    : !sameMemoryController
      ? 'no cgroup memory controller under /sys/fs/cgroup'
      : false;

interface Finished {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/** Start a script; `finished` resolves at exit, `stderrSoFar` shows progress meanwhile. */
function start(script: string, args: string[]) {
  const child = spawn(process.execPath, [join(DIST_BENCH, script), ...args], {
    cwd: PROJECT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const finished = new Promise<Finished>((done) =>
    child.once('exit', (code, signal) => done({ code, signal, stdout, stderr })),
  );
  return { child, finished, stderrSoFar: () => stderr };
}

/** Live (non-zombie) processes whose command line mentions the text. */
function processesMentioning(text: string): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
      if (cmdline.includes(text)) found.push(`${pid}: ${cmdline}`);
    } catch {
      // exited while we looked
    }
  }
  return found;
}

function tempDirOf(stderr: string): string {
  const match = /temp (\/\S+)/.exec(stderr);
  assert.ok(match, `no temp dir announced in:\n${stderr}`);
  return match[1];
}

describe(
  'bench harness against nbd-server and nbdkit',
  { skip: skipReason, timeout: 240_000 },
  () => {
    const scratch = mkdtempSync(join(tmpdir(), 'torus-bench-test-'));
    after(() => rmSync(scratch, { recursive: true, force: true }));

    test('measures both servers, reports medians, saves JSON, cleans up', async () => {
      const jsonFile = join(scratch, 'results.json');
      const run = start('run.js', [
        '--servers',
        'nbd-server,nbdkit',
        '--jobs',
        'randread-4k-qd32,randwrite-4k-qd32',
        '--runtime',
        '1',
        '--ramp',
        '0',
        '--repeats',
        '1',
        '--region',
        '16MiB',
        '--json',
        jsonFile,
      ]);
      const r = await run.finished;
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /randread-4k-qd32\s+nbd-server\s+\d+/);
      assert.match(r.stdout, /\s+nbdkit\s+\d+/);
      assert.match(r.stdout, /peak RSS .*nbd-server [\d.]+ MiB, nbdkit [\d.]+ MiB/);
      const saved = JSON.parse(readFileSync(jsonFile, 'utf8'));
      assert.equal(saved.runs.length, 4);
      for (const run of saved.runs)
        assert.ok(run.result.iops > 0 && run.result.serverCpuPercent > 0, JSON.stringify(run));
      const temp = tempDirOf(r.stderr);
      assert.ok(!existsSync(temp), `${temp} left behind`);
      assert.deepEqual(processesMentioning(temp), []);
    });

    test(
      'the flush-cadence job sends a FLUSH after exactly every 32 writes',
      { skip: !libnbdPython() && 'python3 cannot import nbd: apt-get install python3-libnbd' },
      async () => {
        const jsonFile = join(scratch, 'cadence.json');
        const run = start('run.js', [
          '--servers',
          'nbd-server',
          '--jobs',
          'seqwrite-1m-qd8-flush32',
          '--runtime',
          '2',
          '--ramp',
          '0',
          '--repeats',
          '1',
          '--region',
          '16MiB',
          '--json',
          jsonFile,
        ]);
        const r = await run.finished;
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, /seqwrite-1m-qd8-flush32\s+nbd-server\s+\d+/);
        const [{ result }] = JSON.parse(readFileSync(jsonFile, 'utf8')).runs;
        const writes = result.writeIops * 2;
        assert.ok(writes >= 64, `${writes} writes in 2 s`);
        // Writes and FLUSHes count when sent and answered within the 2 s: the edges may differ by one each.
        assert.ok(Math.abs(result.flushCount - writes / 32) <= 2, JSON.stringify(result));
        assert.ok(result.flushP50Micros > 0 && result.flushP99Micros >= result.flushP50Micros);
      },
    );

    test('Ctrl-C mid-run stops every server and fio and removes the temp dir', async () => {
      const run = start('run.js', [
        '--servers',
        'nbd-server,nbdkit',
        '--jobs',
        'randread-4k-qd32',
        '--runtime',
        '60',
        '--ramp',
        '0',
        '--region',
        '16MiB',
      ]);
      const deadline = Date.now() + 60_000;
      while (!/prefilling 16 MiB of nbdkit/.test(run.stderrSoFar())) {
        assert.ok(Date.now() < deadline, `never reached the runs:\n${run.stderrSoFar()}`);
        await sleep(100);
      }
      await sleep(1500);
      run.child.kill('SIGINT');
      const r = await run.finished;
      assert.equal(r.code, 130, r.stderr);
      const temp = tempDirOf(r.stderr);
      // Signalled children may take a moment to go on a loaded machine: gone within 10 s is the promise.
      for (let waited = 0; waited < 10_000 && processesMentioning(temp).length > 0; waited += 250)
        await sleep(250);
      assert.ok(!existsSync(temp), `${temp} left behind`);
      assert.deepEqual(processesMentioning(temp), []);
    });

    test(
      'same-memory mode: each server in its own memory cgroup, FLUSH figures, cgroups removed at the end',
      { skip: sameMemorySkip },
      async () => {
        const run = start('run.js', [
          '--servers',
          'nbd-server,nbdkit-file',
          '--memory-budget',
          '64MiB',
          '--jobs',
          'randwrite-4k-qd1-fsync1',
          '--runtime',
          '1',
          '--ramp',
          '0',
          '--repeats',
          '1',
          '--region',
          '128MiB',
          '--settle',
          '0',
        ]);
        const r = await run.finished;
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, /same memory: every server .* 64 MiB memory cgroup/);
        assert.match(r.stdout, /flush p50 us +flush p99 us/);
        assert.match(r.stdout, /randwrite-4k-qd1-fsync1 +nbd-server +\d+ .* \d+ +\d+ /);
        assert.match(r.stdout, /memory cgroups .*nbd-server \d+\/64 MiB.*nbdkit-file \d+\/64 MiB/);
        const parent = `torus-bench-${run.child.pid}`;
        assert.ok(
          !readdirSync(sameMemoryController!.root).includes(parent),
          `cgroup ${parent} left behind in ${sameMemoryController!.root}`,
        );
        const temp = tempDirOf(r.stderr);
        assert.ok(!existsSync(temp), `${temp} left behind`);
      },
    );

    test('a missing option value or unknown job fails fast with usage', async () => {
      const r = await start('run.js', ['--jobs', 'nope']).finished;
      assert.equal(r.code, 2);
      assert.match(r.stderr, /--jobs: unknown "nope"/);
    });
  },
);

const clinicInstalled = existsSync(join(PROJECT, 'node_modules', '.bin', 'clinic'));

describe(
  'profile script',
  { skip: skipReason || (!clinicInstalled && 'clinic is not installed: npm ci'), timeout: 240_000 },
  () => {
    test('profiles a node server under fio load and prints the flame graph path', async () => {
      const dest = mkdtempSync(join(tmpdir(), 'torus-profile-test-'));
      const nbdkitPort = await freePort();
      // The stand-in server relays to nbdkit; --exit-with-parent ties nbdkit's life to this test process.
      const nbdkit = spawn(
        'nbdkit',
        [
          '--foreground',
          '--exit-with-parent',
          '--ipaddr',
          '127.0.0.1',
          '--port',
          String(nbdkitPort),
          'memory',
          'size=64M',
        ],
        { stdio: 'ignore' },
      );
      try {
        await waitForListener(nbdkitPort, 'nbdkit', 30_000);
        const run = start('profile.js', [
          '--runtime',
          '1',
          '--jobs',
          'randwrite-4k-qd32',
          '--region',
          '16MiB',
          '--dest',
          dest,
          '--',
          process.execPath,
          join(DIST_BENCH, 'testing', 'tcp-proxy.js'),
          '{port}',
          String(nbdkitPort),
        ]);
        const r = await run.finished;
        assert.equal(r.code, 0, r.stdout + r.stderr);
        const match = /flame graph report: (\S+\.html)/.exec(r.stdout);
        assert.ok(match, r.stdout);
        assert.ok(existsSync(match[1]));
        assert.deepEqual(processesMentioning('tcp-proxy.js'), []);
      } finally {
        nbdkit.kill('SIGKILL');
        rmSync(dest, { recursive: true, force: true });
      }
    });
  },
);
