/**
 * PUT_PATCHES: blocks sent as patches (blocks/patches.ts) — only the 4 KiB
 * sub-blocks a write changed, over a base the receiver holds too (the same
 * ref: refs are never reused for other content). A 4 KiB write into a 64
 * KiB block then moves 4 KiB to each replica instead of 64.
 * Part of wire.ts (see there for the protocol's rules); import from wire.ts.
 *
 * Request payload: count u32, then per patch
 *   0 ref (16) | 16 base volume u32 | 20 base generation u32 |
 *   24 older volume u32 | 28 older generation u32 | 32 present u32 |
 *   36 entry length u32 | 40 entry | data length u32 | data
 * - base: the block of the same index and an earlier generation whose
 *   sub-blocks the patch does not hold; when that is itself a patch (a
 *   writer without a copy knows only the block map's ref) the receiver
 *   goes over its base and keeps its other sub-blocks. The same generation
 *   names the patch of this very ref the writer spilled earlier, which the
 *   new one replaces (over its base, keeping its other sub-blocks);
 * - older: the patch this one replaces over the same base (0, 0: none) —
 *   a base every version has let go of is held only for its patches, out
 *   of the receiver's index, and found through the older patch;
 * - present: the sub-blocks `data` holds, in order (present ≠ 0, data
 *   exactly 4 KiB per bit);
 * - entry: either the block's sub-sums entry (blocks/sub-sums.ts, 16 + 4n
 *   bytes) sealed with its tree hash — the hash the block map records —
 *   from a writer that holds the base; or, from one that does not, 8 + 4c
 *   bytes (c present sub-blocks; the two lengths never meet): the base's
 *   hash as the block map has it (u64, high half first) and each present
 *   sub-block's xxh32 (u32 each): the receiver checks its base has that
 *   hash, makes the entry from its base's and these sums, and answers the
 *   tree hash — the writer compares the replicas' answers.
 * Reply payload: count u32, one status byte per patch — STATUS_OK
 * (stored), STATUS_NOT_FOUND (no such base here: send it whole),
 * STATUS_CHECKSUM (a sub-block, the entry, or the base's sums disagree) —
 * then per patch the tree hash it was stored with (u64, high half first;
 * 0 when not stored).
 * A node that predates the opcode answers BAD_REQUEST: the writer sends
 * those blocks whole.
 */
import type { BlockRef } from '../../model/block-ref.js';
import { subBlockCount } from '../blocks/patches.js';
import { SUB_BLOCK_SIZE } from '../blocks/sub-sums.js';
import { REF_SIZE, decodeRef, encodeRef } from './wire-blocks.js';
import {
  FLAG_REPLY,
  HEADER_SIZE,
  MAX_BATCH_BLOCKS,
  MAX_PAYLOAD_BYTES,
  OP_PUT_PATCHES,
  STATUS_CHECKSUM,
  STATUS_NOT_FOUND,
  STATUS_OK,
  TbpPayloadError,
  encodeHeader,
} from './wire-frame.js';

/** Largest sub-sums entry: 16 bytes and a sum for each of a patch's at most 32 sub-blocks. */
export const MAX_PATCH_ENTRY_BYTES = 16 + 4 * 32;

/** A block as a patch, as it travels. On the server the byte fields are views into the frame. */
export interface WirePatch {
  ref: BlockRef;
  base: { volumeId: number; generation: number };
  /** The patch this one replaces over the same base; volumeId and generation 0 for none. */
  older: { volumeId: number; generation: number };
  /** The sub-blocks `data` holds (bit i: sub-block i). */
  present: number;
  /** The whole block's sub-sums entry, sealed with its tree hash. */
  entry: Uint8Array;
  /** The present sub-blocks, in order. */
  data: Uint8Array;
}

/** The entry field of a patch from a writer without the base: the base's hash and the present sub-blocks' sums. */
export function encodePatchSums(
  baseHashLo: number,
  baseHashHi: number,
  sums: readonly number[],
): Buffer {
  const out = Buffer.allocUnsafe(8 + 4 * sums.length);
  out.writeUInt32BE(baseHashHi >>> 0, 0);
  out.writeUInt32BE(baseHashLo >>> 0, 4);
  sums.forEach((sum, k) => out.writeUInt32BE(sum >>> 0, 8 + 4 * k));
  return out;
}

/** Does the patch carry sums (encodePatchSums) rather than a whole entry? */
export function carriesSums(patch: Pick<WirePatch, 'entry' | 'present'>): boolean {
  return patch.entry.length === 8 + 4 * subBlockCount(patch.present);
}

/** The base hash and the k-th present sub-block's sum of a patch that carriesSums(). */
export function patchSums(entry: Uint8Array): {
  baseHashLo: number;
  baseHashHi: number;
  sum: (k: number) => number;
} {
  const view = new DataView(entry.buffer, entry.byteOffset, entry.byteLength);
  return {
    baseHashHi: view.getUint32(0),
    baseHashLo: view.getUint32(4),
    sum: (k) => view.getUint32(8 + 4 * k),
  };
}

/** A patch's fixed fields before its entry: ref, base, older, present, entry length. */
const PATCH_HEAD_SIZE = REF_SIZE + 24;

/** What is wrong with a patch (as a sender must not send it), or undefined. */
function patchProblem(patch: WirePatch): string | undefined {
  if (patch.present >>> 0 === 0) return 'a patch of no sub-blocks';
  if (patch.data.length !== subBlockCount(patch.present) * SUB_BLOCK_SIZE)
    return `a patch of ${subBlockCount(patch.present)} sub-blocks with ${patch.data.length} bytes`;
  if (
    !carriesSums(patch) &&
    (patch.entry.length < 20 || patch.entry.length > MAX_PATCH_ENTRY_BYTES)
  )
    return `a sub-sums entry of ${patch.entry.length} bytes`;
  // A clone's base is its ancestor's, whose generations are its own.
  if (patch.base.volumeId === patch.ref.volumeId && patch.base.generation > patch.ref.generation)
    return `a base of generation ${patch.base.generation} under generation ${patch.ref.generation}`;
  return undefined;
}

/** Payload bytes of a PUT_PATCHES carrying these patches. */
function payloadLength(patches: readonly WirePatch[]): number {
  let length = 4;
  for (const p of patches) length += PATCH_HEAD_SIZE + p.entry.length + 4 + p.data.length;
  return length;
}

/** Throws RangeError unless `patches` can go in one PUT_PATCHES; returns the payload length. */
export function checkPatchBatch(patches: readonly WirePatch[]): number {
  if (patches.length === 0 || patches.length > MAX_BATCH_BLOCKS)
    throw new RangeError(`PUT_PATCHES of ${patches.length} patches (1..${MAX_BATCH_BLOCKS})`);
  for (const patch of patches) {
    const problem = patchProblem(patch);
    if (problem) throw new RangeError(problem);
  }
  const payload = payloadLength(patches);
  if (payload > MAX_PAYLOAD_BYTES)
    throw new RangeError(`PUT_PATCHES payload of ${payload} bytes exceeds ${MAX_PAYLOAD_BYTES}`);
  return payload;
}

/**
 * A whole PUT_PATCHES frame as chunks to write in order: one allocation
 * holds the header, the count and every patch's fields and entry; each
 * patch's data is its own buffer, not copied.
 */
export function encodePutPatchesFrame(
  requestId: number,
  patches: readonly WirePatch[],
): Uint8Array[] {
  const payload = checkPatchBatch(patches);
  let headBytes = HEADER_SIZE + 4;
  for (const p of patches) headBytes += PATCH_HEAD_SIZE + p.entry.length + 4;
  const head = Buffer.allocUnsafe(headBytes);
  encodeHeader(head, 0, OP_PUT_PATCHES, 0, STATUS_OK, requestId, payload);
  head.writeUInt32BE(patches.length, HEADER_SIZE);
  const chunks: Uint8Array[] = [];
  let start = 0;
  let at = HEADER_SIZE + 4;
  for (const p of patches) {
    encodeRef(head, at, p.ref);
    head.writeUInt32BE(p.base.volumeId, at + 16);
    head.writeUInt32BE(p.base.generation, at + 20);
    head.writeUInt32BE(p.older.volumeId, at + 24);
    head.writeUInt32BE(p.older.generation, at + 28);
    head.writeUInt32BE(p.present >>> 0, at + 32);
    head.writeUInt32BE(p.entry.length, at + 36);
    head.set(p.entry, at + PATCH_HEAD_SIZE);
    at += PATCH_HEAD_SIZE + p.entry.length;
    head.writeUInt32BE(p.data.length, at);
    at += 4;
    chunks.push(head.subarray(start, at), p.data);
    start = at;
  }
  return chunks;
}

/** The patches of a PUT_PATCHES payload, as views into it; TbpPayloadError for anything malformed. */
export function decodePutPatches(payload: Buffer): WirePatch[] {
  if (payload.length < 4) throw new TbpPayloadError('PUT_PATCHES without a patch count');
  const count = payload.readUInt32BE(0);
  if (count === 0 || count > MAX_BATCH_BLOCKS)
    throw new TbpPayloadError(`PUT_PATCHES of ${count} patches (1..${MAX_BATCH_BLOCKS})`);
  const patches: WirePatch[] = [];
  let at = 4;
  for (let i = 0; i < count; i++) {
    if (payload.length - at < PATCH_HEAD_SIZE)
      throw new TbpPayloadError(`PUT_PATCHES cut short in patch ${i}`);
    const ref = decodeRef(payload, at);
    const entryLength = payload.readUInt32BE(at + 36);
    const entryAt = at + PATCH_HEAD_SIZE;
    if (entryLength > MAX_PATCH_ENTRY_BYTES || payload.length - entryAt < entryLength + 4)
      throw new TbpPayloadError(`PUT_PATCHES patch ${i}: entry of ${entryLength} bytes`);
    const dataLength = payload.readUInt32BE(entryAt + entryLength);
    const dataAt = entryAt + entryLength + 4;
    if (payload.length - dataAt < dataLength)
      throw new TbpPayloadError(`PUT_PATCHES patch ${i}: data runs past the payload`);
    const patch: WirePatch = {
      ref,
      base: { volumeId: payload.readUInt32BE(at + 16), generation: payload.readUInt32BE(at + 20) },
      older: { volumeId: payload.readUInt32BE(at + 24), generation: payload.readUInt32BE(at + 28) },
      present: payload.readUInt32BE(at + 32),
      entry: payload.subarray(entryAt, entryAt + entryLength),
      data: payload.subarray(dataAt, dataAt + dataLength),
    };
    const problem = patchProblem(patch);
    if (problem) throw new TbpPayloadError(`PUT_PATCHES patch ${i}: ${problem}`);
    patches.push(patch);
    at = dataAt + dataLength;
  }
  if (at !== payload.length)
    throw new TbpPayloadError(`${payload.length - at} bytes after the last patch`);
  return patches;
}

const PATCH_STATUSES = new Set([STATUS_OK, STATUS_NOT_FOUND, STATUS_CHECKSUM]);

/** What a PUT_PATCHES stored: per patch a status, and the tree hash [lo, hi] at 2i (0, 0 when not stored). */
export interface PatchResults {
  statuses: Uint8Array;
  hashes: Uint32Array;
}

/** The OK reply: count u32, a status byte per patch, then a tree hash per patch. */
export function encodePutPatchesReply(requestId: number, results: PatchResults): Buffer {
  const n = results.statuses.length;
  const payload = 4 + 9 * n;
  const buf = Buffer.allocUnsafe(HEADER_SIZE + payload);
  encodeHeader(buf, 0, OP_PUT_PATCHES, FLAG_REPLY, STATUS_OK, requestId, payload);
  buf.writeUInt32BE(n, HEADER_SIZE);
  buf.set(results.statuses, HEADER_SIZE + 4);
  for (let i = 0; i < n; i++) {
    const at = HEADER_SIZE + 4 + n + 8 * i;
    buf.writeUInt32BE(results.hashes[2 * i + 1] >>> 0, at);
    buf.writeUInt32BE(results.hashes[2 * i] >>> 0, at + 4);
  }
  return buf;
}

/** The results of `count` patches, from an OK reply's payload. */
export function decodePutPatchesReply(payload: Buffer, count: number): PatchResults {
  if (payload.length !== 4 + 9 * count || payload.readUInt32BE(0) !== count)
    throw new TbpPayloadError(`PUT_PATCHES reply of ${payload.length} bytes for ${count} patches`);
  const statuses = new Uint8Array(payload.subarray(4, 4 + count));
  for (const status of statuses)
    if (!PATCH_STATUSES.has(status))
      throw new TbpPayloadError(`PUT_PATCHES reply with patch status ${status}`);
  const hashes = new Uint32Array(2 * count);
  for (let i = 0; i < count; i++) {
    const at = 4 + count + 8 * i;
    hashes[2 * i + 1] = payload.readUInt32BE(at);
    hashes[2 * i] = payload.readUInt32BE(at + 4);
  }
  return { statuses, hashes };
}
