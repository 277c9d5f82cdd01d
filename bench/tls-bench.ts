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
import { freePort, waitForListener } from './processes.js';
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
    const out = join(work, 'fio.json');
    for (const uri of Object.values(servers))
      await fio(prefillArgs({ uri: uri('nbd'), regionBytes, outputFile: out }));
    const jobs = JOB_NAMES.map((n) => JOBS.find((j) => j.name === n)!);
    const rows: string[] = [];
    for (const job of jobs) {
      const result: Record<string, number[]> = {};
      for (let i = 0; i < runs; i++)
        for (const [server, uri] of Object.entries(servers))
          for (const scheme of ['nbd', 'nbds']) {
            await fio(
              fioArgs(job, {
                uri: uri(scheme),
                regionBytes,
                runtimeSeconds: seconds,
                rampSeconds: 1,
                outputFile: out,
              }),
            );
            (result[`${server} ${scheme}`] ??= []).push(
              figure(job, parseFioJson(readFileSync(out, 'utf8'))),
            );
          }
      const m = (key: string) => median(result[key]);
      const unit = job.blockSize === '1m' ? 'MiB/s' : 'IOPS';
      rows.push(
        `| ${job.name} | ${m('torus nbd').toFixed(0)} ${unit} | ${m('torus nbds').toFixed(0)} ${unit} | ${(m('torus nbds') / m('torus nbd')).toFixed(2)}× | ${m('nbdkit nbd').toFixed(0)} | ${m('nbdkit nbds').toFixed(0)} | ${(m('nbdkit nbds') / m('nbdkit nbd')).toFixed(2)}× |`,
      );
      process.stderr.write(`${rows[rows.length - 1]}\n`);
    }
    process.stdout.write(
      `fio ${seconds} s per run, median of ${runs}, region ${flag(argv, 'region', '512MiB')}\n` +
        '| job | torus nbd:// | torus nbds:// | TLS / clear | nbdkit nbd:// | nbdkit nbds:// | TLS / clear |\n|---|---|---|---|---|---|---|\n' +
        rows.join('\n') +
        '\n',
    );
  } finally {
    nbdkit?.kill('SIGTERM');
    await node?.stop('SIGTERM');
    await removeDir(dataDir);
    await rm(work, { recursive: true, force: true });
  }
}

function figure(job: JobSpec, r: ReturnType<typeof parseFioJson>): number {
  return job.blockSize === '1m' ? r.mibPerSecond : r.iops;
}

main().catch((err: Error) => {
  process.stderr.write(`tls-bench: ${err.message}\n`);
  process.exitCode = 1;
});
