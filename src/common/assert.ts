/**
 * Assertions: invariants checked at run time, kept on in production.
 *
 * An assertion is for a programmer error — a state the code itself must
 * never reach (a slot freed twice, a generation going backwards). An
 * operating error — a full disk, a peer gone, a damaged record read from disk
 * or the network — is not asserted: it is a handled, typed error (errors.ts).
 *
 * A broken invariant throws InvariantError. The request that met it fails
 * (an NBD client sees EIO, see errnoOf) before anything is written on top of
 * the broken state; the server goes on. Nothing here exits the process.
 *
 * Cheap enough for the hot path: a passing assert is one compare and a call,
 * nothing allocated. Give the message as a constant string, or as a function
 * only called on failure; never build a template string per call. Where the
 * message must name values, test first and build it only when failing:
 *   if (state !== expected) invariantBroken(`slot ${slot} is ${state}`);
 */

/** A broken invariant: a bug, not a condition of the disk, the network or the input. */
export class InvariantError extends Error {
  override name = 'InvariantError';
}

/** Throw InvariantError with `message` unless `condition` holds. */
export function assert(condition: boolean, message: string | (() => string)): asserts condition {
  if (!condition) invariantBroken(typeof message === 'string' ? message : message());
}

/** Throw InvariantError: the caller found an invariant broken. */
export function invariantBroken(message: string): never {
  throw new InvariantError(`invariant broken: ${message}`);
}
