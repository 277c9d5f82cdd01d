/**
 * VolumeExport: one NBD session's handle on a Volume. Every session on the
 * same volume shares one Volume object, so a FLUSH on any of them commits the
 * writes of all of them — which is what makes CAN_MULTI_CONN true.
 */
import type { NbdExport, ReadViews, WriteZeroesOptions, Extent } from '../nbd/export.js';
import type { Volume } from './volume.js';

/** Largest READ/WRITE payload we accept, advertised in NBD_INFO_BLOCK_SIZE: twice the 32 MiB every client may assume, as nbdkit. */
export const MAX_PAYLOAD = 64 * 1024 * 1024;

export class VolumeExport implements NbdExport {
  /** True when another node holds the volume's write lock (cluster): reads only. */
  readonly readOnly: boolean;
  readonly canMultiConn = true;
  readonly minimumBlockSize = 1;
  readonly preferredBlockSize: number;
  /**
   * The volume's size when the session opened: what its handshake told the
   * client, which NBD has no way to update — a grow reaches the sessions
   * opened after it.
   */
  readonly size: number;
  readonly maximumPayload = MAX_PAYLOAD;
  private closed = false;

  constructor(
    private readonly volume: Volume,
    readonly description: string,
    private readonly onClose: () => void,
    readOnly = false,
  ) {
    this.readOnly = readOnly;
    this.preferredBlockSize = volume.blockSize;
    this.size = volume.size;
    volume.openSessions++;
  }

  get name(): string {
    return this.volume.name;
  }

  read(offset: number, dest: Buffer): Promise<void> {
    return this.volume.read(offset, dest);
  }

  readViews(offset: number, length: number): ReadViews | undefined {
    return this.volume.readViews(offset, length);
  }

  loadViews(offset: number, length: number): Promise<ReadViews | undefined> {
    return this.volume.loadViews(offset, length);
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.volume.write(offset, data, fua);
  }

  flush(): Promise<void> {
    return this.volume.flush();
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.volume.zeroRange(offset, length, fua);
  }

  /**
   * Zeroing is always fast here: whole blocks become holes (metadata only) and
   * partial blocks are zeroed in the cache. NO_HOLE is honoured in what
   * clients can observe (the range reads as zeros), but a thin store keeps no
   * zero blocks, so the range may still report as a hole.
   */
  writeZeroes(offset: number, length: number, options: WriteZeroesOptions): Promise<void> {
    return this.volume.zeroRange(offset, length, options.fua);
  }

  cache(offset: number, length: number): Promise<void> {
    return this.volume.prefetch(offset, length);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.volume.blockStatus(offset, length);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.volume.openSessions--;
    this.onClose();
  }
}
