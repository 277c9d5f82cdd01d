/**
 * The production attach path: the kernel's NBD client, configured by
 * nbd-client over netlink, so the connection belongs to the kernel and
 * outlives both nbd-client and the plugin. A free /dev/nbdN is one whose
 * sysfs `pid` file is absent (not connected).
 *
 * Written from nbd-client(8)'s documented options (this project's test
 * machine has no nbd module, so only the choice of this path is tested):
 *   nbd-client HOST PORT /dev/nbdN -name EXPORT -block-size 4096 -timeout 60 [-readonly]
 *   nbd-client -unix PATH /dev/nbdN -name EXPORT …
 *   nbd-client -d /dev/nbdN        (disconnect)
 *   nbd-client -c /dev/nbdN        (exit 0 while connected)
 *
 * Growing: the kernel device keeps the size it connected with and
 * nbd-client has no way to change it on a live device, so `grow` refuses
 * with a message saying how to get the new size (restage).
 */
import { existsSync, readdirSync } from 'node:fs';
import type { Logger } from '../../common/log.js';
import { NbdClient } from '../../dataplane/nbd-client/client.js';
import type { AttachedDevice, Attacher, AttachmentProblem } from './attach.js';
import { blockDeviceSize } from './block-device.js';
import { runChecked, runCommand } from './command.js';
import { NBD_HANDSHAKE_TIMEOUT_MS, type NbdAddress } from './nbd-address.js';

export class KernelGrowUnsupportedError extends Error {
  override name = 'KernelGrowUnsupportedError';
}

export class KernelNbdAttacher implements Attacher {
  readonly mode = 'kernel';

  constructor(
    private readonly nbd: NbdAddress,
    private readonly log: Logger,
  ) {}

  async attach(exportName: string, readOnly: boolean): Promise<AttachedDevice> {
    // The handshake tells an unknown export (NotFoundError) apart from other failures.
    const probe = await NbdClient.connect(this.nbd, exportName, {
      handshakeTimeoutMs: NBD_HANDSHAKE_TIMEOUT_MS,
    });
    await probe.close();
    const server =
      'path' in this.nbd ? ['-unix', this.nbd.path] : [this.nbd.host, String(this.nbd.port)];
    let lastError: unknown;
    for (const device of freeNbdDevices()) {
      const args = [
        ...server,
        device,
        '-name',
        exportName,
        '-block-size',
        '4096',
        '-timeout',
        '60',
      ];
      if (readOnly) args.push('-readonly');
      try {
        await runChecked('nbd-client', args, 60_000);
        this.log.info({ export: exportName, device }, 'attached via kernel NBD');
        return { mode: 'kernel', device };
      } catch (err) {
        lastError = err; // taken meanwhile by someone else: try the next one
      }
    }
    throw new Error(
      `no free /dev/nbdN could be connected (load nbd with more nbds_max?): ${String(lastError)}`,
    );
  }

  async detach(attached: AttachedDevice): Promise<void> {
    if (!(await this.connected(attached.device))) return;
    await runCommand('blockdev', ['--flushbufs', attached.device], 30_000);
    await runChecked('nbd-client', ['-d', attached.device], 60_000);
  }

  async grow(attached: AttachedDevice): Promise<number> {
    throw new KernelGrowUnsupportedError(
      `${attached.device} keeps the size it connected with (${await blockDeviceSize(attached.device)} bytes): ` +
        'the kernel NBD client cannot grow a live device; the new size shows after the volume is restaged',
    );
  }

  async problem(attached: AttachedDevice): Promise<AttachmentProblem | undefined> {
    if (await this.connected(attached.device)) return undefined;
    return {
      message: `${attached.device} is no longer connected to the NBD server: restage the volume`,
      broken: true,
    };
  }

  private async connected(device: string): Promise<boolean> {
    return (await runCommand('nbd-client', ['-c', device], 30_000)).code === 0;
  }
}

function freeNbdDevices(): string[] {
  return readdirSync('/sys/block')
    .filter((name) => /^nbd\d+$/.test(name) && !existsSync(`/sys/block/${name}/pid`))
    .sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)))
    .map((name) => `/dev/${name}`);
}
