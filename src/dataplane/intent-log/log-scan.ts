/**
 * The single node's intent log read back: the start-up scan (which records
 * a start replays, from the header's tail on) and one record read whole and
 * checked. Format: record.ts. The log itself: intent-log.ts.
 */
import type { FileHandle } from 'node:fs/promises';
import type { Hasher } from '../blocks/hash.js';
import {
  RECORD_HEADER_BYTES,
  RECORDS_START,
  decodeRecordHeader,
  recordIsIntact,
  type FileHeader,
  type RecordHeader,
} from './record.js';

/**
 * A record found intact by the start-up scan: its header and where it lies.
 * Its payload is not kept (a log of 256 MiB would be that much heap at
 * start, beside a cache filling up with what replay writes): replay reads it
 * again with recordContent().
 */
export interface RecoveredRecord extends RecordHeader {
  /** Where the record starts in the file. */
  position: number;
}

/** A recovered record's payload as logged (sealed when FLAG_SEALED; empty for FLAG_ZEROS) and the aad it was sealed with. */
export interface RecordContent {
  payload: Buffer;
  aad: Buffer;
}

/**
 * The epoch's intact records from the header's tail, in order, up to the
 * first that is not there or not intact; where the next is not found, it is
 * looked for once at RECORDS_START (the writer wrapped).
 */
export async function scan(
  file: FileHandle,
  fileBytes: number,
  header: FileHeader,
  hash: Hasher,
): Promise<RecoveredRecord[]> {
  const records: RecoveredRecord[] = [];
  let position = header.tailPosition;
  let seq = header.firstSeq;
  let wrapped = position === RECORDS_START;
  const head = Buffer.alloc(RECORD_HEADER_BYTES);
  for (;;) {
    const whole = await readRecord(file, fileBytes, position, header.epoch, seq, head, hash);
    if (!whole) {
      if (wrapped) break;
      wrapped = true;
      position = RECORDS_START;
      continue;
    }
    const record = decodeRecordHeader(whole, 0)!;
    records.push({ ...record, position });
    position += whole.length;
    seq++;
  }
  return records;
}

/** The whole record at `position` (header and payload) when it is intact and the one expected there (epoch, seq); else undefined. */
export async function readRecord(
  file: FileHandle,
  fileBytes: number,
  position: number,
  epoch: number,
  seq: number,
  head: Buffer,
  hash: Hasher,
): Promise<Buffer | undefined> {
  if (position + RECORD_HEADER_BYTES > fileBytes) return undefined;
  await file.read(head, 0, RECORD_HEADER_BYTES, position);
  const header = decodeRecordHeader(head, 0);
  if (!header || header.epoch !== epoch || header.seq !== seq) return undefined;
  const end = position + RECORD_HEADER_BYTES + header.payloadBytes;
  if (end > fileBytes) return undefined;
  const whole = Buffer.alloc(RECORD_HEADER_BYTES + header.payloadBytes);
  head.copy(whole);
  await file.read(whole, RECORD_HEADER_BYTES, header.payloadBytes, position + RECORD_HEADER_BYTES);
  return recordIsIntact(whole, 0, header, hash) ? whole : undefined;
}
