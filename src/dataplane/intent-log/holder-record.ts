/**
 * The holder log's on-disk format (holder-log.ts): a file header and
 * records, as pure codecs over Buffers (holder-record.test.ts checks them
 * byte by byte). Big-endian, as TBP is: the body of an INTENT record is an
 * intent record exactly as it came in an INTENT_APPEND (peer/wire-intents.ts).
 *
 * File header (HOLDER_HEADER_BYTES at offset 0; records from HOLDER_RECORDS_START):
 *   0   u64  xxh64 of bytes [8, 64), high half first
 *   8   u32  HOLDER_FILE_MAGIC "THLH"
 *   12  u16  HOLDER_FORMAT_VERSION
 *   14  u16  0
 *   16  u32  epoch: records of any other epoch are stale
 *   20  u32  0
 *   24  u64  firstSeq: the holder sequence number of the record at tailPosition
 *   32  u64  fileBytes: the file's preallocated size
 *   40  u64  tailPosition: where a scan starts (0, as logs written before
 *            the log became a ring say: HOLDER_RECORDS_START)
 *   48  16B  zeros
 *
 * Record (HOLDER_FRAME_BYTES, then bodyBytes of body):
 *   0   u64  xxh64 of bytes [8, 32 + min(bodyBytes, 48)), high half first:
 *            the frame and the body's first 48 bytes. An intent record's own
 *            checksum (in those 48 bytes) covers its payload, so a torn
 *            record fails one or the other without hashing its data twice.
 *   8   u32  HOLDER_RECORD_MAGIC "THLR"
 *   12  u8   kind: KIND_INTENT (body: an intent record) or KIND_COVERED
 *            (body: volumeId u32 | token u64 | seq u64, as INTENT_COVERED)
 *   13  3B   zeros
 *   16  u32  epoch (the file header's)
 *   20  u32  bodyBytes
 *   24  u64  seq: the epoch's records are numbered firstSeq, firstSeq + 1, …
 */
import type { Hasher } from '../blocks/hash.js';

export const HOLDER_FILE_MAGIC = 0x54484c48; // "THLH"
export const HOLDER_RECORD_MAGIC = 0x54484c52; // "THLR"
export const HOLDER_FORMAT_VERSION = 1;
export const HOLDER_HEADER_BYTES = 64;
/** Records start one page in, so rewriting the header never touches a record's page. */
export const HOLDER_RECORDS_START = 4096;
export const HOLDER_FRAME_BYTES = 32;
/** Bytes of a body the frame checksum covers: an intent record's header, its own checksum included. */
const BODY_BYTES_CHECKED = 48;
export const KIND_INTENT = 1;
export const KIND_COVERED = 2;
export const COVERED_BODY_BYTES = 20;

const TWO_32 = 0x1_0000_0000;

export interface HolderFileHeader {
  epoch: number;
  firstSeq: number;
  fileBytes: number;
  /** Where the record numbered firstSeq lies: a scan starts there. */
  tailPosition: number;
}

export interface HolderFrame {
  kind: number;
  epoch: number;
  bodyBytes: number;
  seq: number;
}

function putU64(buf: Buffer, at: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0)
    throw new RangeError(`holder log: ${value} is not a u64 this codec writes`);
  buf.writeUInt32BE(Math.floor(value / TWO_32), at);
  buf.writeUInt32BE(value % TWO_32, at + 4);
}

function getU64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * TWO_32 + buf.readUInt32BE(at + 4);
}

function checksumOf(bytes: Uint8Array, hash: Hasher): { lo: number; hi: number } {
  return hash.hash64(bytes);
}

export function encodeHolderHeader(header: HolderFileHeader, out: Buffer, hash: Hasher): void {
  out.fill(0, 0, HOLDER_HEADER_BYTES);
  out.writeUInt32BE(HOLDER_FILE_MAGIC, 8);
  out.writeUInt16BE(HOLDER_FORMAT_VERSION, 12);
  out.writeUInt32BE(header.epoch, 16);
  putU64(out, 24, header.firstSeq);
  putU64(out, 32, header.fileBytes);
  // Written as 0 at the start of the records, so a log that never wrapped reads as it did before.
  putU64(out, 40, header.tailPosition === HOLDER_RECORDS_START ? 0 : header.tailPosition);
  const { lo, hi } = checksumOf(out.subarray(8, HOLDER_HEADER_BYTES), hash);
  out.writeUInt32BE(hi, 0);
  out.writeUInt32BE(lo, 4);
}

/** The header, or undefined when the bytes are not an intact one of this format. */
export function decodeHolderHeader(bytes: Buffer, hash: Hasher): HolderFileHeader | undefined {
  if (bytes.length < HOLDER_HEADER_BYTES) return undefined;
  if (
    bytes.readUInt32BE(8) !== HOLDER_FILE_MAGIC ||
    bytes.readUInt16BE(12) !== HOLDER_FORMAT_VERSION
  )
    return undefined;
  const { lo, hi } = checksumOf(bytes.subarray(8, HOLDER_HEADER_BYTES), hash);
  if (bytes.readUInt32BE(0) !== hi || bytes.readUInt32BE(4) !== lo) return undefined;
  const tailPosition = getU64(bytes, 40);
  const fileBytes = getU64(bytes, 32);
  if (tailPosition !== 0 && (tailPosition < HOLDER_RECORDS_START || tailPosition >= fileBytes))
    return undefined;
  return {
    epoch: bytes.readUInt32BE(16),
    firstSeq: getU64(bytes, 24),
    fileBytes,
    tailPosition: tailPosition === 0 ? HOLDER_RECORDS_START : tailPosition,
  };
}

/**
 * Write a record's frame into `frame` (HOLDER_FRAME_BYTES) for `body`,
 * checksum included: the body is written after it as it is.
 */
export function encodeHolderFrame(
  frame: Buffer,
  kind: number,
  epoch: number,
  seq: number,
  body: Buffer,
  hash: Hasher,
): void {
  frame.fill(0, 0, HOLDER_FRAME_BYTES);
  frame.writeUInt32BE(HOLDER_RECORD_MAGIC, 8);
  frame[12] = kind;
  frame.writeUInt32BE(epoch, 16);
  frame.writeUInt32BE(body.length, 20);
  putU64(frame, 24, seq);
  const { lo, hi } = frameChecksum(frame, body, hash);
  frame.writeUInt32BE(hi, 0);
  frame.writeUInt32BE(lo, 4);
}

/** What a frame checksum covers, gathered in one place (no buffer per record: one thread, used at once). */
const checkedBytes = Buffer.alloc(HOLDER_FRAME_BYTES - 8 + BODY_BYTES_CHECKED);

function frameChecksum(frame: Buffer, body: Buffer, hash: Hasher): { lo: number; hi: number } {
  const checked = Math.min(body.length, BODY_BYTES_CHECKED);
  frame.copy(checkedBytes, 0, 8, HOLDER_FRAME_BYTES);
  body.copy(checkedBytes, HOLDER_FRAME_BYTES - 8, 0, checked);
  return hash.hash64(checkedBytes.subarray(0, HOLDER_FRAME_BYTES - 8 + checked));
}

/** A frame's fields if its magic and kind are right (its checksum needs the body: holderFrameIntact). */
export function decodeHolderFrame(frame: Buffer): HolderFrame | undefined {
  if (frame.length < HOLDER_FRAME_BYTES || frame.readUInt32BE(8) !== HOLDER_RECORD_MAGIC)
    return undefined;
  const kind = frame[12];
  if (kind !== KIND_INTENT && kind !== KIND_COVERED) return undefined;
  if (frame[13] !== 0 || frame.readUInt16BE(14) !== 0) return undefined;
  const bodyBytes = frame.readUInt32BE(20);
  if (kind === KIND_COVERED && bodyBytes !== COVERED_BODY_BYTES) return undefined;
  return { kind, epoch: frame.readUInt32BE(16), bodyBytes, seq: getU64(frame, 24) };
}

/** Whether a frame's checksum holds for it and its body. */
export function holderFrameIntact(frame: Buffer, body: Buffer, hash: Hasher): boolean {
  const { lo, hi } = frameChecksum(frame, body, hash);
  return frame.readUInt32BE(0) === hi && frame.readUInt32BE(4) === lo;
}
