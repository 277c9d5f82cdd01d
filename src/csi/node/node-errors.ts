/**
 * What the node service's calls fail with, as the gRPC codes the CSI spec
 * gives them: the project's typed errors (and the node layer's own) mapped
 * once, at the handler boundary.
 */
import { ConflictError, NotFoundError, UsageError } from '../../common/errors.js';
import {
  CsiError,
  GrpcStatus,
  failedPrecondition,
  invalidArgument,
  notFound,
} from '../csi-error.js';
import type { CsiHandler, CsiMessage } from '../handlers.js';
import { DeviceInUseError } from './filesystem.js';
import { KeeperUnavailableError } from './keeper-client.js';
import { KernelGrowUnsupportedError } from './kernel-nbd-attach.js';

export function alreadyExists(message: string): CsiError {
  return new CsiError(GrpcStatus.ALREADY_EXISTS, message);
}

/** The project's typed errors as the gRPC codes the spec gives them. */
export function withErrorCodes(handler: CsiHandler): CsiHandler {
  return async (request: CsiMessage) => {
    try {
      return await handler(request);
    } catch (err) {
      if (err instanceof CsiError) throw err;
      const message = (err as Error).message;
      if (err instanceof NotFoundError) throw notFound(message);
      if (err instanceof DeviceInUseError || err instanceof KernelGrowUnsupportedError)
        throw failedPrecondition(message);
      if (err instanceof UsageError) throw invalidArgument(message);
      if (err instanceof ConflictError) throw new CsiError(GrpcStatus.ABORTED, message);
      if (err instanceof KeeperUnavailableError)
        throw new CsiError(GrpcStatus.UNAVAILABLE, message);
      throw err;
    }
  };
}
