/**
 * NBD over TLS against clear text on the same torusd (`--tls on`, so both
 * are served at once): fio's nbd engine with nbd:// and nbds:// URIs, four
 * jobs (sequential 1 MiB read and write at queue depth 8, 4 KiB random read
 * and write at 32, as in bench/fio.ts), median of `--runs` runs each. Not a
 * test.
 *
 *   npm run bench:tls -- [--seconds 5] [--runs 3] [--region 512MiB]
 *
 * The PKI is made with openssl in a temp dir (test/tls-pki.ts). fio's engine
 * refuses ?tls-certificates= in a URI, so libnbd finds the CA in
 * $HOME/.pki/libnbd — which it ignores for root, so as root fio runs as
 * nobody (setpriv), for both schemes alike.
 */
import { readFileSync } from 'node:fs';
import { chmod, cp, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSize } from '../src/common/size.js';
import { makeTestPki } from '../test/tls-pki.js';
import { makeDataDir, removeDir, startTorusd } from '../test/torusd-process.js';
import { runOk } from '../test/tools.js';
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
    const uris = {
      clear: `nbd://127.0.0.1:${node.port}/bench`,
      tls: `nbds://127.0.0.1:${node.port}/bench`,
    };
    const out = join(work, 'fio.json');
    await fio(prefillArgs({ uri: uris.clear, regionBytes, outputFile: out }));
    const jobs = JOB_NAMES.map((n) => JOBS.find((j) => j.name === n)!);
    const rows: string[] = [];
    for (const job of jobs) {
      const result: Record<string, number[]> = { clear: [], tls: [] };
      for (let i = 0; i < runs; i++)
        for (const scheme of ['clear', 'tls'] as const) {
          await fio(
            fioArgs(job, {
              uri: uris[scheme],
              regionBytes,
              runtimeSeconds: seconds,
              rampSeconds: 1,
              outputFile: out,
            }),
          );
          result[scheme].push(figure(job, parseFioJson(readFileSync(out, 'utf8'))));
        }
      const clear = median(result.clear);
      const tls = median(result.tls);
      const unit = job.blockSize === '1m' ? 'MiB/s' : 'IOPS';
      rows.push(
        `| ${job.name} | ${clear.toFixed(0)} ${unit} | ${tls.toFixed(0)} ${unit} | ${(tls / clear).toFixed(2)}× |`,
      );
      process.stderr.write(`${rows[rows.length - 1]}\n`);
    }
    process.stdout.write(
      `fio ${seconds} s per run, median of ${runs}, region ${flag(argv, 'region', '512MiB')}\n` +
        '| job | nbd:// | nbds:// | TLS / clear |\n|---|---|---|---|\n' +
        rows.join('\n') +
        '\n',
    );
  } finally {
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
