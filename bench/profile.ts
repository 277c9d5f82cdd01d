/**
 * `npm run profile`: a CPU flame graph of torusd under load. torusd runs
 * under `clinic flame` (a devDependency), fio drives it through the nbd
 * engine, then SIGINT stops it so clinic writes its report, whose path is
 * printed last.
 *
 *   npm run profile -- [--runtime S] [--jobs A,B] [--region SIZE] [--dest DIR]
 *                      [--encrypt] [--block-size SIZE]
 *                      [--export NAME -- node SERVER.js ARGS...]
 *
 * After `--`, any node NBD server can be profiled instead of torusd; "{port}"
 * in its arguments becomes the port it must listen on (127.0.0.1).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { parseSize } from '../src/common/size.js';
import { cleanupAll, killQuietly, onCleanup, removeDirLater } from './cleanup.js';
import {
  JOBS,
  fioHasNbdEngine,
  fioTimeoutMs,
  jobBefore,
  prefillArgs,
  readFioResult,
  readsData,
  runFio,
  runJob,
} from './fio.js';
import { EXPORT_BYTES } from './options.js';
import { LOOPBACK, freePort, waitForListener } from './processes.js';
import { PROJECT, prepareTorus } from './servers.js';

const USAGE = `usage: npm run profile -- [flags] [--export NAME -- node SERVER.js ARGS...]

  --runtime SECONDS   per job (default 10)
  --jobs A,B          fio jobs (default randread-4k-qd32,randwrite-4k-qd32); any of
                      ${JOBS.map((j) => j.name).join(', ')}
  --region SIZE       part of the export the jobs touch, prefilled before reads (default 512MiB)
  --dest DIR          where clinic writes its data and report (default .clinic)
  --encrypt           create the torus volume encrypted
  --block-size SIZE   torus store block size
  --export NAME       export name of a server given after -- (default none)`;

// clinic turns its samples into a flame graph after the server stops, which takes a while on a big profile.
const REPORT_TIMEOUT_MS = 5 * 60_000;
// The profiled server starts slower than usual: clinic instruments node first.
const STARTUP_TIMEOUT_MS = 120_000;

function newestReport(dest: string): string | undefined {
  if (!existsSync(dest)) return undefined;
  const reports = readdirSync(dest)
    .filter((name) => name.endsWith('.html'))
    .map((name) => join(dest, name))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  return reports[0];
}

async function main(argv: string[]): Promise<number> {
  const dashes = argv.indexOf('--');
  const customServer = dashes >= 0 ? argv.slice(dashes + 1) : [];
  const { values: v } = parseArgs({
    args: dashes >= 0 ? argv.slice(0, dashes) : argv,
    strict: true,
    options: {
      runtime: { type: 'string', default: '10' },
      jobs: { type: 'string', default: 'randread-4k-qd32,randwrite-4k-qd32' },
      region: { type: 'string', default: '512MiB' },
      dest: { type: 'string', default: join(PROJECT, '.clinic') },
      encrypt: { type: 'boolean', default: false },
      'block-size': { type: 'string' },
      export: { type: 'string', default: '' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (v.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const runtimeSeconds = Number(v.runtime);
  const regionBytes = parseSize(v.region!);
  const jobs = v.jobs!.split(',').map((name) => {
    const job = JOBS.find((j) => j.name === name);
    if (!job) throw new Error(`--jobs: unknown job "${name}"`);
    return job;
  });
  if (!Number.isInteger(runtimeSeconds) || runtimeSeconds < 1)
    throw new Error(`--runtime: expected a positive integer, got "${v.runtime}"`);
  if (!fioHasNbdEngine()) {
    process.stderr.write('profile: fio with the nbd engine is needed: apt-get install fio\n');
    return 1;
  }

  const workDir = mkdtempSync(join(tmpdir(), 'torus-profile-'));
  removeDirLater(workDir);
  const dest = resolve(v.dest!);
  mkdirSync(dest, { recursive: true });
  const port = await freePort();
  const server =
    customServer.length > 0
      ? {
          argv: customServer.map((arg) => arg.replaceAll('{port}', String(port))),
          uri: `nbd://${LOOPBACK}:${port}/${v.export}`,
        }
      : prepareTorus(
          { workDir, exportBytes: EXPORT_BYTES, encrypt: v.encrypt!, blockSize: v['block-size'] },
          port,
        );

  const clinicArgs = ['clinic', 'flame', '--open=false', '--dest', dest, '--', ...server.argv];
  process.stderr.write(`profile: npx ${clinicArgs.join(' ')}\n`);
  // Its own process group: SIGINT must reach clinic and the profiled server together, as a terminal's Ctrl-C would.
  // NO_INSIGHT and NO_UPDATE_NOTIFIER: clinic would otherwise ask (and, without a terminal, silently exit) about
  // usage statistics and query the npm registry for updates; a profile run stays offline.
  const clinic = spawn('npx', clinicArgs, {
    cwd: PROJECT,
    stdio: ['ignore', 'inherit', 'inherit'],
    detached: true,
    env: { ...process.env, NO_INSIGHT: '1', NO_UPDATE_NOTIFIER: '1' },
  });
  const forget = onCleanup(() => killQuietly(-clinic.pid!, 'SIGKILL'));
  let exitCode: number | string | undefined;
  const exited = new Promise<void>((done) =>
    clinic.once('exit', (code, signal) => {
      exitCode = code ?? signal ?? undefined;
      done();
    }),
  );

  await waitForListener(port, 'the profiled server', STARTUP_TIMEOUT_MS, () =>
    exitCode === undefined ? undefined : `clinic exited with ${exitCode}`,
  );
  process.stderr.write(`profile: serving ${server.uri}\n`);
  if (jobs.some(readsData)) {
    await runFio(
      prefillArgs({ uri: server.uri, regionBytes, outputFile: join(workDir, 'prefill.json') }),
      fioTimeoutMs({ runtimeSeconds: 600, rampSeconds: 0 }),
    );
  }
  for (const job of jobs) {
    const settings = {
      uri: server.uri,
      regionBytes,
      runtimeSeconds,
      rampSeconds: 0,
      outputFile: join(workDir, `${job.name}.json`),
    };
    const before = jobBefore(job);
    if (before) await runJob(before, { ...settings, outputFile: `${settings.outputFile}.before` });
    await runJob(job, settings);
    const r = readFioResult(settings.outputFile);
    process.stderr.write(
      `profile: ${job.name}: ${r.iops.toFixed(0)} IOPS, ${r.mibPerSecond.toFixed(1)} MiB/s, p99 ${r.p99Micros.toFixed(0)} us (under the profiler)\n`,
    );
  }

  process.stderr.write('profile: stopping the server (SIGINT); clinic is writing its report\n');
  killQuietly(-clinic.pid!, 'SIGINT');
  const finished = await new Promise<boolean>((done) => {
    const timer = setTimeout(() => done(false), REPORT_TIMEOUT_MS);
    void exited.then(() => {
      clearTimeout(timer);
      done(true);
    });
  });
  if (!finished) {
    process.stderr.write(
      `profile: clinic did not finish within ${REPORT_TIMEOUT_MS / 60_000} minutes\n`,
    );
    return 1;
  }
  forget();
  const report = newestReport(dest);
  if (!report) {
    process.stderr.write(`profile: clinic exited (${exitCode}) without a report in ${dest}\n`);
    return 1;
  }
  process.stdout.write(`profile: flame graph report: ${report}\n`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    cleanupAll();
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`profile: ${err instanceof Error ? err.message : String(err)}\n`);
    cleanupAll();
    process.exitCode = 1;
  },
);
