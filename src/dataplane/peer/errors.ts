/**
 * What a caller of PeerClient / PeerGrpcClient can be told. Every error is
 * a PeerError naming the peer and saying whether trying again (this peer
 * later, or another replica) makes sense: `retryable` is what replication
 * and rebalance policies look at, so they never parse messages.
 *
 * Both transports (TBP and gRPC) reject with these same classes; each is
 * converted once, where the reply or the gRPC status is read.
 */
import { markExpected } from '../../common/errors.js';
import {
  STATUS_CHECKSUM,
  STATUS_INTERNAL,
  STATUS_SHUTTING_DOWN,
  STATUS_WRONG_CLUSTER,
  statusName,
} from './wire.js';

export abstract class PeerError extends Error {
  /** True when the same request may succeed later or on another replica. */
  abstract readonly retryable: boolean;
  constructor(
    readonly peer: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`peer ${peer}: ${message}`, options);
  }
}

/**
 * No reply within the request's deadline. The connection stays up (a late
 * reply is dropped) unless the peer has been wholly silent for the client's
 * `deadAfterMs`, in which case it is closed and later requests reconnect.
 */
export class PeerTimeoutError extends PeerError {
  override name = 'PeerTimeoutError';
  readonly retryable = true;
  constructor(
    peer: string,
    readonly op: string,
    readonly timeoutMs: number,
  ) {
    super(peer, `${op} got no reply within ${timeoutMs} ms`);
  }
}

/**
 * Could not connect, the connection was lost with the request outstanding,
 * or the peer was declared dead. Whether the request took effect on the peer
 * is unknown (puts and deletes are idempotent: retry).
 */
export class PeerUnavailableError extends PeerError {
  override name = 'PeerUnavailableError';
  readonly retryable = true;
}

/** The peer sent bytes we cannot parse; that connection is closed. */
export class PeerProtocolError extends PeerError {
  override name = 'PeerProtocolError';
  readonly retryable = true;
}

/**
 * The peer answered with a status other than OK (wire.ts STATUS_*), with its
 * message. NOT_FOUND is not an error for GET (it resolves undefined).
 */
export class PeerStatusError extends PeerError {
  override name = 'PeerStatusError';
  readonly retryable: boolean;
  readonly statusName: string;
  constructor(
    peer: string,
    readonly op: string,
    readonly status: number,
    remoteMessage: string,
  ) {
    super(peer, `${op} failed with ${statusName(status)}: ${remoteMessage}`);
    this.statusName = statusName(status);
    this.retryable = RETRYABLE.has(status);
  }
}

/**
 * Which statuses are worth retrying: CHECKSUM means the bytes were damaged on
 * the way (the sender verified them), INTERNAL and SHUTTING_DOWN are the
 * peer's passing trouble. NO_SPACE, BAD_REQUEST, NOT_FOUND will not change by
 * asking the same peer again.
 */
const RETRYABLE = new Set([STATUS_CHECKSUM, STATUS_INTERNAL, STATUS_SHUTTING_DOWN]);

/** HELLO refused: the peer belongs to another cluster. Never retryable; a configuration error. */
export class PeerWrongClusterError extends PeerStatusError {
  override name = 'PeerWrongClusterError';
}

/** The peer answered HELLO with another node id than the one we meant to reach (an address reused). */
export class PeerIdentityError extends PeerError {
  override name = 'PeerIdentityError';
  readonly retryable = false;
}

export function statusError(
  peer: string,
  op: string,
  status: number,
  message: string,
): PeerStatusError {
  return status === STATUS_WRONG_CLUSTER
    ? new PeerWrongClusterError(peer, op, status, message)
    : new PeerStatusError(peer, op, status, message);
}

// A dead, slow or foreign peer is an operating condition, logged without a stack;
// a protocol error (a bug, or a hostile peer) keeps its stack.
markExpected(PeerTimeoutError, PeerUnavailableError, PeerStatusError, PeerIdentityError);
