/**
 * The replicated intent log's messages (docs/cluster-flush.md): a volume's
 * writer appends the bytes a FLUSH makes durable to every node holding its
 * log (INTENT_APPEND), a new writer seals one of them and reads back what it
 * holds (INTENT_SEAL), and a landed commit lets holders drop what it holds
 * (INTENT_COVERED). Part of wire.ts (see there for the protocol's rules);
 * import from wire.ts.
 *
 * Added to TBP version 1 as new opcodes, as GET_RANGE was: a node that
 * predates them answers BAD_REQUEST (unknown opcode); the writer then
 * commits a version for every FLUSH, as before.
 *
 * Intent record (INTENT_RECORD_HEADER_BYTES, then payloadBytes of payload),
 * made and checksummed by the writer; holders keep it byte for byte, and the
 * writer that replays it checks it again:
 *   0   u64  xxh64 of bytes [8, 48 + payloadBytes), high half first
 *   8   u32  volumeId
 *   12  u16  flags: INTENT_ZEROS (the range reads as zeros, no payload),
 *                   INTENT_SEALED (payload = nonce | AES-256-GCM ciphertext
 *                   | tag, the aad bytes [8, 48))
 *   14  u16  0
 *   16  u64  token: the writer's lock epoch
 *   24  u64  seq: 1, 2, … per (volume, token), in capture order
 *   32  u64  offset (bytes, in the volume)
 *   40  u32  length (bytes of volume data the record sets, 1..4 MiB)
 *   44  u32  payloadBytes: 0 (zeros), length (plain), length + 28 (sealed)
 * A record sets bytes [offset, offset + length) to what a read saw when the
 * FLUSH captured them; applied in seq order over a version that holds every
 * record before them, the last record over a byte decides it.
 *
 * INTENT_APPEND request: count u32 (1..MAX_APPEND_RECORDS), then the
 * records back to back, all of one volume and one token. OK reply: flags
 * u32 (APPEND_PRESSURE: the holder's log is past half full, commit soon).
 * FENCED: the volume is sealed at a token above this one (a newer writer
 * has taken over); NO_SPACE: the holder's log is full; CHECKSUM: a record
 * does not match its checksum. Nothing of a refused append is kept.
 *
 * INTENT_SEAL request, 16 bytes: volumeId u32 | token u64 | skip u32.
 * Durably refuses, from now on, appends for the volume under a token below
 * `token`; answers the records it holds for the volume under tokens below
 * it, in the order they were appended, from the skip-th on. OK reply:
 * count u32 | more u8 | 3 zero bytes | count records. `more` = 1: ask again
 * with skip + count (a reply stays within MAX_PAYLOAD_BYTES).
 *
 * INTENT_COVERED request, 20 bytes: volumeId u32 | token u64 | seq u64.
 * Every record of the volume under a token below `token`, or under `token`
 * with a seq below `seq`, is held by a committed version: the holder may
 * drop them. OK reply: empty.
 */
import type { Hasher } from '../blocks/hash.js';
import {
  FLAG_REPLY,
  HEADER_SIZE,
  MAX_PAYLOAD_BYTES,
  OP_COMMIT_VOLUME,
  OP_INTENT_APPEND,
  OP_INTENT_COVERED,
  OP_INTENT_SEAL,
  STATUS_OK,
  TbpPayloadError,
  encodeHeader,
} from './wire-frame.js';

export const INTENT_RECORD_HEADER_BYTES = 48;
export const INTENT_ZEROS = 1;
export const INTENT_SEALED = 2;
/** Nonce and tag around a sealed payload (AES-256-GCM). */
export const INTENT_SEAL_OVERHEAD = 12 + 16;
/** Largest volume range one record sets; a larger flush is split. */
export const MAX_INTENT_LENGTH = 4 * 1024 * 1024;
/** Records in one INTENT_APPEND (a flush of at most 4096 ranges, some split). */
export const MAX_APPEND_RECORDS = 8192;
/** INTENT_APPEND reply flag: the holder's log is past half full. */
export const APPEND_PRESSURE = 1;
export const INTENT_SEAL_REQUEST_BYTES = 16;
export const INTENT_COVERED_REQUEST_BYTES = 20;
/** Head of an INTENT_SEAL OK reply's payload, before its records. */
export const SEAL_REPLY_HEAD_BYTES = 8;

const TWO_32 = 0x1_0000_0000;

/** What an intent record says, besides its payload. */
export interface IntentFields {
  volumeId: number;
  flags: number;
  token: number;
  seq: number;
  offset: number;
  length: number;
}

/** A decoded record: its fields and views into the bytes it came in. */
export interface IntentRecord extends IntentFields {
  /** The whole record, header and payload: what a holder keeps and hands back. */
  bytes: Buffer;
  /** Its payload (empty for zeros). */
  payload: Buffer;
}

function putU64(buf: Buffer, at: number, value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0)
    throw new RangeError(`${what} ${value} is not a u64 this codec writes`);
  buf.writeUInt32BE(Math.floor(value / TWO_32), at);
  buf.writeUInt32BE(value % TWO_32, at + 4);
}

/** A u64 field, or a payload error when it is past 2^53 (it would round). */
function getU64(buf: Buffer, at: number, what: string): number {
  const hi = buf.readUInt32BE(at);
  if (hi >= 0x20_0000) throw new TbpPayloadError(`${what} past 2^53`);
  return hi * TWO_32 + buf.readUInt32BE(at + 4);
}

/** Payload bytes of a record of these flags and length. */
export function intentPayloadBytes(flags: number, length: number): number {
  if (flags === INTENT_ZEROS) return 0;
  return length + (flags === INTENT_SEALED ? INTENT_SEAL_OVERHEAD : 0);
}

/** Why these fields are not a record this protocol carries, or undefined. */
function fieldsProblem(f: IntentFields): string | undefined {
  if (f.flags !== 0 && f.flags !== INTENT_ZEROS && f.flags !== INTENT_SEALED)
    return `unknown intent flags ${f.flags}`;
  if (!Number.isInteger(f.length) || f.length < 1 || f.length > MAX_INTENT_LENGTH)
    return `intent length ${f.length} (1..${MAX_INTENT_LENGTH})`;
  if (!Number.isSafeInteger(f.offset + f.length)) return 'intent range past 2^53';
  if (f.token < 1) return 'intent token 0';
  if (f.seq < 1) return 'intent seq 0';
  return undefined;
}

/**
 * Write a record's header at `at` in `out`, checksum left zero; its
 * payload goes at at + INTENT_RECORD_HEADER_BYTES, then stampIntentRecord().
 * Returns the record's whole size. Throws RangeError on fields no record has.
 */
export function encodeIntentHeader(out: Buffer, at: number, fields: IntentFields): number {
  const problem = fieldsProblem(fields);
  if (problem) throw new RangeError(problem);
  const payloadBytes = intentPayloadBytes(fields.flags, fields.length);
  out.fill(0, at, at + INTENT_RECORD_HEADER_BYTES);
  out.writeUInt32BE(fields.volumeId, at + 8);
  out.writeUInt16BE(fields.flags, at + 12);
  putU64(out, at + 16, fields.token, 'intent token');
  putU64(out, at + 24, fields.seq, 'intent seq');
  putU64(out, at + 32, fields.offset, 'intent offset');
  out.writeUInt32BE(fields.length, at + 40);
  out.writeUInt32BE(payloadBytes, at + 44);
  return INTENT_RECORD_HEADER_BYTES + payloadBytes;
}

/** The bytes a sealed payload is authenticated with: the header's fields, checksum excluded. */
export function intentAad(record: Buffer, at: number): Buffer {
  return record.subarray(at + 8, at + INTENT_RECORD_HEADER_BYTES);
}

/** Set the checksum of the record at `at`, its payload in place. Returns where it ends. */
export function stampIntentRecord(out: Buffer, at: number, hash: Hasher): number {
  const end = at + INTENT_RECORD_HEADER_BYTES + out.readUInt32BE(at + 44);
  const { lo, hi } = hash.hash64(out.subarray(at + 8, end));
  out.writeUInt32BE(hi, at);
  out.writeUInt32BE(lo, at + 4);
  return end;
}

/** Whether a record's bytes match its checksum. */
export function intentRecordIntact(record: IntentRecord, hash: Hasher): boolean {
  const { lo, hi } = hash.hash64(record.bytes.subarray(8));
  return record.bytes.readUInt32BE(0) === hi && record.bytes.readUInt32BE(4) === lo;
}

/** The record at `at` (views into `buf`), checked for shape, not checksum. */
export function decodeIntentRecord(buf: Buffer, at: number, end: number): IntentRecord {
  if (at + INTENT_RECORD_HEADER_BYTES > end) throw new TbpPayloadError('intent record cut short');
  const fields: IntentFields = {
    volumeId: buf.readUInt32BE(at + 8),
    flags: buf.readUInt16BE(at + 12),
    token: getU64(buf, at + 16, 'intent token'),
    seq: getU64(buf, at + 24, 'intent seq'),
    offset: getU64(buf, at + 32, 'intent offset'),
    length: buf.readUInt32BE(at + 40),
  };
  const problem = fieldsProblem(fields);
  if (problem) throw new TbpPayloadError(problem);
  if (buf.readUInt16BE(at + 14) !== 0) throw new TbpPayloadError('intent record reserved bits set');
  const payloadBytes = buf.readUInt32BE(at + 44);
  if (payloadBytes !== intentPayloadBytes(fields.flags, fields.length))
    throw new TbpPayloadError(
      `intent payload of ${payloadBytes} bytes for flags ${fields.flags} and length ${fields.length}`,
    );
  const stop = at + INTENT_RECORD_HEADER_BYTES + payloadBytes;
  if (stop > end) throw new TbpPayloadError('intent payload runs past the frame');
  return {
    ...fields,
    bytes: buf.subarray(at, stop),
    payload: buf.subarray(at + INTENT_RECORD_HEADER_BYTES, stop),
  };
}

/** `count` records back to back in buf[at, end), nothing after them. */
function decodeRecordRun(buf: Buffer, at: number, end: number, count: number): IntentRecord[] {
  // A record is at least its header: refuse a count the bytes cannot hold before building anything.
  if (count * INTENT_RECORD_HEADER_BYTES > end - at)
    throw new TbpPayloadError(`${count} intent records in ${end - at} bytes`);
  const records: IntentRecord[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const record = decodeIntentRecord(buf, at, end);
    records[i] = record;
    at += record.bytes.length;
  }
  if (at !== end) throw new TbpPayloadError(`${end - at} bytes after the last intent record`);
  return records;
}

// ------------------------------------------------------------ INTENT_APPEND

/**
 * A whole INTENT_APPEND frame as chunks to write in order: the header and
 * count, then the records (the caller's buffers, not copied). Throws
 * RangeError when they cannot go in one frame or are not all of one volume
 * and token.
 */
export function encodeIntentAppendFrame(requestId: number, records: readonly Buffer[]): Buffer[] {
  if (records.length === 0 || records.length > MAX_APPEND_RECORDS)
    throw new RangeError(`INTENT_APPEND of ${records.length} records (1..${MAX_APPEND_RECORDS})`);
  let payload = 4;
  for (const r of records) payload += r.length;
  if (payload > MAX_PAYLOAD_BYTES)
    throw new RangeError(`INTENT_APPEND payload of ${payload} bytes exceeds ${MAX_PAYLOAD_BYTES}`);
  // Decoding our own records checks what the holder will: one volume and token, each well formed.
  let first: IntentRecord | undefined;
  for (const r of records) {
    let record: IntentRecord;
    try {
      record = decodeIntentRecord(r, 0, r.length);
    } catch (err) {
      throw new RangeError((err as Error).message, { cause: err });
    }
    if (record.bytes.length !== r.length) throw new RangeError('bytes after an intent record');
    first ??= record;
    if (record.volumeId !== first.volumeId || record.token !== first.token)
      throw new RangeError('an INTENT_APPEND carries one volume and one token');
  }
  const head = Buffer.allocUnsafe(HEADER_SIZE + 4);
  encodeHeader(head, 0, OP_INTENT_APPEND, 0, STATUS_OK, requestId, payload);
  head.writeUInt32BE(records.length, HEADER_SIZE);
  return [head, ...records];
}

/** The records of an INTENT_APPEND payload (views into it), all of one volume and token. */
export function decodeIntentAppend(payload: Buffer): IntentRecord[] {
  if (payload.length < 4) throw new TbpPayloadError('INTENT_APPEND without a record count');
  const count = payload.readUInt32BE(0);
  if (count === 0 || count > MAX_APPEND_RECORDS)
    throw new TbpPayloadError(`INTENT_APPEND of ${count} records (1..${MAX_APPEND_RECORDS})`);
  const records = decodeRecordRun(payload, 4, payload.length, count);
  const { volumeId, token } = records[0];
  for (const r of records)
    if (r.volumeId !== volumeId || r.token !== token)
      throw new TbpPayloadError('INTENT_APPEND records of more than one volume or token');
  return records;
}

export const INTENT_APPEND_REPLY_SIZE = HEADER_SIZE + 4;
export function encodeIntentAppendReply(
  buf: Buffer,
  at: number,
  requestId: number,
  flags: number,
): void {
  encodeHeader(buf, at, OP_INTENT_APPEND, FLAG_REPLY, STATUS_OK, requestId, 4);
  buf.writeUInt32BE(flags, at + HEADER_SIZE);
}

export function decodeIntentAppendReply(payload: Buffer): number {
  if (payload.length !== 4)
    throw new TbpPayloadError(`INTENT_APPEND reply of ${payload.length} bytes, expected 4`);
  return payload.readUInt32BE(0);
}

// -------------------------------------------------------------- INTENT_SEAL

export interface IntentSealRequest {
  volumeId: number;
  /** The new writer's lock epoch: appends below it are refused from now on. */
  token: number;
  /** Records already received by earlier pages. */
  skip: number;
}

export function encodeIntentSeal(requestId: number, request: IntentSealRequest): Buffer {
  const buf = Buffer.allocUnsafe(HEADER_SIZE + INTENT_SEAL_REQUEST_BYTES);
  encodeHeader(buf, 0, OP_INTENT_SEAL, 0, STATUS_OK, requestId, INTENT_SEAL_REQUEST_BYTES);
  buf.writeUInt32BE(request.volumeId, HEADER_SIZE);
  putU64(buf, HEADER_SIZE + 4, request.token, 'seal token');
  buf.writeUInt32BE(request.skip, HEADER_SIZE + 12);
  return buf;
}

export function decodeIntentSeal(payload: Buffer): IntentSealRequest {
  if (payload.length !== INTENT_SEAL_REQUEST_BYTES)
    throw new TbpPayloadError(
      `INTENT_SEAL payload of ${payload.length} bytes, expected ${INTENT_SEAL_REQUEST_BYTES}`,
    );
  const token = getU64(payload, 4, 'seal token');
  if (token < 1) throw new TbpPayloadError('seal token 0');
  return { volumeId: payload.readUInt32BE(0), token, skip: payload.readUInt32BE(12) };
}

/** One page of a seal's answer. */
export interface IntentSealPage {
  records: Buffer[];
  /** More records follow: ask again, skipping these. */
  more: boolean;
}

/** Payload bytes a seal reply of these records takes (keep it within MAX_PAYLOAD_BYTES). */
export function sealReplyPayloadBytes(records: readonly Buffer[]): number {
  let bytes = SEAL_REPLY_HEAD_BYTES;
  for (const r of records) bytes += r.length;
  return bytes;
}

/** An INTENT_SEAL OK reply as chunks: header and head, then the records as they are. */
export function encodeIntentSealReply(requestId: number, page: IntentSealPage): Buffer[] {
  const payload = sealReplyPayloadBytes(page.records);
  if (payload > MAX_PAYLOAD_BYTES)
    throw new RangeError(`INTENT_SEAL reply of ${payload} bytes exceeds ${MAX_PAYLOAD_BYTES}`);
  const head = Buffer.alloc(HEADER_SIZE + SEAL_REPLY_HEAD_BYTES);
  encodeHeader(head, 0, OP_INTENT_SEAL, FLAG_REPLY, STATUS_OK, requestId, payload);
  head.writeUInt32BE(page.records.length, HEADER_SIZE);
  head[HEADER_SIZE + 4] = page.more ? 1 : 0;
  return [head, ...page.records];
}

/** A seal reply, decoded: its records (views into the payload; checksums unchecked) and `more`. */
export interface IntentSealReply {
  records: IntentRecord[];
  more: boolean;
}

export function decodeIntentSealReply(payload: Buffer): IntentSealReply {
  if (payload.length < SEAL_REPLY_HEAD_BYTES)
    throw new TbpPayloadError('INTENT_SEAL reply cut short');
  const count = payload.readUInt32BE(0);
  const more = payload[4];
  if (more > 1 || payload[5] !== 0 || payload[6] !== 0 || payload[7] !== 0)
    throw new TbpPayloadError('INTENT_SEAL reply head with unknown bits');
  return {
    records: decodeRecordRun(payload, SEAL_REPLY_HEAD_BYTES, payload.length, count),
    more: more === 1,
  };
}

// ------------------------------------------------------------ COMMIT_VOLUME

export const COMMIT_VOLUME_REQUEST_BYTES = 4;

export function encodeCommitVolume(requestId: number, volumeId: number): Buffer {
  const buf = Buffer.allocUnsafe(HEADER_SIZE + COMMIT_VOLUME_REQUEST_BYTES);
  encodeHeader(buf, 0, OP_COMMIT_VOLUME, 0, STATUS_OK, requestId, COMMIT_VOLUME_REQUEST_BYTES);
  buf.writeUInt32BE(volumeId, HEADER_SIZE);
  return buf;
}

export function decodeCommitVolume(payload: Buffer): number {
  if (payload.length !== COMMIT_VOLUME_REQUEST_BYTES)
    throw new TbpPayloadError(
      `COMMIT_VOLUME payload of ${payload.length} bytes, expected ${COMMIT_VOLUME_REQUEST_BYTES}`,
    );
  return payload.readUInt32BE(0);
}

// ----------------------------------------------------------- INTENT_COVERED

export interface IntentCovered {
  volumeId: number;
  /** Records under a token below this one are all covered… */
  token: number;
  /** …and those under `token` with a seq below this one. */
  seq: number;
}

export function encodeIntentCovered(requestId: number, covered: IntentCovered): Buffer {
  const buf = Buffer.allocUnsafe(HEADER_SIZE + INTENT_COVERED_REQUEST_BYTES);
  encodeHeader(buf, 0, OP_INTENT_COVERED, 0, STATUS_OK, requestId, INTENT_COVERED_REQUEST_BYTES);
  buf.writeUInt32BE(covered.volumeId, HEADER_SIZE);
  putU64(buf, HEADER_SIZE + 4, covered.token, 'covered token');
  putU64(buf, HEADER_SIZE + 12, covered.seq, 'covered seq');
  return buf;
}

export function decodeIntentCovered(payload: Buffer): IntentCovered {
  if (payload.length !== INTENT_COVERED_REQUEST_BYTES)
    throw new TbpPayloadError(
      `INTENT_COVERED payload of ${payload.length} bytes, expected ${INTENT_COVERED_REQUEST_BYTES}`,
    );
  return {
    volumeId: payload.readUInt32BE(0),
    token: getU64(payload, 4, 'covered token'),
    seq: getU64(payload, 12, 'covered seq'),
  };
}
