/**
 * What a VolumeHandle sits on: a volume's bytes, in this process (an NBD
 * export of a StorageNode, export-device.ts) or over an NBD connection
 * (nbd-device.ts). The handle checks every call before it gets here
 * (bounds, alignment, read-only, closed), so a device sees only in-range,
 * aligned requests on an open handle.
 */

/** A run of the volume with one allocation state; `zero` runs read as zeros (holes included). */
export interface Extent {
  /** Byte offset in the volume. */
  offset: number;
  length: number;
  /** Nothing is stored for it (never written, trimmed, or all zeros). */
  hole: boolean;
  /** It reads as zeros. */
  zero: boolean;
}

export interface BlockDevice {
  /** Size in bytes when opened. */
  readonly size: number;
  readonly readOnly: boolean;
  /** The size I/O is best done in (the volume's block size). */
  readonly blockSize: number;
  /** Offsets and lengths must be multiples of this: 1 for Torus, perhaps 512 for another NBD server. */
  readonly alignment: number;
  /** Fill `buffer` with the bytes at `position`. */
  read(buffer: Buffer, position: number): Promise<void>;
  /** Write `buffer` at `position`; the buffer must stay unchanged until this settles. */
  write(buffer: Buffer, position: number): Promise<void>;
  /** Make every completed write durable (a committed version). */
  flush(): Promise<void>;
  /** [position, position + length) reads as zeros afterwards and holds no space. */
  zero(position: number, length: number): Promise<void>;
  /** Allocation of [position, position + length): at least one extent, in order; may stop short. */
  extents(position: number, length: number): Promise<Extent[]>;
  /** Let go (after the handle's last flush). */
  close(): Promise<void>;
}
