/**
 * torusblk: block-volume tools, as in the original: `volume create NAME
 * SIZE`, `nbdserve` (serve every volume of a cluster over NBD from a machine
 * without storage of its own) and `nbd VOLUME [/dev/nbdX]` (the same, bound
 * to the kernel's NBD client over a private unix socket).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UsageError } from '../common/errors.js';
import { logger } from '../common/log.js';
import { ArgumentError, runMain } from './args.js';
import { dispatch, type Command } from './commands.js';
import { csiCommand } from './csi-command.js';
import { csiKeeperCommand } from './csi-keeper-command.js';
import { nbdserveFlags, startNbdServe } from './nbdserve.js';
import { volumeCommands } from './volume-commands.js';

const commands: Command[] = [
  ...volumeCommands('create'),
  {
    words: ['nbdserve'],
    spec: {
      usage: 'nbdserve [-l HOST:PORT]',
      summary: 'serve every volume of the cluster over NBD, storing nothing here (a client node)',
      flags: nbdserveFlags,
    },
    async run(args) {
      const serving = await startNbdServe(args);
      await serving.closers.untilSignalled(
        'draining NBD clients, committing acknowledged writes, releasing write locks',
      );
      logger('torusblk').info('stopped');
      return 0;
    },
  },
  {
    words: ['nbd'],
    spec: {
      usage: 'nbd VOLUME [/dev/nbdX]',
      summary:
        'attach a volume as a kernel block device through nbd-client (runs until stopped, then detaches)',
      positionals: ['VOLUME', '[DEVICE]'],
      minPositionals: 1,
      flags: nbdserveFlags,
    },
    async run(args) {
      const [volume, deviceArg] = args.positionals;
      if (deviceArg !== undefined && !/^\/dev\/nbd\d+$/.test(deviceArg))
        throw new ArgumentError(`DEVICE must be /dev/nbdN, got "${deviceArg}"`);
      const device = deviceArg ?? freeNbdDevice();
      if (!existsSync(device))
        throw new UsageError(
          `${device} does not exist: is the kernel's nbd module loaded? (modprobe nbd)`,
        );
      if (spawnSync('nbd-client', ['-V'], { stdio: 'ignore' }).error) {
        throw new UsageError(
          'nbd-client is not installed (Debian/Ubuntu: apt-get install nbd-client); or serve with `torusblk nbdserve` and attach with any NBD client',
        );
      }
      const socketDir = await mkdtemp(join(tmpdir(), 'torusblk-nbd-'));
      const unixPath = join(socketDir, 'nbd.sock');
      // TCP stays on loopback with a free port: the kernel is attached over the unix socket.
      args.values.listen = { host: '127.0.0.1', port: 0 };
      let serving;
      try {
        serving = await startNbdServe(args, { unixPath });
      } catch (err) {
        await rm(socketDir, { recursive: true, force: true });
        throw err;
      }
      serving.closers.push('unix socket dir', () =>
        rm(socketDir, { recursive: true, force: true }),
      );
      const attach = spawnSync(
        'nbd-client',
        ['-unix', unixPath, device, '-N', volume, '-b', '4096'],
        { encoding: 'utf8' },
      );
      if (attach.status !== 0) {
        await serving.closers.closeAll();
        throw new UsageError(
          `nbd-client could not attach ${volume} to ${device}: ${(attach.stderr || attach.stdout || String(attach.error)).trim()}`,
        );
      }
      serving.closers.push('nbd-client detach', async () => {
        // First to run at shutdown: the kernel lets go before the server drains.
        const detach = spawnSync('nbd-client', ['-d', device], { encoding: 'utf8' });
        if (detach.status !== 0)
          logger('torusblk').warn({ device, err: detach.stderr.trim() }, 'nbd-client -d failed');
      });
      process.stdout.write(
        `attached volume ${volume} as ${device}; stop torusblk (SIGTERM/SIGINT) to detach\n`,
      );
      await serving.closers.untilSignalled(`detaching ${device}, committing acknowledged writes`);
      return 0;
    },
  },
  csiCommand,
  csiKeeperCommand,
];

/** The first /dev/nbdN the kernel has no connection on. */
function freeNbdDevice(): string {
  if (!existsSync('/sys/module/nbd')) {
    throw new UsageError(
      'this kernel has no nbd module loaded (modprobe nbd), so a volume cannot be attached as /dev/nbdX here; ' +
        'serve it with `torusblk nbdserve` (or torusd) and use a userspace NBD client (nbdfuse, qemu-nbd, nbdcopy)',
    );
  }
  const devices = readdirSync('/sys/block')
    .filter((d) => /^nbd\d+$/.test(d))
    .sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)));
  for (const d of devices) if (!existsSync(join('/sys/block', d, 'pid'))) return `/dev/${d}`;
  throw new UsageError(
    `every NBD device is in use (${devices.length}); give one explicitly or raise nbds_max`,
  );
}

runMain('torusblk', () =>
  dispatch('torusblk', 'Torus block-volume tools.', commands, process.argv.slice(2)),
);
