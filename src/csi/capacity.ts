/**
 * Sizes: a CSI CapacityRange → the bytes of a Torus volume. Sizes are
 * rounded up to the pool's block size (a volume is made of whole blocks);
 * no range, or a zero one, means DEFAULT_VOLUME_BYTES; anything beyond
 * MAX_VOLUME_BYTES is OUT_OF_RANGE (2^63 is a typo, not a plan).
 * int64 fields arrive as decimal strings (handlers.ts LOADER_OPTIONS).
 */
import { CsiError, GrpcStatus, invalidArgument } from './csi-error.js';
import type { CsiMessage } from './handlers.js';

const GiB = 2 ** 30;
/** The size of a volume whose claim names none (Kubernetes always does; other COs may not). */
export const DEFAULT_VOLUME_BYTES = GiB;
/** The largest volume the driver creates: 1 PiB, far below where byte offsets stop being exact in a double. */
export const MAX_VOLUME_BYTES = 2 ** 50;

export function outOfRange(message: string): CsiError {
  return new CsiError(GrpcStatus.OUT_OF_RANGE, message);
}

/** An int64 field as a number of bytes; 0 when absent. */
export function bytesField(value: unknown, field: string): number {
  if (value === undefined || value === null || value === '') return 0;
  const text = String(value);
  if (!/^-?\d+$/.test(text))
    throw invalidArgument(`${field} must be a whole number of bytes, got "${text}"`);
  if (text.startsWith('-')) throw invalidArgument(`${field} must not be negative, got ${text}`);
  const bytes = Number(text);
  if (!Number.isSafeInteger(bytes) || bytes > MAX_VOLUME_BYTES)
    throw outOfRange(
      `${field} ${text} is beyond the largest Torus volume (${MAX_VOLUME_BYTES} bytes, 1 PiB)`,
    );
  return bytes;
}

export interface CapacityRange {
  /** 0: not given. */
  required: number;
  /** 0: no limit. */
  limit: number;
}

export function capacityRangeOf(range: CsiMessage | null | undefined): CapacityRange {
  const required = bytesField(range?.required_bytes, 'capacity_range.required_bytes');
  const limit = bytesField(range?.limit_bytes, 'capacity_range.limit_bytes');
  if (limit > 0 && required > limit)
    throw outOfRange(`capacity_range.required_bytes ${required} is above limit_bytes ${limit}`);
  return { required, limit };
}

export function roundUp(bytes: number, unit: number): number {
  return Math.ceil(bytes / unit) * unit;
}

/** The size to create for `range`: required rounded up, else the default (or the limit, rounded down, when smaller). */
export function sizeFor(range: CapacityRange, blockSize: number): number {
  let size = range.required > 0 ? roundUp(range.required, blockSize) : DEFAULT_VOLUME_BYTES;
  if (range.limit > 0 && size > range.limit) {
    if (range.required > 0)
      throw outOfRange(
        `capacity_range: ${range.required} bytes rounded up to the block size (${blockSize}) is ${size}, above limit_bytes ${range.limit}`,
      );
    size = Math.floor(range.limit / blockSize) * blockSize;
    if (size === 0)
      throw outOfRange(
        `capacity_range.limit_bytes ${range.limit} is below one block (${blockSize} bytes)`,
      );
  }
  if (size > MAX_VOLUME_BYTES)
    throw outOfRange(
      `${size} bytes is beyond the largest Torus volume (${MAX_VOLUME_BYTES} bytes)`,
    );
  return size;
}

/** Does an existing volume of `size` bytes satisfy `range`? (CreateVolume's idempotency.) */
export function satisfies(size: number, range: CapacityRange): boolean {
  return size >= range.required && (range.limit === 0 || size <= range.limit);
}
