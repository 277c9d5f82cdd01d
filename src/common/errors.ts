/**
 * Typed errors for the whole system.
 *
 * Inside the server every I/O failure carries a POSIX errno name; only the NBD
 * session turns it into a wire code (see dataplane/nbd/wire.ts errnoToNbd), so
 * layers below never know about the protocol.
 */

import { InvariantError } from './assert.js';

export type Errno =
  'EPERM' | 'EIO' | 'ENOMEM' | 'EINVAL' | 'ENOSPC' | 'EOVERFLOW' | 'ENOTSUP' | 'ESHUTDOWN';

/** An I/O error that is answered to the client with an errno; the session goes on. */
export class IoError extends Error {
  override name = 'IoError';
  constructor(
    readonly errno: Errno,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A block whose stored checksum does not match its data. Never served as data. */
export class ChecksumError extends IoError {
  override name = 'ChecksumError';
  constructor(
    readonly volume: string,
    readonly block: number,
    message: string,
  ) {
    super('EIO', message);
  }
}

/** The local store has no free slot for a new block. */
export class StoreFullError extends IoError {
  override name = 'StoreFullError';
  constructor(message: string) {
    super('ENOSPC', message);
  }
}

/** A user-facing error with a message meant to be printed as is (CLI, API). */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** A named thing (volume, export, key) does not exist. */
export class NotFoundError extends Error {
  override name = 'NotFoundError';
}

/** An operation conflicts with the current state (volume in use, store locked, CAS lost). */
export class ConflictError extends Error {
  override name = 'ConflictError';
}

/**
 * Map any thrown value to the errno an NBD client should see. A broken
 * invariant (InvariantError, see assert.ts) is EIO: that request fails, the
 * session goes on.
 */
export function errnoOf(err: unknown): Errno {
  if (err instanceof IoError) return err.errno;
  if (err instanceof InvariantError) return 'EIO';
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  switch (code) {
    case 'ENOSPC':
    case 'EDQUOT':
      return 'ENOSPC';
    case 'ENOMEM':
      return 'ENOMEM';
    case 'EINVAL':
      return 'EINVAL';
    default:
      return 'EIO';
  }
}
