/**
 * The holder log read back at open (holder-log.ts): the records a scan from
 * the header's tail finds, following holder seqs and wrapping once to
 * HOLDER_RECORDS_START, with COVERED notes applied. Format: holder-record.ts.
 */
import type { FileHandle } from 'node:fs/promises';
import type { Hasher } from '../blocks/hash.js';
import {
  decodeIntentCovered,
  decodeIntentRecord,
  intentRecordIntact,
  type IntentCovered,
  type IntentRecord,
} from '../peer/wire.js';
import {
  HOLDER_FRAME_BYTES,
  HOLDER_RECORDS_START,
  KIND_INTENT,
  decodeHolderFrame,
  holderFrameIntact,
  type HolderFileHeader,
} from './holder-record.js';

/** One batch as written: where it starts, its first holder seq, and how many of its records are still held. */
export interface Segment {
  start: number;
  firstSeq: number;
  live: number;
}

/** One record held: where its body is, whose it is, and the batch it came in. */
export interface Held {
  token: number;
  seq: number;
  position: number;
  bodyBytes: number;
  segment: Segment;
}

/** A place in the file and the holder seq of the record there. */
export interface LogPoint {
  position: number;
  seq: number;
}

/** Drop the records a COVERED says a committed version holds (their batches hold that many fewer); how many went. */
export function dropCovered(
  index: Map<number, Held[]>,
  { volumeId, token, seq }: IntentCovered,
): number {
  const held = index.get(volumeId);
  if (!held) return 0;
  const kept: Held[] = [];
  for (const h of held) {
    if (h.token > token || (h.token === token && h.seq >= seq)) kept.push(h);
    else h.segment.live--;
  }
  if (kept.length === 0) index.delete(volumeId);
  else index.set(volumeId, kept);
  return held.length - kept.length;
}

export interface Scanned {
  epoch: number;
  nextSeq: number;
  position: number;
  tail: LogPoint;
  /** One per intent record found, in file order; those whose record was covered have none live. */
  segments: Segment[];
  index: Map<number, Held[]>;
}

export function emptyScan(): Scanned {
  return {
    epoch: 1,
    nextSeq: 1,
    position: HOLDER_RECORDS_START,
    tail: { position: HOLDER_RECORDS_START, seq: 1 },
    segments: [],
    index: new Map(),
  };
}

/**
 * The epoch's intact records from the header's tail on, numbered firstSeq,
 * firstSeq + 1, …, up to the first that is not there; where the next is not
 * found it is looked for once at HOLDER_RECORDS_START (the log wrapped).
 * COVERED notes applied.
 */
export async function scan(
  file: FileHandle,
  fileBytes: number,
  header: HolderFileHeader,
  hash: Hasher,
): Promise<Scanned> {
  const { epoch } = header;
  const index = new Map<number, Held[]>();
  const segments: Segment[] = [];
  const frame = Buffer.alloc(HOLDER_FRAME_BYTES);
  let position = header.tailPosition;
  let seq = header.firstSeq;
  let wrapped = position === HOLDER_RECORDS_START;
  // Where the last record found ends: the head, whether or not a look at the start finds more.
  let head = position;
  for (;;) {
    const found = await readFrame(file, fileBytes, position, epoch, seq, frame, hash);
    if (!found) {
      if (wrapped) break;
      wrapped = true;
      position = HOLDER_RECORDS_START;
      continue;
    }
    const { kind, body } = found;
    const bodyAt = position + HOLDER_FRAME_BYTES;
    if (kind === KIND_INTENT) {
      const r = decodeIntentRecord(body, 0, body.length);
      const segment: Segment = { start: position, firstSeq: seq, live: 1 };
      segments.push(segment);
      let list = index.get(r.volumeId);
      if (!list) index.set(r.volumeId, (list = []));
      list.push({ token: r.token, seq: r.seq, position: bodyAt, bodyBytes: body.length, segment });
    } else {
      dropCovered(index, decodeIntentCovered(body));
    }
    position = bodyAt + body.length;
    head = position;
    seq++;
  }
  return {
    epoch,
    nextSeq: seq,
    position: head,
    tail: { position: header.tailPosition, seq: header.firstSeq },
    segments,
    index,
  };
}

/** The record at `position` if it is there, intact, of `epoch` and numbered `seq`: its kind and body. */
async function readFrame(
  file: FileHandle,
  fileBytes: number,
  position: number,
  epoch: number,
  seq: number,
  frame: Buffer,
  hash: Hasher,
): Promise<{ kind: number; body: Buffer } | undefined> {
  if (position + HOLDER_FRAME_BYTES > fileBytes) return undefined;
  await file.read(frame, 0, HOLDER_FRAME_BYTES, position);
  const f = decodeHolderFrame(frame);
  if (!f || f.epoch !== epoch || f.seq !== seq) return undefined;
  const bodyAt = position + HOLDER_FRAME_BYTES;
  if (bodyAt + f.bodyBytes > fileBytes) return undefined;
  const body = Buffer.alloc(f.bodyBytes);
  await file.read(body, 0, f.bodyBytes, bodyAt);
  if (!holderFrameIntact(frame, body, hash)) return undefined;
  if (f.kind === KIND_INTENT) {
    let r: IntentRecord;
    try {
      r = decodeIntentRecord(body, 0, body.length);
    } catch {
      return undefined;
    }
    if (r.bytes.length !== body.length || !intentRecordIntact(r, hash)) return undefined;
  }
  return { kind: f.kind, body };
}
