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

/**
 * A version commit whose compare-and-swap may or may not have landed, and
 * whose fate could not be learned (the node stopped while the metadata store
 * was away). Its generation must never be written again by this volume
 * object, or the blocks and map pages a landed version references would be
 * overwritten: the volume refuses writes until it is opened afresh.
 */
export class CommitOutcomeUnknownError extends IoError {
  override name = 'CommitOutcomeUnknownError';
  constructor(volume: string, generation: number, options?: { cause?: unknown }) {
    super(
      'EIO',
      `volume ${volume}: whether version ${generation} was committed is not known (the metadata store did not answer); ` +
        'this volume takes no more writes until it is opened again',
      options,
    );
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
 * Refused because a newer writer of the volume has taken over: the request
 * came under a lock epoch below one the receiver has already seen sealed
 * (an intent-log holder after INTENT_SEAL). The sender has lost its lock.
 */
export class StaleTokenError extends ConflictError {
  override name = 'StaleTokenError';
}

/** Set (through markExpected) on the prototypes of the operating-error classes. */
const EXPECTED = Symbol('torus.expectedError');

/**
 * Mark error classes (and so their subclasses) as operating errors: things a
 * running system meets and handles — a full store, a checksum mismatch, a
 * missing volume, a lock held elsewhere — as opposed to bugs. The logger
 * prints them as one line (name, message, code) without a stack.
 */
export function markExpected(...classes: (abstract new (...args: never[]) => Error)[]): void {
  for (const c of classes) Object.defineProperty(c.prototype, EXPECTED, { value: true });
}

/**
 * Whether `err` is an operating error: of a class marked with markExpected,
 * or a Node system error (a failed syscall: ENOSPC, EIO, ECONNRESET…, whose
 * message names the call and the path). One caused by anything else (a bug
 * wrapped in an IoError) is not, so its stack is kept.
 */
export function isExpectedError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const marked = (err as { [EXPECTED]?: boolean })[EXPECTED] === true;
  const systemError = typeof (err as NodeJS.ErrnoException).syscall === 'string';
  if (!marked && !systemError) return false;
  return err.cause === undefined || isExpectedError(err.cause);
}

markExpected(IoError, UsageError, NotFoundError, ConflictError);

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
