/**
 * torusblk: block-volume tools, as in the original (`torusblk volume create
 * NAME SIZE`). Attaching through the kernel (`torusblk nbd`) and serving
 * without local storage (`torusblk nbdserve`) need the cluster.
 */
import { UsageError } from '../common/errors.js';
import { runMain } from './args.js';
import { dispatch, type Command } from './commands.js';
import { etcdFlags } from './common-flags.js';
import { volumeCommands } from './volume-commands.js';

const commands: Command[] = [
  ...volumeCommands('create'),
  {
    words: ['nbd'],
    spec: {
      usage: 'nbd VOLUME [/dev/nbdX]',
      summary: 'attach a volume through the kernel NBD client',
      positionals: ['VOLUME', '[DEVICE]'],
      minPositionals: 1,
      flags: { ...etcdFlags },
    },
    async run() {
      throw new UsageError('attaching through the kernel needs a cluster client (not in this release); meanwhile: nbd-client -N VOLUME 127.0.0.1 10809 /dev/nbd0, with torusd running');
    },
  },
];

runMain('torusblk', () => dispatch('torusblk', 'Torus block-volume tools.', commands, process.argv.slice(2)));
