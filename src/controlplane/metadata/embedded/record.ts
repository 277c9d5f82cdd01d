/**
 * The embedded store's log record format — the one place that knows it.
 *
 * A log segment is a sequence of frames, one per write txn:
 *
 *   offset 0  u32 LE  payload length (bytes)
 *   offset 4  u32 LE  CRC-32 of the 4 length bytes followed by the payload
 *   offset 8  payload:
 *               u8      record type (1 = txn)
 *               u64 LE  revision
 *               u32 LE  mutation count
 *               per mutation:
 *                 u8 kind (1 = put, 2 = delete)
 *                 u32 LE key length, key (UTF-8)
 *                 put only: u32 LE value length, value;
 *                           u16 LE lease id length, lease id (ASCII; 0 = none)
 *
 * The CRC covers the length too, so a torn or bit-flipped length is caught
 * rather than trusted to skip to a wrong place. Zero-filled space (a file
 * extended by a crash before its data landed) reads as length 0, which no
 * real record has, so it is a torn tail as well.
 */
import { crc32 } from 'node:zlib';
import { ownedCopy } from '../../../common/owned-copy.js';

export const FRAME_HEADER_BYTES = 8;
/** Bigger than any real record (values ≤ 1 MiB, ≤ 128 ops); a sanity bound for garbage lengths. */
export const MAX_RECORD_BYTES = 256 * 1024 * 1024;
const RECORD_TXN = 1;
const KIND_PUT = 1;
const KIND_DELETE = 2;
const MIN_PAYLOAD_BYTES = 1 + 8 + 4;

export type LoggedMutation =
  { kind: 'put'; key: string; value: Buffer; lease?: string } | { kind: 'delete'; key: string };

export interface TxnRecord {
  revision: number;
  mutations: LoggedMutation[];
}

export function encodeRecord(record: TxnRecord): Buffer {
  let payloadBytes = MIN_PAYLOAD_BYTES;
  const keys = record.mutations.map((m) => Buffer.from(m.key));
  const leases = record.mutations.map((m) =>
    m.kind === 'put' && m.lease ? Buffer.from(m.lease, 'ascii') : undefined,
  );
  record.mutations.forEach((m, i) => {
    payloadBytes += 1 + 4 + keys[i].length;
    if (m.kind === 'put') payloadBytes += 4 + m.value.length + 2 + (leases[i]?.length ?? 0);
  });
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payloadBytes);
  frame.writeUInt32LE(payloadBytes, 0);
  let at = FRAME_HEADER_BYTES;
  at = frame.writeUInt8(RECORD_TXN, at);
  at = frame.writeBigUInt64LE(BigInt(record.revision), at);
  at = frame.writeUInt32LE(record.mutations.length, at);
  record.mutations.forEach((m, i) => {
    at = frame.writeUInt8(m.kind === 'put' ? KIND_PUT : KIND_DELETE, at);
    at = frame.writeUInt32LE(keys[i].length, at);
    at += keys[i].copy(frame, at);
    if (m.kind === 'put') {
      at = frame.writeUInt32LE(m.value.length, at);
      at += m.value.copy(frame, at);
      const lease = leases[i];
      at = frame.writeUInt16LE(lease?.length ?? 0, at);
      if (lease) at += lease.copy(frame, at);
    }
  });
  if (at !== frame.length)
    throw new Error(`record encoder wrote ${at} bytes into a ${frame.length}-byte frame`);
  frame.writeUInt32LE(frameChecksum(frame.subarray(0, 4), frame.subarray(FRAME_HEADER_BYTES)), 4);
  return frame;
}

function frameChecksum(lengthBytes: Buffer, payload: Buffer): number {
  return crc32(payload, crc32(lengthBytes));
}

export type FrameRead =
  { ok: true; record: TxnRecord; end: number } | { ok: false; reason: string };

/**
 * Read the frame at `offset`. A frame that does not fit, fails its checksum
 * or does not parse is reported, never partly returned: the caller decides
 * whether that is a torn tail (truncate) or damage (refuse).
 */
export function readFrame(buf: Buffer, offset: number): FrameRead {
  if (buf.length - offset < FRAME_HEADER_BYTES)
    return { ok: false, reason: `${buf.length - offset} stray bytes, less than a frame header` };
  const length = buf.readUInt32LE(offset);
  if (length < MIN_PAYLOAD_BYTES || length > MAX_RECORD_BYTES)
    return { ok: false, reason: `implausible record length ${length}` };
  const end = offset + FRAME_HEADER_BYTES + length;
  if (end > buf.length)
    return {
      ok: false,
      reason: `record of ${length} bytes cut short at ${buf.length - offset - FRAME_HEADER_BYTES}`,
    };
  const payload = buf.subarray(offset + FRAME_HEADER_BYTES, end);
  if (frameChecksum(buf.subarray(offset, offset + 4), payload) !== buf.readUInt32LE(offset + 4))
    return { ok: false, reason: 'checksum mismatch' };
  try {
    return { ok: true, record: decodePayload(payload), end };
  } catch (err) {
    // The checksum matched, so this is a writer bug or a format change, not a
    // torn write; still never misread it.
    return { ok: false, reason: `undecodable record: ${(err as Error).message}` };
  }
}

function decodePayload(payload: Buffer): TxnRecord {
  let at = 0;
  const type = payload.readUInt8(at++);
  if (type !== RECORD_TXN) throw new Error(`unknown record type ${type}`);
  const revision = Number(payload.readBigUInt64LE(at));
  at += 8;
  const count = payload.readUInt32LE(at);
  at += 4;
  const mutations: LoggedMutation[] = [];
  for (let i = 0; i < count; i++) {
    const kind = payload.readUInt8(at++);
    const keyLength = payload.readUInt32LE(at);
    at += 4;
    const key = take(payload, at, keyLength).toString();
    at += keyLength;
    if (kind === KIND_DELETE) {
      mutations.push({ kind: 'delete', key });
    } else if (kind === KIND_PUT) {
      const valueLength = payload.readUInt32LE(at);
      at += 4;
      // Owned, not a view: a replayed value is kept in the key space and the
      // watch history, and a view would keep the whole log segment alive.
      const value = ownedCopy(take(payload, at, valueLength));
      at += valueLength;
      const leaseLength = payload.readUInt16LE(at);
      at += 2;
      const lease = leaseLength ? take(payload, at, leaseLength).toString('ascii') : undefined;
      at += leaseLength;
      mutations.push(lease ? { kind: 'put', key, value, lease } : { kind: 'put', key, value });
    } else {
      throw new Error(`unknown mutation kind ${kind}`);
    }
  }
  if (at !== payload.length) throw new Error(`${payload.length - at} trailing bytes`);
  return { revision, mutations };
}

function take(buf: Buffer, at: number, length: number): Buffer {
  if (at + length > buf.length)
    throw new RangeError(`field of ${length} bytes overruns the record`);
  return buf.subarray(at, at + length);
}
