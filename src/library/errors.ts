/**
 * What a VolumeHandle refuses with, besides RangeError (a request outside
 * the volume, or not aligned): typed so a program can tell them apart.
 */
import { IoError } from '../common/errors.js';

/** A write, trim or flush on a handle opened read-only, or on a volume served read-only. */
export class ReadOnlyVolumeError extends IoError {
  override name = 'ReadOnlyVolumeError';
  constructor(
    readonly volume: string,
    why: string,
  ) {
    super('EPERM', `volume "${volume}" is open read-only (${why}): its content cannot change`);
  }
}

/** A call on a handle after close() began. */
export class HandleClosedError extends Error {
  override name = 'HandleClosedError';
  constructor(readonly volume: string) {
    super(`the handle on volume "${volume}" is closed: open the volume again`);
  }
}
