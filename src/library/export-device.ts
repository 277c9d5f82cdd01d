/**
 * A volume in this process: the NbdExport a StorageNode opens for a session
 * (node.open(name): a single node's volume, a cluster volume under this
 * node's write lock or read-only with a read pin, a snapshot read-only),
 * called directly — the same calls an NBD session makes, without the socket.
 */
import type { NbdExport } from '../dataplane/nbd/export.js';
import type { BlockDevice, Extent } from './block-device.js';

/** Extent flags of base:allocation. */
const STATE_HOLE = 1;
const STATE_ZERO = 2;
const NO_FUA = false;

export class ExportDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;
  readonly blockSize: number;
  readonly alignment: number;

  constructor(private readonly exported: NbdExport) {
    this.size = exported.size;
    this.readOnly = exported.readOnly;
    this.blockSize = exported.preferredBlockSize;
    this.alignment = exported.minimumBlockSize;
  }

  read(buffer: Buffer, position: number): Promise<void> {
    return this.exported.read(position, buffer);
  }

  write(buffer: Buffer, position: number): Promise<void> {
    return this.exported.write(position, buffer, NO_FUA);
  }

  flush(): Promise<void> {
    return this.exported.flush();
  }

  zero(position: number, length: number): Promise<void> {
    return this.exported.trim(position, length, NO_FUA);
  }

  async extents(position: number, length: number): Promise<Extent[]> {
    const runs = await this.exported.blockStatus(position, length);
    const extents: Extent[] = [];
    let offset = position;
    for (const run of runs) {
      extents.push({
        offset,
        length: run.length,
        hole: (run.flags & STATE_HOLE) !== 0,
        zero: (run.flags & STATE_ZERO) !== 0,
      });
      offset += run.length;
    }
    return extents;
  }

  close(): Promise<void> {
    return this.exported.close();
  }
}
