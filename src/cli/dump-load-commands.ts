/**
 * torusctl block dump / block load: a volume's whole content to a file or
 * stdout, and back, through a library VolumeHandle (src/library).
 *
 * Where the volume is reached: --nbd HOST:PORT when given (any NBD server;
 * the export name is the volume name as given, VOL@SNAP included); on a
 * cluster (-C) in this process, as a store-less client node (the library's
 * cluster handle: the write lock taken while loading, no NBD hop); on a
 * single node through its running torusd (over NBD, the unix socket its
 * status names first) — never on a data directory no torusd runs on.
 *
 * Bad input changes nothing: the checks (a TTY as stdin, an input larger than
 * the volume or SIZE, a missing volume to dump, no node running) all come
 * before a file is opened for writing or a volume is created; a load that
 * fails into a volume it created deletes that volume again.
 */
import { open, rm, type FileHandle } from 'node:fs/promises';
import { NotFoundError, UsageError } from '../common/errors.js';
import { formatSize, parseSize } from '../common/size.js';
import { openNbdVolume, type Torus } from '../library/torus.js';
import type { VolumeHandle } from '../library/volume-handle.js';
import { ArgumentError, refuseNegative, type Address, type Parsed } from './args.js';
import type { Command } from './commands.js';
import { dataDirFlag, etcdFlags, etcdOrSingleNode, outputFlag } from './common-flags.js';
import { torusFor } from './torus-client.js';
import { TransferProgress } from './transfer-progress.js';
import { clientTlsFilesOf, nbdClientTlsFlags } from './tls-flags.js';
import type { NbdAddress } from '../dataplane/nbd-client/client.js';
import { contentHash } from './background-hash.js';
import {
  DIRECT_MIN_BYTES,
  DIRECT_MIN_BYTES_HASHING,
  openOutputFile,
  type OutputFile,
} from './direct-file.js';
import { dumpVolume, fileSink, streamSink, type TransferResult } from './volume-dump.js';
import { fileSource, loadVolume, streamSource } from './volume-load.js';

const nbdFlag = {
  type: 'address',
  help: 'NBD address of a node serving the volume (default: the running torusd of --data-dir; with -C, the cluster from this process)',
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

/**
 * How this command reaches volumes: over NBD at --nbd, or through the
 * library client for -C or --data-dir (a single node only when its torusd
 * runs). `torus` also creates and deletes volumes (load).
 */
interface Reach {
  torus: Torus;
  nbd?: Address & NbdAddress;
}

async function reachOf(args: Parsed): Promise<Reach> {
  const etcd = await etcdOrSingleNode(args);
  const torus = await torusFor(args.values['data-dir'] as string, undefined, etcd);
  const nbd = args.values.nbd as Address | undefined;
  if (nbd) return { torus, nbd: { ...nbd, tls: clientTlsFilesOf(args.values) } };
  if (!etcd && !(await torus.torusdNbd()))
    throw new UsageError(
      `no torusd is running for ${torus.dataDir}: start it (torusd --data-dir ${torus.dataDir}) or give --nbd HOST:PORT`,
    );
  return { torus };
}

/** Open `volume`; NotFoundError naming where it was looked for. */
async function openOn(reach: Reach, volume: string, readOnly: boolean): Promise<VolumeHandle> {
  if (!reach.nbd) return reach.torus.openVolume(volume, { readOnly });
  try {
    return await openNbdVolume(reach.nbd, volume, { readOnly });
  } catch (err) {
    if (err instanceof NotFoundError)
      throw new NotFoundError(
        `no volume named "${volume}" served at ${reach.nbd.host}:${reach.nbd.port} (see torusctl volume list)`,
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
  ...nbdClientTlsFlags,
  output: outputFlag,
  'no-checksum': {
    type: 'boolean',
    help: 'skip the sha256 of the content: hashing costs ~0.7 s of CPU per GiB of volume (holes included), more than the copy of a sparse volume',
  },
  ...etcdFlags,
} as const;

/** The summary's checksum line: the digest, or why there is none. */
function checksumLine(sha256: string | undefined): string {
  return sha256 === undefined ? 'sha256 not computed (--no-checksum)\n' : `sha256 ${sha256}\n`;
}

export function dumpLoadCommands(): Command[] {
  return [
    {
      words: ['block', 'dump'],
      spec: {
        usage: 'block dump VOL[@SNAP] FILE|- [--nbd HOST:PORT] [--no-checksum] [-o json]',
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
        // Started before connecting: the hashing thread starts up meanwhile.
        const hash = contentHash(!args.values['no-checksum']);
        let output: OutputFile | undefined;
        let result: TransferResult;
        const reach = await reachOf(args).catch(async (err: unknown) => {
          await hash.close();
          throw err;
        });
        try {
          const handle = await openOn(reach, volume, true);
          const progress = new TransferProgress(`dump ${volume}`, handle.size);
          try {
            output = toStdout ? undefined : await openOutputFile(target);
            result = await dumpVolume(
              handle,
              output
                ? fileSink(
                    output,
                    args.values['no-checksum'] ? DIRECT_MIN_BYTES : DIRECT_MIN_BYTES_HASHING,
                  )
                : streamSink(process.stdout),
              (d) => progress.update(d),
              { hash },
            );
            await output?.direct?.close();
            await output?.file.close();
          } catch (err) {
            if (output) {
              await output.direct?.close().catch(() => undefined);
              await output.file.close().catch(() => undefined);
              await rm(target, { force: true });
            }
            throw err;
          } finally {
            progress.end();
            await handle.close().catch(() => undefined);
          }
        } finally {
          await hash.close();
          await reach.torus.close();
        }
        const summary = {
          volume,
          file: target,
          bytes: result.bytes,
          dataBytes: result.dataBytes,
          sha256: result.sha256 ?? null,
          seconds: result.seconds,
        };
        // The summary goes to stdout unless the dump itself does.
        const out = toStdout ? process.stderr : process.stdout;
        if (format === 'json') out.write(JSON.stringify(summary) + '\n');
        else
          out.write(
            `dumped ${volume} (${formatSize(result.bytes)}, ${formatSize(result.dataBytes)} of data) to ${toStdout ? 'stdout' : target} in ${result.seconds.toFixed(1)} s, ${rate(result)}\n` +
              checksumLine(result.sha256),
          );
      },
    },
    {
      words: ['block', 'load'],
      spec: {
        usage: 'block load FILE|- VOL [SIZE] [--nbd HOST:PORT] [--no-checksum] [-o json]',
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
        let handle: VolumeHandle | undefined;
        let reach: Reach | undefined;
        // Started before connecting: the hashing thread starts up meanwhile.
        const hash = contentHash(!args.values['no-checksum']);
        try {
          if (wanted !== undefined && inputSize !== undefined && inputSize > wanted)
            throw new UsageError(
              `${input} (${formatSize(inputSize)}) is larger than SIZE ${formatSize(wanted)}`,
            );
          const at: Reach = (reach = await reachOf(args));
          handle = await openOn(at, volume, false).catch((err: unknown) => {
            if (err instanceof NotFoundError) return undefined;
            throw err;
          });
          if (handle) {
            if (wanted !== undefined && wanted !== handle.size)
              throw new UsageError(
                `volume ${volume} exists with size ${formatSize(handle.size)}, not ${formatSize(wanted)}: leave out SIZE to load into it (SIZE is for creating)`,
              );
            if (inputSize !== undefined && inputSize > handle.size)
              throw new UsageError(
                `${input} (${formatSize(inputSize)}) is larger than volume ${volume} (${formatSize(handle.size)})`,
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
            await at.torus.createVolume(volume, size);
            created = true;
            handle = await openWhenServed(at, volume);
          }
          const progress = new TransferProgress(`load ${volume}`, inputSize ?? handle.size);
          let result;
          try {
            result = await loadVolume(
              handle,
              file ? fileSource(file) : streamSource(process.stdin),
              { fresh: created, hash },
              (d) => progress.update(d),
            );
          } finally {
            progress.end();
          }
          await handle.close();
          const summary = {
            volume,
            file: input,
            created,
            bytes: result.bytes,
            dataBytes: result.dataBytes,
            zeroBytes: result.zeroBytes,
            sha256: result.sha256 ?? null,
            seconds: result.seconds,
          };
          if (format === 'json') process.stdout.write(JSON.stringify(summary) + '\n');
          else
            process.stdout.write(
              `loaded ${fromStdin ? 'stdin' : input} into ${created ? 'new ' : ''}volume ${volume} (${formatSize(handle.size)}): ${formatSize(result.bytes)}, ${formatSize(result.dataBytes)} of data, ${formatSize(result.zeroBytes)} of zeros not stored, in ${result.seconds.toFixed(1)} s, ${rate(result)}\n` +
                checksumLine(result.sha256),
            );
        } catch (err) {
          await handle?.close().catch(() => undefined);
          // A volume this load created and could not fill goes again: bad input changes nothing.
          if (created && reach) await deleteWhenClosed(reach.torus, volume);
          throw err;
        } finally {
          await hash.close();
          await file?.close();
          await reach?.torus.close();
        }
      },
    },
  ];
}

/** A volume just created may take a moment to be served (a cluster node behind --nbd hosts on demand). */
async function openWhenServed(reach: Reach, volume: string): Promise<VolumeHandle> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await openOn(reach, volume, false);
    } catch (err) {
      if (!(err instanceof NotFoundError) || attempt >= 20) throw err;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

/** Delete a volume whose handle was just closed (a server may still be closing its session). */
async function deleteWhenClosed(torus: Torus, volume: string): Promise<void> {
  for (let attempt = 0; attempt < 20; attempt++) {
    try {
      await torus.deleteVolume(volume);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  process.stderr.write(
    `torusctl: volume ${volume} was created for this load and could not be deleted: torusctl volume delete ${volume}\n`,
  );
}
