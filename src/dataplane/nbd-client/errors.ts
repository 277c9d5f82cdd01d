/**
 * What an NBD client call can fail with. A server's refusal of one request is
 * an `NbdRequestError` (an `IoError`, so it carries the errno name and the
 * rest of the system handles it like any I/O error); the connection itself
 * failing (refused, dropped, a reply that breaks the protocol) is an
 * `NbdConnectionError`, and every request pending on it fails with one; a
 * handshake the server will not complete is an `NbdHandshakeError`. An export
 * the server does not have is the project's `NotFoundError`.
 */
import { IoError, type Errno } from '../../common/errors.js';
import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  commandName,
  errorName,
} from '../nbd/wire.js';

const ERRNO_OF = new Map<number, Errno>([
  [NBD_EPERM, 'EPERM'],
  [NBD_EIO, 'EIO'],
  [NBD_ENOMEM, 'ENOMEM'],
  [NBD_EINVAL, 'EINVAL'],
  [NBD_ENOSPC, 'ENOSPC'],
  [NBD_EOVERFLOW, 'EOVERFLOW'],
  [NBD_ENOTSUP, 'ENOTSUP'],
  [NBD_ESHUTDOWN, 'ESHUTDOWN'],
]);

/** The errno name for an NBD error code; a code the spec does not define is EIO. */
export function nbdErrorToErrno(code: number): Errno {
  return ERRNO_OF.get(code) ?? 'EIO';
}

/** The server answered one request with an error; the connection goes on. */
export class NbdRequestError extends IoError {
  override name = 'NbdRequestError';
  constructor(
    /** The NBD error code as sent (errno holds its name). */
    readonly code: number,
    readonly command: number,
    readonly offset: number,
    readonly length: number,
    /** The message of a structured error chunk, or ''. */
    readonly serverMessage: string,
  ) {
    super(
      nbdErrorToErrno(code),
      `${commandName(command)} of ${length} bytes at ${offset} failed: ${errorName(code)}` +
        (serverMessage ? ` (${serverMessage})` : ''),
    );
  }
}

/** The connection could not be made, was lost, or carried something that is not NBD. */
export class NbdConnectionError extends IoError {
  override name = 'NbdConnectionError';
  constructor(message: string, options?: { cause?: unknown }) {
    super('EIO', message, options);
  }
}

/** The server refused to complete the handshake (TLS required, policy, a required option refused). */
export class NbdHandshakeError extends Error {
  override name = 'NbdHandshakeError';
}
