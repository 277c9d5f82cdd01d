/** The volume commands, shared by torusctl and torusblk. */
import { parseSize } from '../common/size.js';
import type { VolumeInfo } from '../library/volume-operations.js';
import { ArgumentError, REPLICATION_RANGE, refuseNegative, type Parsed } from './args.js';
import { sizeCell, table, type Command } from './commands.js';
import { resizeCommand } from './resize-command.js';
import {
  dataDirFlag,
  etcdFlags,
  etcdOrSingleNode,
  keyFileFlag,
  outputFlag,
} from './common-flags.js';
import { client, torusFor } from './torus-client.js';

export { client };

export function sizeArgument(text: string): number {
  refuseNegative('SIZE', text);
  try {
    return parseSize(text);
  } catch {
    throw new ArgumentError(`SIZE: expected a size like 10GiB, 512MiB or 1T, got "${text}"`);
  }
}

export function outputFormat(args: Parsed): 'table' | 'json' {
  const format = args.values.output as string;
  if (format !== 'table' && format !== 'json')
    throw new ArgumentError(`--output: expected table or json, got "${format}"`);
  return format;
}

/** "2 (1.2 GiB only theirs)": a volume's snapshots and the space only they hold (single node). */
function snapshotsCell(count: number | undefined, only: number | undefined): string {
  if (count === undefined) return '-';
  return count === 0 || only === undefined
    ? String(count)
    : `${count} (${sizeCell(only)} only theirs)`;
}

/** "2 (versions 3, 5)": how many nodes serve the volume read-only, and at which versions. */
function readersCell(readers: VolumeInfo['readers']): string {
  if (!readers || readers.length === 0) return '-';
  const versions = [...new Set(readers.map((r) => r.generation))].sort((a, b) => a - b);
  return `${readers.length} (version${versions.length > 1 ? 's' : ''} ${versions.join(', ')})`;
}

export function volumeCommands(createWord: string): Command[] {
  return [
    {
      words: ['volume', createWord],
      aliases:
        createWord === 'create-block'
          ? [
              ['volume', 'create'],
              ['block', 'create'],
            ]
          : [['volume', 'create-block']],
      spec: {
        usage: `volume ${createWord} NAME SIZE [--encrypt] [--replication N]`,
        summary: 'create a thin block volume (e.g. myVolume 10GiB)',
        positionals: ['NAME', 'SIZE'],
        flags: {
          'data-dir': dataDirFlag,
          encrypt: {
            type: 'boolean',
            help: 'encrypt the volume at rest (AES-256-GCM, key wrapped by the master key)',
          },
          replication: {
            type: 'integer',
            help: "cluster: copies of each block of this volume (default: the ring's, see ring set-replication)",
            ...REPLICATION_RANGE,
          },
          'key-file': keyFileFlag,
          output: outputFlag,
          ...etcdFlags,
        },
      },
      async run(args) {
        const [name, sizeText] = args.positionals;
        const format = outputFormat(args);
        const row = await (
          await client(args)
        ).createVolume(name, sizeArgument(sizeText), {
          encrypt: Boolean(args.values.encrypt),
          replication: args.values.replication as number | undefined,
        });
        if (format === 'json') process.stdout.write(JSON.stringify(row) + '\n');
        else
          process.stdout.write(
            `created volume ${row.name} (${sizeCell(row.size)}${row.encrypted ? ', encrypted' : ''}${row.replication ? `, replication ${row.replication}` : ''})\n`,
          );
      },
    },
    {
      words: ['volume', 'list'],
      aliases: [['volume', 'ls'], ['list-volumes']],
      spec: {
        usage: 'volume list [-o json]',
        summary:
          'list volumes with size, space used, open connections and (cluster) the node holding the write lock',
        flags: { 'data-dir': dataDirFlag, output: outputFlag, ...etcdFlags },
      },
      async run(args) {
        const format = outputFormat(args);
        const etcd = await etcdOrSingleNode(args);
        const rows = await (
          await torusFor(
            args.values['data-dir'] as string,
            args.values['key-file'] as string | undefined,
            etcd,
          )
        ).listVolumes();
        if (format === 'json') {
          process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
          return;
        }
        const cluster = rows.some((r) => r.lockedBy !== undefined) || etcd !== undefined;
        const clones = rows.some((r) => r.origin !== undefined);
        const states = rows.some((r) => r.state !== undefined);
        process.stdout.write(
          table(
            [
              'NAME',
              'SIZE',
              'USED',
              'ENCRYPTED',
              'VERSION',
              'CONNECTIONS',
              'SNAPSHOTS',
              ...(clones ? ['CLONE OF'] : []),
              ...(cluster ? ['REPLICATION', 'WRITER', 'READERS'] : []),
              ...(states ? ['STATE'] : []),
            ],
            rows.map((r) => [
              r.name,
              sizeCell(r.size),
              sizeCell(r.used),
              r.encrypted ? 'yes' : 'no',
              String(r.generation),
              r.sessions === undefined ? '-' : String(r.sessions),
              snapshotsCell(r.snapshots, r.snapshotOnly),
              ...(clones ? [r.origin ?? '-'] : []),
              ...(cluster
                ? [
                    r.replication === undefined ? '-' : String(r.replication),
                    r.lockedBy ?? '-',
                    readersCell(r.readers),
                  ]
                : []),
              ...(states ? [r.state ?? 'ok'] : []),
            ]),
          ),
        );
        for (const r of rows)
          if (r.state) process.stdout.write(`volume ${r.name} is ${r.state}: ${r.reason}\n`);
      },
    },
    {
      words: ['volume', 'delete'],
      aliases: [['volume', 'rm']],
      spec: {
        usage: 'volume delete NAME [--with-snapshots]',
        summary:
          'delete a volume and free its blocks (refused while a client has it open, or it has snapshots)',
        positionals: ['NAME'],
        flags: {
          'data-dir': dataDirFlag,
          'with-snapshots': {
            type: 'boolean',
            help: "delete the volume's snapshots too (clones of it keep what they share)",
          },
          ...etcdFlags,
        },
      },
      async run(args) {
        const [name] = args.positionals;
        const { online } = await (
          await client(args)
        ).deleteVolume(name, { withSnapshots: Boolean(args.values['with-snapshots']) });
        process.stdout.write(
          `deleted volume ${name}${online ? '' : ' (its blocks are freed when torusd next starts)'}\n`,
        );
      },
    },
    {
      words: ['volume', 'forget-log'],
      spec: {
        usage: 'volume forget-log NAME --lose-flushed-writes',
        summary:
          "cluster: serve a volume again whose intent log's every holder is gone for good; what its dead writer FLUSHed after its last commit is lost",
        positionals: ['NAME'],
        flags: {
          'data-dir': dataDirFlag,
          'lose-flushed-writes': {
            type: 'boolean',
            help: 'say that the writes those holders kept may be lost (required)',
          },
          ...etcdFlags,
        },
      },
      async run(args) {
        const [name] = args.positionals;
        if (!args.values['lose-flushed-writes'])
          throw new ArgumentError(
            `volume forget-log drops the FLUSHed writes of ${name} that only its intent log holders kept; give --lose-flushed-writes to go on (first try to bring one of them back)`,
          );
        const { holders } = await (await client(args)).forgetIntentLog(name);
        process.stdout.write(
          holders.length === 0
            ? `volume ${name} names no intent log holders: nothing was waiting on them\n`
            : `volume ${name} no longer waits for its intent log holders (${holders.join(', ')}): the next node to open it serves its last committed version\n`,
        );
      },
    },
    resizeCommand(),
  ];
}
