/**
 * Errors across the thread boundary. Structured clone keeps an Error's
 * message but not its class or fields (a MetadataUnavailableError arrives as
 * a plain Error without `retryable`), and callers decide with `instanceof`
 * and `isRetryable`. So an error crosses as its name, message, stack, its own
 * primitive fields and its cause, and is rebuilt on the other side as a real
 * Error whose prototype is the class of that name: `instanceof`, `name`,
 * `retryable`, `leaseId`, `errno`… all hold as if it had been thrown here.
 *
 * Only classes listed in KNOWN are rebuilt as themselves: the typed errors of
 * the metadata layer, of src/common/errors.ts and assert.ts, and the built-in ones the
 * store throws for programmer errors (TypeError, RangeError). Anything else
 * arrives as an Error that keeps the original name.
 */
import { InvariantError } from '../../common/assert.js';
import {
  ChecksumError,
  ConflictError,
  IoError,
  NotFoundError,
  StoreFullError,
  UsageError,
} from '../../common/errors.js';
import {
  LeaseLostError,
  LeaseNotFoundError,
  MetadataClosedError,
  MetadataCompactedError,
  MetadataCorruptError,
  MetadataStorageError,
  MetadataUnavailableError,
} from '../metadata/errors.js';

export interface WireError {
  name: string;
  message: string;
  stack: string | undefined;
  /** Own fields with primitive values: retryable, leaseId, errno, requestedRevision… */
  fields: Record<string, string | number | boolean | null> | undefined;
  cause: WireError | { value: string | number | boolean | null } | undefined;
}

type ErrorClass = abstract new (...args: never[]) => Error;

const KNOWN: ReadonlyMap<string, ErrorClass> = new Map<string, ErrorClass>(
  (
    [
      MetadataUnavailableError,
      MetadataClosedError,
      MetadataCompactedError,
      MetadataCorruptError,
      MetadataStorageError,
      LeaseNotFoundError,
      LeaseLostError,
      IoError,
      ChecksumError,
      StoreFullError,
      UsageError,
      NotFoundError,
      ConflictError,
      InvariantError,
      Error,
      TypeError,
      RangeError,
      SyntaxError,
    ] as ErrorClass[]
  ).map((cls) => [cls.name, cls]),
);

/** A cause chain longer than this is cut (a cycle would otherwise never end). */
const MAX_DEPTH = 4;

export function toWire(err: unknown, depth = 0): WireError {
  if (!(err instanceof Error))
    return {
      name: 'Error',
      message: String(err),
      stack: undefined,
      fields: undefined,
      cause: undefined,
    };
  let fields: WireError['fields'];
  for (const key of Object.keys(err)) {
    if (key === 'name' || key === 'message' || key === 'stack' || key === 'cause') continue;
    const value = (err as unknown as Record<string, unknown>)[key];
    if (
      value === null ||
      typeof value === 'string' ||
      typeof value === 'number' ||
      typeof value === 'boolean'
    )
      (fields ??= {})[key] = value;
  }
  const cause = err.cause;
  return {
    name: err.name,
    message: err.message,
    stack: err.stack,
    fields,
    cause:
      cause === undefined || depth >= MAX_DEPTH
        ? undefined
        : cause instanceof Error
          ? toWire(cause, depth + 1)
          : {
              value:
                cause === null ||
                typeof cause === 'string' ||
                typeof cause === 'number' ||
                typeof cause === 'boolean'
                  ? cause
                  : String(cause),
            },
  };
}

/**
 * A real Error (native, with a stack slot) whose prototype is that of the
 * class named by `wire.name`, carrying the sender's fields and stack. No
 * constructor of ours runs: the fields come from the sender as they were.
 */
export function fromWire(wire: WireError): Error {
  const cls = KNOWN.get(wire.name) ?? Error;
  const cause =
    wire.cause === undefined
      ? undefined
      : 'value' in wire.cause
        ? wire.cause.value
        : fromWire(wire.cause);
  const err: Error = Reflect.construct(
    Error,
    cause === undefined ? [wire.message] : [wire.message, { cause }],
    cls,
  );
  if (wire.fields) Object.assign(err, wire.fields);
  // A class field `name` is an own field and came with `fields`; a built-in
  // keeps it on the prototype. An unknown class keeps its name this way.
  if (err.name !== wire.name)
    Object.defineProperty(err, 'name', {
      value: wire.name,
      writable: true,
      configurable: true,
      enumerable: true,
    });
  if (wire.stack !== undefined) err.stack = wire.stack;
  return err;
}
