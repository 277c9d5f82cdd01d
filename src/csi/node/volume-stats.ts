/**
 * NodeGetVolumeStats' numbers and condition: bytes and inodes of a mounted
 * filesystem (statfs), the size of a published block device, and whether
 * the NBD server under the attachment answers at all.
 */
import { stat, statfs } from 'node:fs/promises';
import { connect } from 'node:net';
import { notFound } from '../csi-error.js';
import { blockDeviceSize } from './block-device.js';
import type { NbdAddress } from './nbd-address.js';

export interface VolumeUsage {
  unit: 'BYTES' | 'INODES';
  total: string;
  available: string;
  used: string;
}

export async function volumeUsage(path: string): Promise<VolumeUsage[]> {
  let info;
  try {
    info = await stat(path);
  } catch {
    throw notFound(`${path} does not exist: the volume is not published or staged there`);
  }
  if (info.isBlockDevice() || info.isFile()) {
    // A raw block volume: published as its device (bind mounted on a file).
    const total = String(await blockDeviceSize(path));
    return [{ unit: 'BYTES', total, available: '0', used: '0' }];
  }
  const fs = await statfs(path, { bigint: true });
  const bytes = (blocks: bigint) => String(blocks * fs.bsize);
  return [
    {
      unit: 'BYTES',
      total: bytes(fs.blocks),
      available: bytes(fs.bavail),
      used: bytes(fs.blocks - fs.bfree),
    },
    {
      unit: 'INODES',
      total: String(fs.files),
      available: String(fs.ffree),
      used: String(fs.files - fs.ffree),
    },
  ];
}

/**
 * The server greets a new connection with NBDMAGIC at once (fixed newstyle);
 * seeing it is proof enough that it answers. The connection is dropped before
 * any option, so no export is opened or locked.
 */
export function nbdServerAnswers(address: NbdAddress, timeoutMs = 5_000): Promise<boolean> {
  return new Promise((done) => {
    const socket = 'path' in address ? connect(address.path) : connect(address.port, address.host);
    let received = Buffer.alloc(0);
    const finish = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      done(ok);
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    socket.on('data', (d: Buffer) => {
      received = Buffer.concat([received, d]);
      if (received.length >= 8) finish(received.subarray(0, 8).toString('latin1') === 'NBDMAGIC');
    });
    socket.on('error', () => finish(false));
    socket.on('close', () => finish(false));
  });
}
