/** torusctl: administer Torus: volumes, cluster settings and membership, node status. */
import { blockSizeProblem } from '../common/block-size.js';
import { ensurePrivateDirectory } from '../common/dirs.js';
import { setDefaultLogLevel } from '../common/log.js';
import { formatSize } from '../common/size.js';
import { ArgumentError, REPLICATION_RANGE, runMain } from './args.js';
import { clusterCommands } from './cluster-commands.js';
import { dispatch, type Command } from './commands.js';
import { dumpLoadCommands } from './dump-load-commands.js';
import { fsckCommand } from './fsck-command.js';
import { keyCommands } from './key-commands.js';
import { dataDirFlag, etcdFlags, etcdOrSingleNode } from './common-flags.js';
import { snapshotCommands } from './snapshot-commands.js';
import { torusFor } from './torus-client.js';
import { volumeCommands } from './volume-commands.js';

const commands: Command[] = [
  {
    words: ['init'],
    spec: {
      usage: 'init [--block-size SIZE] [-C ETCD [--replication N]]',
      summary:
        'initialise settings: block size; with -C, the cluster in etcd and its ring (replication)',
      flags: {
        'data-dir': dataDirFlag,
        'block-size': {
          type: 'size',
          help: 'block size for every volume (default 64KiB)',
          check: blockSizeProblem,
        },
        replication: {
          type: 'integer',
          help: 'with -C: copies of each block the ring asks for (default 2)',
          ...REPLICATION_RANGE,
        },
        ...etcdFlags,
      },
    },
    async run(args) {
      const etcd = await etcdOrSingleNode(args);
      const replication = args.values.replication as number | undefined;
      if (replication !== undefined && !etcd)
        throw new ArgumentError('--replication needs -C/--etcd: a single node keeps one copy');
      // A single node's directory is the owner's only from the start (torusd keeps it so).
      if (!etcd) await ensurePrivateDirectory(args.values['data-dir'] as string, 'data directory');
      const admin = await torusFor(args.values['data-dir'] as string, undefined, etcd);
      const { blockSize, created, ring } = await admin.init(
        args.values['block-size'] as number | undefined,
        replication,
      );
      const ringText = ring
        ? `, ${ring.description.type} ring version ${ring.description.version}, replication ${ring.description.replication}`
        : '';
      process.stdout.write(
        `${created ? 'initialised' : 'already initialised'}: ${admin.where} (block size ${formatSize(blockSize)}${ringText})\n`,
      );
    },
  },
  ...volumeCommands('create-block'),
  ...snapshotCommands(),
  ...dumpLoadCommands(),
  ...clusterCommands(),
  fsckCommand(),
  ...keyCommands(),
  {
    words: ['status'],
    spec: {
      usage: 'status',
      summary: "show the running node's store, cache and volumes",
      flags: { 'data-dir': dataDirFlag },
    },
    async run(args) {
      const admin = await torusFor(args.values['data-dir'] as string, undefined, undefined);
      const status = await admin.status();
      if (!status) {
        process.stderr.write(`torusctl: no torusd is running for ${admin.dataDir}\n`);
        return 1;
      }
      process.stdout.write(JSON.stringify(status, null, 2) + '\n');
    },
  },
];

setDefaultLogLevel('warn');
runMain('torusctl', () =>
  dispatch(
    'torusctl',
    'Administer Torus: volumes, cluster settings, node status.',
    commands,
    process.argv.slice(2),
  ),
);
