/**
 * Start the real `torusblk nbdserve` (a store-less client node serving a
 * cluster's volumes over NBD) for whole-system tests, and wait until it
 * says it serves. The caller kills it (child.kill) or lets the test's
 * after() do so.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { until } from '../cluster-fixture.js';
import { BIN } from '../torusd-process.js';

export interface NbdserveProcess {
  child: ChildProcess;
  /** Everything it printed so far. */
  output(): string;
}

export async function startNbdserve(options: {
  etcdEndpoint: string;
  port: number;
  scratchDir: string;
  cacheSize?: string;
  /** More flags, e.g. ['--workers', '1'] or ['--peer-tls-dir', DIR]. */
  args?: string[];
  startTimeoutMs?: number;
}): Promise<NbdserveProcess> {
  const child = spawn(
    process.execPath,
    [
      join(BIN, 'torusblk'),
      '-C',
      options.etcdEndpoint,
      'nbdserve',
      '-l',
      `127.0.0.1:${options.port}`,
      '--scratch-dir',
      options.scratchDir,
      '--cache-size',
      options.cacheSize ?? '32MiB',
      ...(options.args ?? []),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  try {
    await until(
      'torusblk nbdserve to listen',
      async () => (output.includes('torusblk serving') ? true : undefined),
      options.startTimeoutMs ?? 30_000,
      () => output,
    );
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return { child, output: () => output };
}
