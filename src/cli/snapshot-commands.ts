/**
 * Snapshots and clones, spelled as the original torusctl did:
 *   block snapshot create|list|delete|restore VOLUME@SNAPSHOT
 *   volume clone SRC[@SNAP] NEW [--size SIZE]
 */
import { parseSnapshotName } from '../controlplane/volumes/snapshots.js';
import { checkVolumeName } from '../controlplane/volumes/catalog.js';
import { sizeCell, table, type Command } from './commands.js';
import { dataDirFlag, etcdFlags, keyFileFlag, outputFlag } from './common-flags.js';
import { client } from './torus-client.js';
import { outputFormat } from './volume-commands.js';

const flags = { 'data-dir': dataDirFlag, ...etcdFlags };

function print(format: 'table' | 'json', value: unknown, text: string): void {
  process.stdout.write(format === 'json' ? JSON.stringify(value) + '\n' : text + '\n');
}

export function snapshotCommands(): Command[] {
  return [
    {
      words: ['block', 'snapshot', 'create'],
      aliases: [['snapshot', 'create']],
      spec: {
        usage: 'block snapshot create VOLUME@SNAPSHOT [-o json]',
        summary:
          'keep the volume as last committed (everything clients FLUSHed) under a name; instant, served read-only as export VOLUME@SNAPSHOT',
        positionals: ['VOLUME@SNAPSHOT'],
        flags: { ...flags, output: outputFlag },
      },
      async run(args) {
        const format = outputFormat(args);
        const { volume, snapshot } = parseSnapshotName(args.positionals[0]);
        const row = await (await client(args)).createSnapshot(volume, snapshot);
        print(
          format,
          row,
          `created snapshot ${row.name} (version ${row.generation}, ${sizeCell(row.size)}); read it as NBD export "${row.name}"`,
        );
      },
    },
    {
      words: ['block', 'snapshot', 'list'],
      aliases: [
        ['block', 'snapshot', 'ls'],
        ['snapshot', 'list'],
      ],
      spec: {
        usage: 'block snapshot list VOLUME [-o json]',
        summary:
          "list a volume's snapshots: name, when taken, size, and the space deleting each would free",
        positionals: ['VOLUME'],
        flags: { ...flags, output: outputFlag },
      },
      async run(args) {
        const format = outputFormat(args);
        const [volume] = args.positionals;
        checkVolumeName(volume);
        const rows = await (await client(args)).listSnapshots(volume);
        if (format === 'json') {
          process.stdout.write(JSON.stringify(rows, null, 2) + '\n');
          return;
        }
        process.stdout.write(
          table(
            ['NAME', 'CREATED', 'SIZE', 'VERSION', 'FREED BY DELETE'],
            rows.map((r) => [
              r.name,
              r.createdAt,
              sizeCell(r.size),
              String(r.generation),
              sizeCell(r.exclusive),
            ]),
          ),
        );
      },
    },
    {
      words: ['block', 'snapshot', 'delete'],
      aliases: [
        ['block', 'snapshot', 'rm'],
        ['snapshot', 'delete'],
      ],
      spec: {
        usage: 'block snapshot delete VOLUME@SNAPSHOT',
        summary:
          'delete a snapshot; blocks no volume, other snapshot or clone references are freed',
        positionals: ['VOLUME@SNAPSHOT'],
        flags,
      },
      async run(args) {
        const { volume, snapshot } = parseSnapshotName(args.positionals[0]);
        const { freed } = await (await client(args)).deleteSnapshot(volume, snapshot);
        process.stdout.write(
          `deleted snapshot ${volume}@${snapshot}${freed === undefined ? ' (its blocks are freed by GC: by every storage node at its next run on a cluster, at the next torusd start on a single node)' : `; freed ${sizeCell(freed)}`}\n`,
        );
      },
    },
    {
      words: ['block', 'snapshot', 'restore'],
      aliases: [['snapshot', 'restore']],
      spec: {
        usage: 'block snapshot restore VOLUME@SNAPSHOT',
        summary:
          "make the volume's content the snapshot's, atomically (refused while a client has the volume open)",
        positionals: ['VOLUME@SNAPSHOT'],
        flags: { ...flags, output: outputFlag },
      },
      async run(args) {
        const format = outputFormat(args);
        const { volume, snapshot } = parseSnapshotName(args.positionals[0]);
        const row = await (await client(args)).restoreSnapshot(volume, snapshot);
        print(
          format,
          row,
          `restored volume ${volume} from snapshot ${snapshot} (now version ${row.generation}, ${sizeCell(row.size)})`,
        );
      },
    },
    {
      words: ['volume', 'clone'],
      aliases: [['block', 'clone']],
      spec: {
        usage: 'volume clone SRC[@SNAP] NEW [--size SIZE] [-o json]',
        summary:
          'create volume NEW sharing every block of SRC (or of its snapshot) copy-on-write; instant',
        positionals: ['SRC[@SNAP]', 'NEW'],
        flags: {
          ...flags,
          size: { type: 'size', help: "the clone's size (default: the source's; never smaller)" },
          'key-file': keyFileFlag,
          output: outputFlag,
        },
      },
      async run(args) {
        const format = outputFormat(args);
        const [source, name] = args.positionals;
        if (source.includes('@')) parseSnapshotName(source);
        else checkVolumeName(source);
        checkVolumeName(name);
        const size = args.values.size as number | undefined;
        const row = await (await client(args)).cloneVolume(source, name, { size });
        print(
          format,
          row,
          `created volume ${row.name} (${sizeCell(row.size)}${row.encrypted ? ', encrypted' : ''}), a clone of ${source}`,
        );
      },
    },
  ];
}
