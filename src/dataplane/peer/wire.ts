/**
 * TBP, the Torus block protocol: how storage nodes move blocks between each
 * other. Every constant, limit, name table and codec of the framed protocol
 * lives here; nothing here touches a socket.
 *
 * A frame is a fixed 16-byte header and a payload of at most
 * MAX_PAYLOAD_BYTES. Requests and replies share the header; a reply echoes
 * the request's opcode and id, sets FLAG_REPLY and carries a status. Replies
 * may come back in any order (the id pairs them), so one connection carries
 * many requests at once.
 *
 * All integers are big-endian. Block indexes are 64-bit on the wire but must
 * stay below 2^53 (the in-memory BlockRef is a double); a larger one is a bad
 * request, never a silently rounded ref. Hashes are xxh64 as a u64 (high half
 * first), carried as the two u32 halves the rest of the code uses.
 *
 * Hot-path encoders write into a buffer the caller owns (a GET is 32 bytes in
 * the client's outbound slab, a reply head 16 or 76); block data is never
 * copied by an encoder: encodePutBlocksFrame returns the frame as a list of
 * chunks in which each block's bytes are the caller's own buffer.
 *
 * Decoders validate everything they read and throw TbpPayloadError (a bad
 * request: answered with BAD_REQUEST, the connection goes on); a header that
 * makes the stream unreadable is a framing error (checkFrameHeader returns the
 * reason; the connection is closed). Decoded blocks are views into the
 * payload, never copies.
 *
 * The codecs live in one file per part, all exported from here:
 *   wire-frame.ts     header, opcodes, statuses, limits, name tables, errors
 *   wire-blocks.ts    refs and block descriptors
 *   wire-messages.ts  HELLO, PUT_BLOCKS, GET_BLOCK, HAS/DELETE_BLOCKS, empty frames, error replies
 *   wire-ranges.ts    GET_RANGE: part of a block with its sub-sums entry
 *   wire-listing.ts   the gRPC service's listings and frameless payloads
 *   wire-intents.ts   the replicated intent log: INTENT_APPEND, INTENT_SEAL, INTENT_COVERED
 *   wire-patches.ts   PUT_PATCHES: blocks as only their changed sub-blocks
 */
export * from './wire-frame.js';
export * from './wire-blocks.js';
export * from './wire-messages.js';
export * from './wire-ranges.js';
export * from './wire-listing.js';
export * from './wire-intents.js';
export * from './wire-patches.js';
