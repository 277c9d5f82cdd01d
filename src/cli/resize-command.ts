/**
 * `volume resize NAME SIZE [--shrink]`: grow a volume (metadata only, safe
 * while clients are attached), or shrink it (refused without --shrink and
 * while any client has it open). What happens where: node/volume-resize.ts,
 * and offline or on a cluster, src/library/volume-resize-offline.ts.
 */
import { formatSize } from '../common/size.js';
import type { Command } from './commands.js';
import { dataDirFlag, etcdFlags, keyFileFlag, outputFlag } from './common-flags.js';
import { client } from './torus-client.js';
import { outputFormat, sizeArgument } from './volume-commands.js';

export function resizeCommand(): Command {
  return {
    words: ['volume', 'resize'],
    spec: {
      usage: 'volume resize NAME SIZE [--shrink] [-o json]',
      summary:
        'grow a volume (while clients are attached: new connections see the new size), or shrink it with --shrink',
      positionals: ['NAME', 'SIZE'],
      flags: {
        'data-dir': dataDirFlag,
        shrink: {
          type: 'boolean',
          help: 'allow a smaller size: the data past it is lost (refused while any client has the volume open)',
        },
        'key-file': keyFileFlag,
        output: outputFlag,
        ...etcdFlags,
      },
    },
    async run(args) {
      const [name, sizeText] = args.positionals;
      const format = outputFormat(args);
      const size = sizeArgument(sizeText);
      const result = await (
        await client(args)
      ).resizeVolume(name, size, { shrink: Boolean(args.values.shrink) });
      if (format === 'json') {
        process.stdout.write(JSON.stringify(result) + '\n');
        return;
      }
      const { oldSize } = result;
      if (oldSize === size) {
        process.stdout.write(`volume ${name} is already ${formatSize(size)}; nothing changed\n`);
        return;
      }
      const lines = [
        `${size > oldSize ? 'grew' : 'shrank'} volume ${name} from ${formatSize(oldSize)} to ${formatSize(size)}`,
      ];
      if (size > oldSize) {
        // NBD has no resize notice: a connection keeps the size its handshake gave.
        if (result.sessions > 0)
          lines.push(
            `${result.sessions} open connection(s) keep the old size until they reconnect`,
          );
        const holders = [
          ...(result.writer ? [`written by ${result.writer}`] : []),
          ...(result.readers && result.readers.length > 0
            ? [`read on ${result.readers.join(', ')}`]
            : []),
        ];
        if (holders.length > 0)
          lines.push(
            `clients connected now (${holders.join('; ')}) keep the old size until they reconnect`,
          );
      }
      process.stdout.write(lines.join('\n') + '\n');
    },
  };
}
