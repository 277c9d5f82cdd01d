/**
 * torusctl: administer Torus: volumes, cluster settings and membership, node status.
 *
 * `block dump` and `block load` are found and run with only their own module
 * loaded: the other command groups (fsck, keys, cluster, snapshots, volumes)
 * import the metadata stores, catalogs and the ring, ~0.2 s of start-up that
 * a dump or load served by a running torusd never uses. Any other command
 * line gets the whole table.
 */
import { blockSizeProblem } from '../common/block-size.js';
import { ensurePrivateDirectory } from '../common/dirs.js';
import { setDefaultLogLevel } from '../common/log.js';
import { formatSize } from '../common/size.js';
import { ArgumentError, REPLICATION_RANGE, runMain } from './args.js';
import { commandWords, dispatch, findCommand, type Command } from './commands.js';
import { dumpLoadCommands } from './dump-load-commands.js';
import { dataDirFlag, etcdFlags, etcdOrSingleNode } from './common-flags.js';
import { torusFor } from './torus-client.js';

/** Every command, in the order --help lists them. */
async function allCommands(): Promise<Command[]> {
  const [
    { volumeCommands },
    { snapshotCommands },
    { clusterCommands },
    { fsckCommand },
    { keyCommands },
  ] = await Promise.all([
    import('./volume-commands.js'),
    import('./snapshot-commands.js'),
    import('./cluster-commands.js'),
    import('./fsck-command.js'),
    import('./key-commands.js'),
  ]);
  return [
    initCommand,
    ...volumeCommands('create-block'),
    ...snapshotCommands(),
    ...dumpLoadCommands(),
    ...clusterCommands(),
    fsckCommand(),
    ...keyCommands(),
    statusCommand,
  ];
}

/**
 * The commands to dispatch `argv` among: dump/load alone when they are what
 * it names (no other command's words start with theirs, so the whole table
 * would match the same one), else all of them.
 */
async function commandsFor(argv: string[]): Promise<Command[]> {
  const dumpLoad = dumpLoadCommands();
  if (findCommand(dumpLoad, commandWords(dumpLoad, argv))) return dumpLoad;
  return allCommands();
}

const initCommand: Command = {
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
};

const statusCommand: Command = {
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
};

setDefaultLogLevel('warn');
runMain('torusctl', async () => {
  const argv = process.argv.slice(2);
  return dispatch(
    'torusctl',
    'Administer Torus: volumes, cluster settings, node status.',
    await commandsFor(argv),
    argv,
  );
});
