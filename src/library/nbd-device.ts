/**
 * A volume over an NBD connection (dataplane/nbd-client): a running
 * torusd's volume through its unix socket, or any export at an address.
 * Zeroing is WRITE_ZEROES (Torus turns it into holes), or plain writes of
 * zeros to a server without it — TRIM alone promises nothing about what the
 * range reads as afterwards.
 */
import { NbdClient, type NbdAddress } from '../dataplane/nbd-client/client.js';
import type { BlockDevice, Extent } from './block-device.js';

/** Shared, never written: zeroing on a server without WRITE_ZEROES allocates nothing per call. */
const ZEROS = Buffer.alloc(1024 * 1024);

export class NbdDevice implements BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;
  readonly blockSize: number;
  readonly alignment: number;

  private constructor(private readonly client: NbdClient) {
    this.size = client.size;
    this.readOnly = client.readOnly;
    this.blockSize = client.preferredBlockSize;
    this.alignment = client.minimumBlockSize;
  }

  /** Connect to export `name` at `address`; NotFoundError when the server has none. */
  static async connect(address: NbdAddress, name: string): Promise<NbdDevice> {
    return new NbdDevice(await NbdClient.connect(address, name));
  }

  read(buffer: Buffer, position: number): Promise<void> {
    return this.client.read(buffer, position);
  }

  write(buffer: Buffer, position: number): Promise<void> {
    return this.client.write(buffer, position);
  }

  flush(): Promise<void> {
    return this.client.flush();
  }

  async zero(position: number, length: number): Promise<void> {
    if (this.client.canWriteZeroes) return this.client.writeZeroes(position, length);
    const end = position + length;
    for (let at = position; at < end; at += ZEROS.length)
      await this.client.write(ZEROS.subarray(0, Math.min(ZEROS.length, end - at)), at);
  }

  extents(position: number, length: number): Promise<Extent[]> {
    return this.client.blockStatus(position, length);
  }

  close(): Promise<void> {
    return this.client.close();
  }

  /** Drop the connection now, failing what is in flight. */
  destroy(): void {
    this.client.destroy();
  }
}
