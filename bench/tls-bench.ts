/**
 * NBD over TLS against clear text on the same torusd (`--tls on`, so both
 * are served at once): fio's nbd engine with nbd:// and nbds:// URIs, four
 * jobs (sequential 1 MiB read and write at queue depth 8, 4 KiB random read
 * and write at 32, as in bench/fio.ts), median of `--runs` runs each; and
 * the same against nbdkit's memory plugin with the same certificates, for
 * what TLS costs a C server on the same machine. Not a test.
 *
 *   npm run bench:tls -- [--seconds 5] [--runs 3] [--region 512MiB]
 *
 * Beside each throughput, each server's CPU time (all its threads) per GiB
 * moved (1 MiB jobs) or per 1000 requests (4 KiB jobs), and fio's: on 2
 * shared cores throughput follows the CPU a job can get, while CPU per unit
 * of work is what a server's code decides. After the table, the machine's
 * own TLS ceiling (tls-ceiling.ts): AES-GCM in openssl speed, and a bare
 * Node stream of 1 MiB writes over TLS and clear TCP.
 *
 * The PKI is made with openssl in a temp dir (test/tls-pki.ts). fio's engine
 * refuses ?tls-certificates= in a URI, so libnbd finds the CA in
 * $HOME/.pki/libnbd — which it ignores for root, so as root fio runs as
 * nobody (setpriv), for both schemes alike.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { chmod, cp, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSize } from '../src/common/size.js';
import { makeTestPki } from '../test/tls-pki.js';
import { makeDataDir, removeDir, startTorusd } from '../test/torusd-process.js';
import { runOk } from '../test/tools.js';
import { CLOCK_TICKS_PER_SECOND, freePort, treeCpuTicks, waitForListener } from './processes.js';
import { aesGcmMegabytesPerSecond, nodeStreamMibPerSecond } from './tls-ceiling.js';
import { JOBS, fioArgs, parseFioJson, prefillArgs, type JobSpec } from './fio.js';

const JOB_NAMES = ['seqread-1m-qd8', 'seqwrite-1m-qd8', 'randread-4k-qd32', 'randwrite-4k-qd32'];

function flag(argv: string[], name: string, fallback: string): string {
  const at = argv.indexOf(`--${name}`);
  return at >= 0 && argv[at + 1] ? argv[at + 1] : fallback;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const seconds = Number(flag(argv, 'seconds', '5'));
  const runs = Number(flag(argv, 'runs', '3'));
  const regionBytes = parseSize(flag(argv, 'region', '512MiB'));
  const work = await mkdtemp(join(tmpdir(), 'torus-tls-bench-'));
  const dataDir = await makeDataDir('tls-bench');
  let node;
  let nbdkit: ChildProcess | undefined;
  try {
    const pki = await makeTestPki(work);
    const home = join(work, 'home');
    await mkdir(join(home, '.pki'), { recursive: true });
    await cp(pki.client, join(home, '.pki', 'libnbd'), { recursive: true });
    await chmod(work, 0o755);
    await runOk('chmod', ['-R', 'a+rwX', work]);
    node = await startTorusd({
      dataDir,
      size: '2GiB',
      args: [
        '--ensure-volume',
        `bench=${regionBytes}`,
        '--cache-size',
        '1GiB',
        '--tls',
        'on',
        '--tls-certificates',
        pki.server,
      ],
    });
    const asUser =
      process.getuid?.() === 0
        ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']
        : [];
    const fio = async (args: string[]) => {
      const [cmd, ...rest] = [...asUser, 'env', `HOME=${home}`, 'fio', ...args];
      await runOk(cmd, rest, { timeoutMs: (seconds + 60) * 1000 });
    };
    // nbdkit's memory plugin with the same certificates: what TLS costs a C
    // server on this machine, the yardstick for Torus's ratio.
    const nbdkitPort = await freePort();
    nbdkit = spawn(
      'nbdkit',
      [
        '-f',
        '--exit-with-parent',
        '-i',
        '127.0.0.1',
        '-p',
        String(nbdkitPort),
        '--tls=on',
        `--tls-certificates=${pki.server}`,
        'memory',
        String(regionBytes),
      ],
      { stdio: 'ignore' },
    );
    await waitForListener(nbdkitPort, 'nbdkit', 20_000);
    const servers = {
      torus: (scheme: string) => `${scheme}://127.0.0.1:${node!.port}/bench`,
      nbdkit: (scheme: string) => `${scheme}://127.0.0.1:${nbdkitPort}/`,
    };
    const pids: Record<string, number> = { torus: node.pid, nbdkit: nbdkit.pid! };
    const out = join(work, 'fio.json');
    for (const uri of Object.values(servers))
      await fio(prefillArgs({ uri: uri('nbd'), regionBytes, outputFile: out }));
    const jobs = JOB_NAMES.map((n) => JOBS.find((j) => j.name === n)!);
    const rows: string[] = [];
    for (const job of jobs) {
      const result: Record<string, Sample[]> = {};
      for (let i = 0; i < runs; i++)
        for (const [server, uri] of Object.entries(servers))
          for (const scheme of ['nbd', 'nbds']) {
            const ticksBefore = treeCpuTicks(pids[server]);
            await fio(
              fioArgs(job, {
                uri: uri(scheme),
                regionBytes,
                runtimeSeconds: seconds,
                rampSeconds: 1,
                outputFile: out,
              }),
            );
            const serverCpuSeconds =
              (treeCpuTicks(pids[server]) - ticksBefore) / CLOCK_TICKS_PER_SECOND;
            const json = readFileSync(out, 'utf8');
            const raw = JSON.parse(json) as { jobs: Array<{ usr_cpu: number; sys_cpu: number }> };
            (result[`${server} ${scheme}`] ??= []).push(
              sample(job, parseFioJson(json), serverCpuSeconds, raw.jobs[0], seconds + 1),
            );
          }
      const m = (key: string, of: keyof Sample) => median(result[key].map((r) => r[of]));
      const unit = job.blockSize === '1m' ? 'MiB/s' : 'IOPS';
      const ratio = (server: string) =>
        (m(`${server} nbds`, 'figure') / m(`${server} nbd`, 'figure')).toFixed(2);
      const cpu = (server: string) =>
        `${m(`${server} nbd`, 'serverCpu').toFixed(2)} / ${m(`${server} nbds`, 'serverCpu').toFixed(2)}`;
      rows.push(
        `| ${job.name} | ${m('torus nbd', 'figure').toFixed(0)} ${unit} | ${m('torus nbds', 'figure').toFixed(0)} ${unit} | ${ratio('torus')}× | ${cpu('torus')} | ${m('nbdkit nbd', 'figure').toFixed(0)} | ${m('nbdkit nbds', 'figure').toFixed(0)} | ${ratio('nbdkit')}× | ${cpu('nbdkit')} | ${m('torus nbd', 'fioCpu').toFixed(2)} / ${m('torus nbds', 'fioCpu').toFixed(2)} |`,
      );
      process.stderr.write(`${rows[rows.length - 1]}\n`);
    }
    // The machine's own ceiling, alternating clear and TLS like the jobs.
    const stream: Record<string, number[]> = { clear: [], tls: [] };
    for (let i = 0; i < runs; i++) {
      stream.clear.push(await nodeStreamMibPerSecond(pki, seconds, false));
      stream.tls.push(await nodeStreamMibPerSecond(pki, seconds, true));
    }
    const clear = median(stream.clear);
    const overTls = median(stream.tls);
    process.stdout.write(
      `fio ${seconds} s per run, median of ${runs}, region ${flag(argv, 'region', '512MiB')}\n` +
        "CPU: the server's CPU seconds (all threads) per GiB (1 MiB jobs) or per 1000 requests (4 KiB jobs), clear / TLS; fio's the same, against torus\n" +
        '| job | torus nbd:// | torus nbds:// | TLS / clear | torus CPU | nbdkit nbd:// | nbdkit nbds:// | TLS / clear | nbdkit CPU | fio CPU |\n|---|---|---|---|---|---|---|---|---|---|\n' +
        rows.join('\n') +
        '\n\n' +
        `Ceiling on this machine: AES-GCM (openssl speed, 16 KiB, one core) ${(await aesGcmMegabytesPerSecond(128)).toFixed(0)} MB/s AES-128, ${(await aesGcmMegabytesPerSecond(256)).toFixed(0)} MB/s AES-256; ` +
        `a bare Node stream of 1 MiB writes to a Node sink, clear ${clear.toFixed(0)} MiB/s, TLS ${overTls.toFixed(0)} MiB/s (${(overTls / clear).toFixed(2)}×)\n`,
    );
  } finally {
    nbdkit?.kill('SIGTERM');
    await node?.stop('SIGTERM');
    await removeDir(dataDir);
    await rm(work, { recursive: true, force: true });
  }
}

interface Sample {
  /** MiB/s (1 MiB jobs) or IOPS (4 KiB jobs). */
  figure: number;
  /** The server's CPU seconds per GiB or per 1000 requests. */
  serverCpu: number;
  /** fio's, the same. */
  fioCpu: number;
}

/**
 * One run's figures. The work is counted over the ramp too (the CPU times
 * cover it): the measured rate times `wallSeconds`.
 */
function sample(
  job: JobSpec,
  r: ReturnType<typeof parseFioJson>,
  serverCpuSeconds: number,
  fioJob: { usr_cpu: number; sys_cpu: number },
  wallSeconds: number,
): Sample {
  const sequential = job.blockSize === '1m';
  const figure = sequential ? r.mibPerSecond : r.iops;
  const units = (figure * wallSeconds) / (sequential ? 1024 : 1000);
  // fio reports its CPU as a percentage of one core over the job.
  const fioCpuSeconds = ((fioJob.usr_cpu + fioJob.sys_cpu) / 100) * wallSeconds;
  return { figure, serverCpu: serverCpuSeconds / units, fioCpu: fioCpuSeconds / units };
}

main().catch((err: Error) => {
  process.stderr.write(`tls-bench: ${err.message}\n`);
  process.exitCode = 1;
});
