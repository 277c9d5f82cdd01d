/**
 * The one error type a CSI handler throws: a gRPC status code and a message
 * that says what to do. The server (server.ts) turns it into the RPC's
 * status; anything else a handler throws becomes INTERNAL with its message,
 * so a bug is visible in the kubelet's events rather than hidden.
 */
import { status } from '@grpc/grpc-js';

export { status as GrpcStatus } from '@grpc/grpc-js';

export class CsiError extends Error {
  override readonly name = 'CsiError';
  constructor(
    readonly code: status,
    message: string,
  ) {
    super(message);
  }
}

/** INVALID_ARGUMENT naming the field: the CSI spec's answer to a missing or malformed field. */
export function invalidArgument(message: string): CsiError {
  return new CsiError(status.INVALID_ARGUMENT, message);
}

export function notFound(message: string): CsiError {
  return new CsiError(status.NOT_FOUND, message);
}

export function failedPrecondition(message: string): CsiError {
  return new CsiError(status.FAILED_PRECONDITION, message);
}
