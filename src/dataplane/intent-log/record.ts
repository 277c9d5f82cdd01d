/**
 * The intent log's on-disk format: the file header and the records, as pure
 * codecs over Buffers (byte-level tests in record.test.ts). All integers are
 * little-endian; u64 fields are written as two u32 halves (lo, hi) and read
 * back as safe integers.
 *
 * File header (FILE_HEADER_BYTES at offset 0; records start at RECORDS_START):
 *   0   u64  checksum: xxh64 of bytes [8, FILE_HEADER_BYTES)
 *   8   u32  FILE_MAGIC "TILH"
 *   12  u16  FORMAT_VERSION
 *   14  u16  0
 *   16  u32  epoch: records of any other epoch are stale
 *   20  u32  0
 *   24  u64  firstSeq: the sequence number of the record at tailPosition
 *   32  u64  fileBytes: the file's preallocated size
 *   40  u64  tailPosition: where the scan starts (0, as logs written before
 *            the log wrapped say: RECORDS_START)
 *   48  16B  zeros
 *
 * Record (RECORD_HEADER_BYTES, then payloadBytes of payload):
 *   0   u64  checksum: xxh64 of bytes [8, RECORD_HEADER_BYTES + payloadBytes)
 *   8   u32  RECORD_MAGIC "TILR"
 *   12  u16  FORMAT_VERSION
 *   14  u16  flags: FLAG_ZEROS (the range reads as zeros, no payload),
 *                   FLAG_SEALED (payload = nonce | AES-256-GCM ciphertext | tag),
 *                   FLAG_COMMITTED (a marker, no payload, length 0: version
 *                   coveredBy holds every record of the volume numbered
 *                   below `offset`),
 *                   FLAG_PARTIAL (a marker, no payload, offset and length 0:
 *                   version coveredBy may lack the bytes of the volume's
 *                   earlier records; one that says coveredBy or less is
 *                   covered by a later version only)
 *   16  u32  epoch (the file header's)
 *   20  u32  payloadBytes
 *   24  u64  seq: the epoch's records are numbered firstSeq, firstSeq+1, …
 *   32  u32  volumeId
 *   36  u32  0
 *   40  u64  coveredBy: a committed version of this generation or later
 *            holds the record's bytes; replay only onto an older one
 *   48  u64  offset (bytes, in the volume)
 *   56  u32  length (bytes of volume data the record sets)
 *   60  u32  0
 *
 * The checksum leads so that what it covers is one contiguous range, header
 * fields and payload alike, hashed in place without a copy.
 */
import type { Hasher } from '../blocks/hash.js';

export const FILE_MAGIC = 0x484c4954; // "TILH" read as LE u32
export const RECORD_MAGIC = 0x524c4954; // "TILR"
export const FORMAT_VERSION = 1;
export const FILE_HEADER_BYTES = 64;
/** Records start one page in, so rewriting the header never touches a record's page. */
export const RECORDS_START = 4096;
export const RECORD_HEADER_BYTES = 64;
export const FLAG_ZEROS = 1;
export const FLAG_SEALED = 2;
export const FLAG_COMMITTED = 4;
export const FLAG_PARTIAL = 8;
/** AES-GCM nonce and tag around a sealed payload. */
export const SEAL_NONCE_BYTES = 12;
export const SEAL_TAG_BYTES = 16;
export const SEAL_OVERHEAD = SEAL_NONCE_BYTES + SEAL_TAG_BYTES;
/** Largest volume range one record sets; a larger flush is split. */
export const MAX_RECORD_LENGTH = 4 * 1024 * 1024;

const TWO_32 = 0x1_0000_0000;

export interface FileHeader {
  epoch: number;
  firstSeq: number;
  fileBytes: number;
  /** Where the oldest record a scan must read lies (numbered firstSeq). */
  tailPosition: number;
}

export interface RecordHeader {
  flags: number;
  epoch: number;
  payloadBytes: number;
  seq: number;
  volumeId: number;
  coveredBy: number;
  offset: number;
  length: number;
}

function putU64(buf: Buffer, at: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0)
    throw new RangeError(`intent log: ${value} is not a u64 this codec writes`);
  buf.writeUInt32LE(value % TWO_32, at);
  buf.writeUInt32LE(Math.floor(value / TWO_32), at + 4);
}

function getU64(buf: Buffer, at: number): number {
  return buf.readUInt32LE(at) + buf.readUInt32LE(at + 4) * TWO_32;
}

function putChecksum(buf: Buffer, at: number, end: number, hash: Hasher): void {
  const { lo, hi } = hash.hash64(buf.subarray(at + 8, end));
  buf.writeUInt32LE(lo, at);
  buf.writeUInt32LE(hi, at + 4);
}

function checksumHolds(buf: Buffer, at: number, end: number, hash: Hasher): boolean {
  const { lo, hi } = hash.hash64(buf.subarray(at + 8, end));
  return buf.readUInt32LE(at) === lo && buf.readUInt32LE(at + 4) === hi;
}

/** Encode the file header into the first FILE_HEADER_BYTES of `out`. */
export function encodeFileHeader(header: FileHeader, out: Buffer, hash: Hasher): void {
  out.fill(0, 0, FILE_HEADER_BYTES);
  out.writeUInt32LE(FILE_MAGIC, 8);
  out.writeUInt16LE(FORMAT_VERSION, 12);
  out.writeUInt32LE(header.epoch, 16);
  putU64(out, 24, header.firstSeq);
  putU64(out, 32, header.fileBytes);
  putU64(out, 40, header.tailPosition === RECORDS_START ? 0 : header.tailPosition);
  putChecksum(out, 0, FILE_HEADER_BYTES, hash);
}

/** The file header, or undefined when the bytes are not an intact one of this format. */
export function decodeFileHeader(bytes: Buffer, hash: Hasher): FileHeader | undefined {
  if (bytes.length < FILE_HEADER_BYTES) return undefined;
  if (bytes.readUInt32LE(8) !== FILE_MAGIC || bytes.readUInt16LE(12) !== FORMAT_VERSION)
    return undefined;
  if (!checksumHolds(bytes, 0, FILE_HEADER_BYTES, hash)) return undefined;
  const fileBytes = getU64(bytes, 32);
  const tail = getU64(bytes, 40);
  const tailPosition = tail === 0 ? RECORDS_START : tail;
  if (tailPosition < RECORDS_START || tailPosition >= fileBytes) return undefined;
  return {
    epoch: bytes.readUInt32LE(16),
    firstSeq: getU64(bytes, 24),
    fileBytes,
    tailPosition,
  };
}

/** Whether flags and length make a record: one of the kinds, a length only for data and zeros. */
function validShape(flags: number, length: number): boolean {
  if (flags === FLAG_COMMITTED || flags === FLAG_PARTIAL) return length === 0;
  if (flags !== 0 && flags !== FLAG_ZEROS && flags !== FLAG_SEALED) return false;
  return Number.isInteger(length) && length > 0 && length <= MAX_RECORD_LENGTH;
}

/** Bytes a record takes on disk, header included. */
export function recordBytes(flags: number, length: number): number {
  if (flags & (FLAG_ZEROS | FLAG_COMMITTED | FLAG_PARTIAL)) return RECORD_HEADER_BYTES;
  return RECORD_HEADER_BYTES + length + (flags & FLAG_SEALED ? SEAL_OVERHEAD : 0);
}

/**
 * Write a record's header fields at `at` in `out`, checksum left zero: the
 * payload goes after it (at + RECORD_HEADER_BYTES), then stampRecord()
 * sets epoch, seq and checksum once the record's place in the log is known.
 */
export function encodeRecordHeader(
  fields: Omit<RecordHeader, 'epoch' | 'seq' | 'payloadBytes'>,
  out: Buffer,
  at: number,
): number {
  if (!validShape(fields.flags, fields.length))
    throw new RangeError(
      `intent log: flags ${fields.flags} with length ${fields.length} are not a record`,
    );
  const payloadBytes = recordBytes(fields.flags, fields.length) - RECORD_HEADER_BYTES;
  out.fill(0, at, at + RECORD_HEADER_BYTES);
  out.writeUInt32LE(RECORD_MAGIC, at + 8);
  out.writeUInt16LE(FORMAT_VERSION, at + 12);
  out.writeUInt16LE(fields.flags, at + 14);
  out.writeUInt32LE(payloadBytes, at + 20);
  out.writeUInt32LE(fields.volumeId, at + 32);
  putU64(out, at + 40, fields.coveredBy);
  putU64(out, at + 48, fields.offset);
  out.writeUInt32LE(fields.length, at + 56);
  return payloadBytes;
}

/** Set a record's epoch and seq and seal it with its checksum (header and payload in place). */
export function stampRecord(
  out: Buffer,
  at: number,
  epoch: number,
  seq: number,
  hash: Hasher,
): number {
  const payloadBytes = out.readUInt32LE(at + 20);
  out.writeUInt32LE(epoch, at + 16);
  putU64(out, at + 24, seq);
  const end = at + RECORD_HEADER_BYTES + payloadBytes;
  putChecksum(out, at, end, hash);
  return end;
}

/**
 * The header of the record at `at`, if intact as far as the header goes
 * (magic, version, flags, sizes); undefined otherwise. The checksum needs
 * the payload too: recordIsIntact().
 */
export function decodeRecordHeader(bytes: Buffer, at: number): RecordHeader | undefined {
  if (at + RECORD_HEADER_BYTES > bytes.length) return undefined;
  if (bytes.readUInt32LE(at + 8) !== RECORD_MAGIC || bytes.readUInt16LE(at + 12) !== FORMAT_VERSION)
    return undefined;
  const flags = bytes.readUInt16LE(at + 14);
  const length = bytes.readUInt32LE(at + 56);
  const payloadBytes = bytes.readUInt32LE(at + 20);
  if (!validShape(flags, length)) return undefined;
  if (payloadBytes !== recordBytes(flags, length) - RECORD_HEADER_BYTES) return undefined;
  return {
    flags,
    epoch: bytes.readUInt32LE(at + 16),
    payloadBytes,
    seq: getU64(bytes, at + 24),
    volumeId: bytes.readUInt32LE(at + 32),
    coveredBy: getU64(bytes, at + 40),
    offset: getU64(bytes, at + 48),
    length,
  };
}

/** Whether the record at `at` (header and payload both in `bytes`) matches its checksum. */
export function recordIsIntact(
  bytes: Buffer,
  at: number,
  header: RecordHeader,
  hash: Hasher,
): boolean {
  const end = at + RECORD_HEADER_BYTES + header.payloadBytes;
  return end <= bytes.length && checksumHolds(bytes, at, end, hash);
}

/** The additional data a sealed payload is authenticated with: the header's fields, checksum excluded. */
export function sealAad(bytes: Buffer, at: number): Buffer {
  // epoch and seq (16..32) are set after sealing (stampRecord): they stay out of the aad.
  return Buffer.concat([
    bytes.subarray(at + 8, at + 16),
    bytes.subarray(at + 32, at + RECORD_HEADER_BYTES),
  ]);
}
