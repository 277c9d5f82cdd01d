/**
 * `torusblk csi-keeper`: the attachment keeper of the CSI node plugin
 * (src/csi/node/keeper.ts). It starts the FUSE volume file helpers the
 * plugin asks for (`torusblk csi --node --keeper unix://SOCKET`), in a
 * container of its own, so that a crash, restart or upgrade of the plugin's
 * container leaves mounted volumes working. Serves until SIGTERM/SIGINT.
 */
import { isAbsolute } from 'node:path';
import { logger } from '../common/log.js';
import { startKeeper } from '../csi/node/keeper.js';
import { ArgumentError, type FlagSpec } from './args.js';
import type { Command } from './commands.js';
import { unixSocketOf } from './csi-command.js';
import { Closers } from './shutdown.js';

export const csiKeeperFlags: Record<string, FlagSpec> = {
  socket: {
    type: 'string',
    help: 'where the node plugin reaches the keeper (its --keeper): unix:///path/keeper.sock, in a directory both containers mount',
    default: 'unix:///run/torus-csi/keeper.sock',
  },
  'state-dir': {
    type: 'string',
    help: 'the node plugin’s --state-dir, at the same path as the plugin sees it: helpers are started only for its fuse/ directories',
    default: '/var/lib/torus-csi',
  },
};

export const csiKeeperCommand: Command = {
  words: ['csi-keeper'],
  spec: {
    usage: 'csi-keeper [--socket unix:///run/torus-csi/keeper.sock] [--state-dir DIR]',
    summary:
      'keep the CSI node plugin’s FUSE attachments alive across restarts of the plugin (runs until stopped)',
    flags: csiKeeperFlags,
  },
  async run({ values }) {
    const socketPath = unixSocketOf(values.socket as string, 'socket');
    const stateDir = values['state-dir'] as string;
    if (!isAbsolute(stateDir))
      throw new ArgumentError(`--state-dir: expected an absolute path, got "${stateDir}"`);
    const log = logger('csi-keeper');
    const closers = new Closers(log);
    const keeper = await startKeeper({ socketPath, stateDir, log });
    closers.push('mount keeper', async () => {
      await keeper.close();
      const running = keeper.running();
      // In a container the helpers end with this process (the pid namespace goes);
      // on a host they run on, each until its volume is unstaged.
      if (running > 0)
        log.warn(
          { helpers: running },
          'stopping with volume file helpers running: in a container they end with it, and their volumes fail with I/O errors until restaged',
        );
    });
    await closers.untilSignalled('closing the keeper socket');
    log.info('stopped');
    return 0;
  },
};
