/** torusctl: administer a Torus node (volumes, cluster settings, status). */
import { formatSize } from '../common/size.js';
import { AdminClient } from './admin-client.js';
import { runMain } from './args.js';
import { dispatch, type Command } from './commands.js';
import { dataDirFlag } from './common-flags.js';
import { volumeCommands } from './volume-commands.js';

const commands: Command[] = [
  {
    words: ['init'],
    spec: {
      usage: 'init [--block-size SIZE]',
      summary: 'initialise cluster settings (block size) in the metadata store',
      flags: {
        'data-dir': dataDirFlag,
        'block-size': { type: 'size', help: 'block size for every volume (default 64KiB)' },
      },
    },
    async run(args) {
      const admin = new AdminClient(args.values['data-dir'] as string);
      const { blockSize, created } = await admin.init(args.values['block-size'] as number | undefined);
      process.stdout.write(`${created ? 'initialised' : 'already initialised'}: ${admin.dataDir} (block size ${formatSize(blockSize)})\n`);
    },
  },
  ...volumeCommands('create-block'),
  {
    words: ['status'],
    spec: { usage: 'status', summary: 'show the running node\'s store, cache and volumes', flags: { 'data-dir': dataDirFlag } },
    async run(args) {
      const admin = new AdminClient(args.values['data-dir'] as string);
      const status = await admin.status();
      if (!status) {
        process.stderr.write(`torusctl: no torusd is running for ${admin.dataDir}\n`);
        return 1;
      }
      process.stdout.write(JSON.stringify(status, null, 2) + '\n');
    },
  },
];

runMain('torusctl', () => dispatch('torusctl', 'Administer Torus: volumes, cluster settings, node status.', commands, process.argv.slice(2)));
