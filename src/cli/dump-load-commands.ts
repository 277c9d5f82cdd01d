/**
 * torusctl block dump / block load: a volume's whole content to a file or
 * stdout, and back, over NBD from a running node (src/dataplane/nbd-client).
 *
 * Where NBD is: --nbd HOST:PORT when given (a cluster, -C, needs it: any
 * node serves any volume); otherwise the running torusd of --data-dir, whose
 * status (admin socket) names its NBD listeners — the unix socket first.
 * The export name is the volume name as given (VOL@SNAP included).
 *
 * Bad input changes nothing: the checks (a TTY as stdin, an input larger than
 * the volume or SIZE, a missing volume to dump, no node running) all come
 * before a file is opened for writing or a volume is created; a load that
 * fails into a volume it created deletes that volume again.
 */
import { open, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { existsSync } from 'node:fs';
import { NotFoundError, UsageError } from '../common/errors.js';
import { formatSize, parseSize } from '../common/size.js';
import { NbdClient, type NbdAddress } from '../dataplane/nbd-client/client.js';
import { AdminClient } from './admin-client.js';
import { ArgumentError, parseAddress, refuseNegative, type Address, type Parsed } from './args.js';
import type { Command } from './commands.js';
import { dataDirFlag, etcdFlags, etcdOrSingleNode, outputFlag } from './common-flags.js';
import { TransferProgress } from './transfer-progress.js';
import { dumpVolume, fileSink, streamSink, type TransferResult } from './volume-dump.js';
import { fileSource, loadVolume, streamSource } from './volume-load.js';

const nbdFlag = {
  type: 'address',
  help: 'NBD address of a node serving the volume (needed with -C; default: the running torusd of --data-dir)',
  env: 'TORUS_NBD',
} as const;

/** Why `-` cannot be read as input, or undefined: stdin must be a pipe or a file, not a terminal. */
export function pipedInputProblem(stdin: { isTTY?: boolean }): string | undefined {
  return stdin.isTTY
    ? 'FILE is "-" but nothing is piped into stdin (it is a terminal): pipe the image in, e.g. `zcat img.gz | torusctl block load - VOL SIZE`, or name a file'
    : undefined;
}

/** Why stdout cannot take a dump, or undefined. */
export function dumpOutputProblem(stdout: { isTTY?: boolean }): string | undefined {
  return stdout.isTTY
    ? 'FILE is "-" but stdout is a terminal: redirect it (> FILE, | gzip > FILE) or name a file'
    : undefined;
}

/** Where to reach NBD for this command: --nbd, or what the running torusd of --data-dir says. */
async function nbdAddressOf(args: Parsed): Promise<{ address: NbdAddress; where: string }> {
  const given = args.values.nbd as Address | undefined;
  if (given) return { address: given, where: `${given.host}:${given.port}` };
  if (await etcdOrSingleNode(args))
    throw new ArgumentError(
      '--nbd HOST:PORT: with a cluster (-C), name the NBD address of a node to go through',
    );
  const admin = new AdminClient(args.values['data-dir'] as string);
  const status = (await admin.status()) as { nbd?: { tcp?: string; unix?: string } } | undefined;
  if (!status)
    throw new UsageError(
      `no torusd is running for ${admin.dataDir}: start it (torusd --data-dir ${admin.dataDir}) or give --nbd HOST:PORT`,
    );
  if (status.nbd?.unix) return { address: { path: status.nbd.unix }, where: status.nbd.unix };
  if (status.nbd?.tcp) {
    const address = parseAddress(status.nbd.tcp, 'nbd');
    return { address, where: status.nbd.tcp };
  }
  // A torusd from before status named its listeners: its default unix socket.
  const socket = join(admin.dataDir, 'nbd.sock');
  if (existsSync(socket)) return { address: { path: socket }, where: socket };
  throw new UsageError(
    `torusd for ${admin.dataDir} does not say where it serves NBD: give --nbd HOST:PORT`,
  );
}

async function connectTo(address: NbdAddress, where: string, volume: string): Promise<NbdClient> {
  try {
    return await NbdClient.connect(address, volume);
  } catch (err) {
    if (err instanceof NotFoundError)
      throw new NotFoundError(
        `no volume named "${volume}" served at ${where} (see torusctl volume list)`,
      );
    throw err;
  }
}

function sizeArgument(text: string): number {
  refuseNegative('SIZE', text);
  try {
    return parseSize(text);
  } catch {
    throw new ArgumentError(`SIZE: expected a size like 10GiB, 512MiB or 1T, got "${text}"`);
  }
}

function outputFormat(args: Parsed): 'table' | 'json' {
  const format = args.values.output as string;
  if (format !== 'table' && format !== 'json')
    throw new ArgumentError(`--output: expected table or json, got "${format}"`);
  return format;
}

function rate(result: TransferResult): string {
  return result.seconds > 0 ? `${formatSize(Math.round(result.bytes / result.seconds))}/s` : '-';
}

const commonFlags = {
  'data-dir': dataDirFlag,
  nbd: nbdFlag,
  output: outputFlag,
  ...etcdFlags,
};

export function dumpLoadCommands(): Command[] {
  return [
    {
      words: ['block', 'dump'],
      spec: {
        usage: 'block dump VOL[@SNAP] FILE|- [--nbd HOST:PORT] [-o json]',
        summary:
          "copy a volume's content to a sparse file (or stdout), skipping holes; prints its sha256",
        positionals: ['VOL', 'FILE'],
        flags: commonFlags,
      },
      async run(args) {
        const [volume, target] = args.positionals;
        const format = outputFormat(args);
        const toStdout = target === '-';
        const problem = toStdout ? dumpOutputProblem(process.stdout) : undefined;
        if (problem) throw new ArgumentError(problem);
        const { address, where } = await nbdAddressOf(args);
        const client = await connectTo(address, where, volume);
        let file: FileHandle | undefined;
        let result: TransferResult;
        const progress = new TransferProgress(`dump ${volume}`, client.size);
        try {
          file = toStdout ? undefined : await open(target, 'w');
          result = await dumpVolume(
            client,
            file ? fileSink(file) : streamSink(process.stdout),
            (d) => progress.update(d),
          );
          await file?.close();
        } catch (err) {
          progress.end();
          client.destroy();
          if (file) {
            await file.close().catch(() => undefined);
            await rm(target, { force: true });
          }
          throw err;
        }
        progress.end();
        await client.close();
        const summary = {
          volume,
          file: target,
          bytes: result.bytes,
          dataBytes: result.dataBytes,
          sha256: result.sha256,
          seconds: result.seconds,
        };
        // The summary goes to stdout unless the dump itself does.
        const out = toStdout ? process.stderr : process.stdout;
        if (format === 'json') out.write(JSON.stringify(summary) + '\n');
        else
          out.write(
            `dumped ${volume} (${formatSize(result.bytes)}, ${formatSize(result.dataBytes)} of data) to ${toStdout ? 'stdout' : target} in ${result.seconds.toFixed(1)} s, ${rate(result)}\n` +
              `sha256 ${result.sha256}\n`,
          );
      },
    },
    {
      words: ['block', 'load'],
      spec: {
        usage: 'block load FILE|- VOL [SIZE] [--nbd HOST:PORT] [-o json]',
        summary:
          'copy a file (or stdin) into a volume, creating it when missing (SIZE, or the file size); zero blocks are not stored',
        positionals: ['FILE', 'VOL', '[SIZE]'],
        flags: commonFlags,
      },
      async run(args) {
        const [input, volume, sizeText] = args.positionals;
        const format = outputFormat(args);
        const wanted = sizeText === undefined ? undefined : sizeArgument(sizeText);
        const fromStdin = input === '-';
        const problem = fromStdin ? pipedInputProblem(process.stdin) : undefined;
        if (problem) throw new ArgumentError(problem);
        if (wanted !== undefined && (wanted <= 0 || wanted % 4096 !== 0))
          throw new ArgumentError(`SIZE: expected a positive multiple of 4 KiB, got ${sizeText}`);

        let file: FileHandle | undefined;
        let inputSize: number | undefined;
        if (!fromStdin) {
          file = await open(input, 'r').catch((err: NodeJS.ErrnoException) => {
            throw new UsageError(
              `cannot read ${input}: ${err.code === 'ENOENT' ? 'no such file' : err.message}`,
            );
          });
          const stat = await file.stat();
          inputSize = stat.isFile() ? stat.size : undefined;
        }
        let created = false;
        let client: NbdClient | undefined;
        let admin: AdminClient | undefined;
        try {
          if (wanted !== undefined && inputSize !== undefined && inputSize > wanted)
            throw new UsageError(
              `${input} (${formatSize(inputSize)}) is larger than SIZE ${formatSize(wanted)}`,
            );
          const { address, where } = await nbdAddressOf(args);
          client = await NbdClient.connect(address, volume).catch((err: unknown) => {
            if (err instanceof NotFoundError) return undefined;
            throw err;
          });
          if (client) {
            if (wanted !== undefined && wanted !== client.size)
              throw new UsageError(
                `volume ${volume} exists with size ${formatSize(client.size)}, not ${formatSize(wanted)}: leave out SIZE to load into it (SIZE is for creating)`,
              );
            if (inputSize !== undefined && inputSize > client.size)
              throw new UsageError(
                `${input} (${formatSize(inputSize)}) is larger than volume ${volume} (${formatSize(client.size)})`,
              );
          } else {
            let size = wanted;
            if (size === undefined) {
              if (inputSize === undefined)
                throw new ArgumentError(
                  `SIZE: volume ${volume} does not exist, and the size of ${fromStdin ? 'stdin' : input} is not known ahead: give SIZE to create it`,
                );
              size = Math.max(4096, Math.ceil(inputSize / 4096) * 4096);
            }
            admin = new AdminClient(
              args.values['data-dir'] as string,
              undefined,
              await etcdOrSingleNode(args),
            );
            await admin.createVolume(volume, size, false);
            created = true;
            client = await connectWhenServed(address, where, volume);
          }
          const progress = new TransferProgress(`load ${volume}`, inputSize ?? client.size);
          let result;
          try {
            result = await loadVolume(
              client,
              file ? fileSource(file) : streamSource(process.stdin),
              { fresh: created },
              (d) => progress.update(d),
            );
          } finally {
            progress.end();
          }
          await client.close();
          const summary = {
            volume,
            file: input,
            created,
            bytes: result.bytes,
            dataBytes: result.dataBytes,
            zeroBytes: result.zeroBytes,
            sha256: result.sha256,
            seconds: result.seconds,
          };
          if (format === 'json') process.stdout.write(JSON.stringify(summary) + '\n');
          else
            process.stdout.write(
              `loaded ${fromStdin ? 'stdin' : input} into ${created ? 'new ' : ''}volume ${volume} (${formatSize(client.size)}): ${formatSize(result.bytes)}, ${formatSize(result.dataBytes)} of data, ${formatSize(result.zeroBytes)} of zeros not stored, in ${result.seconds.toFixed(1)} s, ${rate(result)}\n` +
                `sha256 ${result.sha256}\n`,
            );
        } catch (err) {
          client?.destroy();
          // A volume this load created and could not fill goes again: bad input changes nothing.
          if (created && admin) await deleteWhenClosed(admin, volume);
          throw err;
        } finally {
          await file?.close();
        }
      },
    },
  ];
}

/** A volume just created may take a moment to be served (a cluster hosts on demand). */
async function connectWhenServed(
  address: NbdAddress,
  where: string,
  volume: string,
): Promise<NbdClient> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await connectTo(address, where, volume);
    } catch (err) {
      if (!(err instanceof NotFoundError) || attempt >= 20) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/** Delete a volume whose NBD session was just dropped (the server may still be closing it). */
async function deleteWhenClosed(admin: AdminClient, volume: string): Promise<void> {
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      await admin.deleteVolume(volume);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  process.stderr.write(
    `torusctl: volume ${volume} was created for this load and could not be deleted: torusctl volume delete ${volume}\n`,
  );
}
