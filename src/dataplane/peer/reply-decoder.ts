/**
 * What PeerClient accepts from the peer: the answer to its HELLO, and the
 * payload of each OK reply turned into what the caller gets. The counterpart
 * of request-encoder.ts.
 *
 * Contract:
 * - `acceptHello` returns the peer's identity, or throws the PeerError that
 *   fails the connection: a refusal by status, a HELLO that does not decode
 *   (PeerProtocolError), another cluster (PeerWrongClusterError), another
 *   node than the ring said (PeerIdentityError).
 * - `decodeReply` returns the value of an OK reply to a request of opcode
 *   `op` with argument `arg` (a block, a range of one, a bitmap as booleans, a count, or
 *   undefined), or throws a plain Error saying what is wrong with it; the
 *   client makes that a PeerProtocolError and closes the connection. A block
 *   is a view of `payload`, which the caller then keeps.
 */
import type { BlockRef } from '../../model/block-ref.js';
import type { HasRequest } from './request-encoder.js';
import {
  PeerIdentityError,
  PeerProtocolError,
  PeerWrongClusterError,
  statusError,
} from './errors.js';
import {
  OP_DELETE_BLOCKS,
  OP_GET_BLOCK,
  OP_GET_RANGE,
  OP_HAS_BLOCKS,
  OP_COMMIT_VOLUME,
  OP_INTENT_APPEND,
  OP_INTENT_COVERED,
  OP_INTENT_SEAL,
  OP_PING,
  OP_PUT_BLOCKS,
  OP_PUT_PATCHES,
  decodePutPatchesReply,
  OP_SYNC,
  STATUS_OK,
  STATUS_WRONG_CLUSTER,
  decodeBitmapReply,
  decodeBlockReply,
  decodeCountReply,
  decodeErrorMessage,
  decodeHello,
  decodeIntentAppendReply,
  decodeIntentSealReply,
  decodeRangeReply,
  type BlockRange,
} from './wire.js';

/** What the peer said in its HELLO. */
export interface PeerIdentity {
  clusterId: string;
  nodeId: string;
}

/** Who we are willing to talk to: our cluster, and the peer's node id when the ring knows it. */
export interface ExpectedPeer {
  clusterId: string;
  expectedNodeId?: string;
}

/** The identity in the peer's answer to our HELLO (status and payload), if it is one we accept. */
export function acceptHello(
  peer: string,
  expected: ExpectedPeer,
  status: number,
  payload: Buffer,
): PeerIdentity {
  if (status !== STATUS_OK) throw statusError(peer, 'HELLO', status, decodeErrorMessage(payload));
  let hello: PeerIdentity;
  try {
    hello = decodeHello(payload);
  } catch (err) {
    throw new PeerProtocolError(peer, `malformed HELLO reply: ${(err as Error).message}`);
  }
  if (hello.clusterId !== expected.clusterId) {
    throw new PeerWrongClusterError(
      peer,
      'HELLO',
      STATUS_WRONG_CLUSTER,
      `peer is in cluster ${hello.clusterId}, we are in ${expected.clusterId}`,
    );
  }
  if (expected.expectedNodeId !== undefined && hello.nodeId !== expected.expectedNodeId) {
    throw new PeerIdentityError(
      peer,
      `answered as node ${hello.nodeId}, expected ${expected.expectedNodeId}`,
    );
  }
  return hello;
}

/** The value an OK reply of opcode `op` carries for the request whose argument was `arg`. */
export function decodeReply(op: number, arg: unknown, payload: Buffer): unknown {
  switch (op) {
    case OP_GET_BLOCK: {
      const block = decodeBlockReply(payload);
      const ref = arg as BlockRef;
      if (
        block.ref.volumeId !== ref.volumeId ||
        block.ref.generation !== ref.generation ||
        block.ref.index !== ref.index
      ) {
        throw new Error(
          `asked for ${ref.volumeId}/${ref.generation}/${ref.index}, got ${block.ref.volumeId}/${block.ref.generation}/${block.ref.index}`,
        );
      }
      return block;
    }
    case OP_GET_RANGE:
      return decodeRangeReply(payload, arg as BlockRange);
    case OP_HAS_BLOCKS:
      return decodeBitmapReply(payload, (arg as HasRequest).refs.length);
    case OP_DELETE_BLOCKS:
      return decodeCountReply(payload);
    case OP_INTENT_APPEND:
      return decodeIntentAppendReply(payload);
    case OP_INTENT_SEAL:
      return decodeIntentSealReply(payload);
    case OP_PUT_PATCHES:
      return decodePutPatchesReply(payload, (arg as unknown[]).length);
    case OP_PUT_BLOCKS:
    case OP_PING:
    case OP_SYNC:
    case OP_INTENT_COVERED:
    case OP_COMMIT_VOLUME:
      if (payload.length !== 0) throw new Error(`${payload.length}-byte payload on an empty reply`);
      return undefined;
  }
  return undefined;
}
