/**
 * How PeerClient puts a request on the wire: the frame of each opcode,
 * encoded into the connection's outbound slab (outbound.ts) where it is
 * small, block data written from the caller's own buffers.
 *
 * Encoders only commit whole frames, so a request that cannot be encoded
 * (a block the caller changed while it waited for the connection) throws
 * and leaves nothing of itself in the stream.
 */
import type { BlockRef } from '../../model/block-ref.js';
import type { Outbound } from './outbound.js';
import {
  BLOCK_DESCRIPTOR_SIZE,
  GET_BLOCK_FRAME_SIZE,
  GET_RANGE_FRAME_SIZE,
  HEADER_SIZE,
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
  OP_SYNC,
  PUT_BLOCKS_HEAD_SIZE,
  checkPutBatch,
  checkPatchBatch,
  MAX_BATCH_REFS,
  opName,
  encodeBlockDescriptor,
  encodeEmptyFrame,
  encodeGetBlock,
  encodeGetRange,
  encodeCommitVolume,
  encodeIntentAppendFrame,
  encodeIntentCovered,
  encodeIntentSeal,
  encodePutBlocksHead,
  encodePutPatchesFrame,
  encodeRefsFrame,
  type BlockRange,
  type IntentCovered,
  type IntentSealRequest,
  type WireBlock,
  type WirePatch,
} from './wire.js';

/**
 * Throws RangeError for a request that may not be sent as it is (a batch
 * over the protocol's limits, a malformed block or patch), before anything
 * of it is queued or encoded.
 */
/** A HAS_BLOCKS request's argument: refs, and their copy hashes ([lo, hi] each) when asked by hash. */
export interface HasRequest {
  refs: readonly BlockRef[];
  hashes?: Uint32Array;
}

export function checkRequest(op: number, arg: unknown): void {
  if (op === OP_PUT_BLOCKS) checkPutBatch(arg as WireBlock[]);
  else if (op === OP_PUT_PATCHES) checkPatchBatch(arg as WirePatch[]);
  else if (op === OP_HAS_BLOCKS || op === OP_DELETE_BLOCKS) {
    const refs = op === OP_HAS_BLOCKS ? (arg as HasRequest).refs : (arg as BlockRef[]);
    if (refs.length > MAX_BATCH_REFS)
      throw new RangeError(`${opName(op)} of ${refs.length} refs (max ${MAX_BATCH_REFS})`);
  }
}

/** Encode request `id` of opcode `op` with its argument (a ref, refs, blocks, or nothing) into `out`. */
export function encodeRequest(out: Outbound, op: number, id: number, arg: unknown): void {
  switch (op) {
    case OP_GET_BLOCK: {
      const at = out.claim(GET_BLOCK_FRAME_SIZE);
      encodeGetBlock(out.slab, at, id, arg as BlockRef);
      out.commit(GET_BLOCK_FRAME_SIZE);
      break;
    }
    case OP_GET_RANGE: {
      const at = out.claim(GET_RANGE_FRAME_SIZE);
      encodeGetRange(out.slab, at, id, arg as BlockRange);
      out.commit(GET_RANGE_FRAME_SIZE);
      break;
    }
    case OP_PUT_BLOCKS: {
      const blocks = arg as WireBlock[];
      // Checked whole when the request was made, so no encoder throws halfway through the frame.
      const payload = checkPutBatch(blocks);
      let at = out.claim(PUT_BLOCKS_HEAD_SIZE + BLOCK_DESCRIPTOR_SIZE);
      encodePutBlocksHead(out.slab, at, id, blocks.length, payload);
      out.commit(PUT_BLOCKS_HEAD_SIZE);
      for (const block of blocks) {
        at = out.claim(BLOCK_DESCRIPTOR_SIZE);
        encodeBlockDescriptor(out.slab, at, block);
        out.commit(BLOCK_DESCRIPTOR_SIZE);
        out.write(block.data);
      }
      break;
    }
    case OP_PUT_PATCHES: {
      // Checked whole when the request was made (PeerClient.putPatches): this does not throw.
      const [head, ...rest] = encodePutPatchesFrame(id, arg as WirePatch[]);
      out.writeFrame(head as Buffer);
      for (const chunk of rest) out.write(chunk);
      break;
    }
    case OP_HAS_BLOCKS: {
      const { refs, hashes } = arg as HasRequest;
      out.writeFrame(encodeRefsFrame(op, id, refs, hashes));
      break;
    }
    case OP_DELETE_BLOCKS: {
      out.writeFrame(encodeRefsFrame(op, id, arg as BlockRef[]));
      break;
    }
    case OP_INTENT_APPEND: {
      // Checked whole when the request was made (PeerClient.appendIntents): this does not throw.
      const [head, ...records] = encodeIntentAppendFrame(id, arg as Buffer[]);
      out.writeFrame(head);
      for (const record of records) out.write(record);
      break;
    }
    case OP_INTENT_SEAL:
      out.writeFrame(encodeIntentSeal(id, arg as IntentSealRequest));
      break;
    case OP_INTENT_COVERED:
      out.writeFrame(encodeIntentCovered(id, arg as IntentCovered));
      break;
    case OP_COMMIT_VOLUME:
      out.writeFrame(encodeCommitVolume(id, arg as number));
      break;
    case OP_PING:
    case OP_SYNC: {
      const at = out.claim(HEADER_SIZE);
      encodeEmptyFrame(out.slab, at, op, 0, id);
      out.commit(HEADER_SIZE);
      break;
    }
  }
}
