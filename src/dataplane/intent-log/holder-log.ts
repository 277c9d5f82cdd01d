/**
 * HolderLog: a storage node's copy of other writers' intent records — the
 * holder side of the replicated intent log (docs/cluster-flush.md). A
 * volume's writer appends each FLUSH's records to every holder it chose
 * (INTENT_APPEND) and acknowledges the FLUSH once all of them have them on
 * disk; a writer that takes the volume over seals one holder (INTENT_SEAL)
 * and replays what it answers; commits let holders drop what a committed
 * version holds (INTENT_COVERED).
 *
 * On disk, as the single node's log (intent-log.ts): one preallocated file
 * open O_DSYNC, records appended in groups (one write for every append that
 * arrived while the last was being written), space back by epochs — when
 * nothing held is live the next batch starts the file over under a new
 * epoch. Unlike it, a holder never replays: records stay until covered, a
 * restart included (the scan rebuilds the index and appending goes on after
 * the last intact record; the bytes a torn batch may have left beyond it are
 * zeroed first, so nothing stale can follow a new record).
 *
 * Seals live in their own small file (HOLDER_SEALS_FILE, replaced whole
 * and synced): they must outlive every epoch, since a sealed-out writer
 * may still be running.
 *
 * Why a seal waits for what is in flight: an append staged before the seal
 * is acknowledged once durable, possibly after the seal's answer; so the
 * seal waits until every append staged before it has settled and answers
 * with those records too.
 */
import { open, rename, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { assert } from '../../common/assert.js';
import { ChecksumError, IoError, StaleTokenError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import { hasher, type Hasher } from '../blocks/hash.js';
import type { IntentHolder } from '../peer/backend.js';
import {
  HEADER_SIZE,
  MAX_PAYLOAD_BYTES,
  SEAL_REPLY_HEAD_BYTES,
  decodeIntentCovered,
  encodeIntentCovered,
  decodeIntentRecord,
  intentRecordIntact,
  type IntentCovered,
  type IntentRecord,
  type IntentSealPage,
  type IntentSealRequest,
} from '../peer/wire.js';
import {
  HOLDER_FRAME_BYTES,
  HOLDER_HEADER_BYTES,
  HOLDER_RECORDS_START,
  KIND_COVERED,
  KIND_INTENT,
  decodeHolderFrame,
  decodeHolderHeader,
  encodeHolderFrame,
  encodeHolderHeader,
  holderFrameIntact,
} from './holder-record.js';
import { InlineWrites, openLogFile, writevFullySync, writeZeros } from './log-file.js';

export const HOLDER_LOG_FILE = 'intent-holder.log';
export const HOLDER_SEALS_FILE = 'intent-seals.json';
export const DEFAULT_HOLDER_LOG_BYTES = 64 * 1024 * 1024;
/** Largest batch: one whole INTENT_APPEND and its frames; a torn batch is never longer. */
const MAX_BATCH_BYTES = MAX_PAYLOAD_BYTES + 1024 * 1024;
/** Smallest log: room for two of the largest batches. */
export const MIN_HOLDER_LOG_BYTES = 2 * MAX_BATCH_BYTES + HOLDER_RECORDS_START;

/** One record held: where its body is, and whose it is. */
interface Held {
  token: number;
  seq: number;
  position: number;
  bodyBytes: number;
}

/** A record body to write, and for an intent record whose it is. */
interface Body {
  bytes: Buffer;
  token: number;
  seq: number;
}

/** Records (or a COVERED note) staged for the next batch, settled together. */
interface Staged {
  kind: number;
  bodies: Body[];
  bytes: number;
  volumeId: number;
  /** Filled at layout; indexed once durable. */
  held: Held[];
  done: Promise<void>;
  resolve(): void;
  reject(err: unknown): void;
}

export interface HolderLogStats {
  fileBytes: number;
  usedBytes: number;
  liveRecords: number;
  volumes: number;
  seals: number;
}

export class HolderLog implements IntentHolder {
  private epoch: number;
  private nextSeq: number;
  private position: number;
  private resetPending: boolean;
  private readonly index = new Map<number, Held[]>();
  private liveRecords = 0;
  /** Per volume, the newest (token, seq) staged: a retried append's records are not written twice. */
  private readonly newest = new Map<number, { token: number; seq: number }>();
  private queue: Staged[] = [];
  private queuedBytes = 0;
  private inFlight = false;
  private writer: Promise<void> | undefined;
  /** The last staged item's settling: a seal waits for it (and so for all before it). */
  private lastStaged: Promise<void> = Promise.resolve();
  private failed: unknown;
  private closed = false;
  private readonly headerBuffer = Buffer.alloc(HOLDER_HEADER_BYTES);
  private readonly inlineWrites = new InlineWrites();

  private constructor(
    readonly path: string,
    private readonly sealsPath: string,
    private readonly file: FileHandle,
    readonly fileBytes: number,
    private readonly hash: Hasher,
    private readonly log: Logger,
    private readonly seals: Map<number, number>,
    scanned: Scanned,
  ) {
    this.epoch = scanned.epoch;
    this.nextSeq = scanned.nextSeq;
    this.position = scanned.position;
    for (const [volumeId, held] of scanned.index) {
      this.index.set(volumeId, held);
      this.liveRecords += held.length;
      const last = held.at(-1);
      if (last) this.newest.set(volumeId, { token: last.token, seq: last.seq });
    }
    this.resetPending = this.liveRecords === 0 && this.position > HOLDER_RECORDS_START;
  }

  /** Open (creating and preallocating when absent) the holder log in `dir`, and scan it. */
  static async open(dir: string, fileBytes: number, log: Logger): Promise<HolderLog> {
    assert(fileBytes >= MIN_HOLDER_LOG_BYTES, 'holder log below its minimum size');
    const path = join(dir, HOLDER_LOG_FILE);
    const sealsPath = join(dir, HOLDER_SEALS_FILE);
    const hash = await hasher();
    const seals = await readSeals(sealsPath);
    const { file, created, head, size } = await openLogFile(path, HOLDER_HEADER_BYTES);
    try {
      const header = created ? undefined : decodeHolderHeader(head, hash);
      if (!header) {
        if (!created && size > 0)
          log.warn({ path }, 'intent holder log header unreadable: starting it afresh');
        const bytes = Math.max(fileBytes, size);
        await writeZeros(file, 0, bytes);
        await file.sync();
        const fresh = new HolderLog(path, sealsPath, file, bytes, hash, log, seals, emptyScan());
        await fresh.writeHeader();
        return fresh;
      }
      const bytes = Math.min(header.fileBytes, size);
      const scanned = await scan(file, bytes, header.epoch, header.firstSeq, hash);
      // A torn batch may have left intact-looking records past the last intact one: zero them, so
      // that none can follow the records appended from here on.
      if (scanned.position > HOLDER_RECORDS_START)
        await writeZeros(
          file,
          scanned.position,
          Math.min(bytes, scanned.position + MAX_BATCH_BYTES),
        );
      const holder = new HolderLog(path, sealsPath, file, bytes, hash, log, seals, scanned);
      if (holder.liveRecords > 0)
        log.info(
          { path, records: holder.liveRecords, volumes: holder.index.size },
          'intent holder log: records of other writers kept until covered',
        );
      return holder;
    } catch (err) {
      await file.close();
      throw err;
    }
  }

  /** The xxh64 it checks records with, for the writer's side on this node. */
  get hasher(): Hasher {
    return this.hash;
  }

  get stats(): HolderLogStats {
    return {
      fileBytes: this.fileBytes,
      usedBytes: this.position - HOLDER_RECORDS_START + this.queuedBytes,
      liveRecords: this.liveRecords,
      volumes: this.index.size,
      seals: this.seals.size,
    };
  }

  async append(
    records: readonly IntentRecord[],
    options: { checked?: boolean } = {},
  ): Promise<{ pressure: boolean }> {
    // Nothing awaits before the record is staged: a seal either comes first and refuses it, or
    // comes after and waits for it (seal()).
    this.checkOpen();
    assert(records.length > 0, 'an empty intent append');
    const { volumeId, token } = records[0];
    const sealedAt = this.seals.get(volumeId) ?? 0;
    if (token < sealedAt)
      throw new StaleTokenError(
        `volume ${volumeId}: intent log sealed at lock epoch ${sealedAt}; an append under ${token} is refused (a newer writer took over)`,
      );
    const newest = this.newest.get(volumeId);
    // A newer writer already appends here: this one lost its lock, whether or not a seal says so yet.
    if (newest && newest.token > token)
      throw new StaleTokenError(
        `volume ${volumeId}: records under lock epoch ${newest.token} are held here; an append under ${token} is refused`,
      );
    const fresh: IntentRecord[] = [];
    let bytes = 0;
    for (const r of records) {
      assert(r.volumeId === volumeId && r.token === token, 'an intent append of two streams');
      if (!options.checked && !intentRecordIntact(r, this.hash))
        throw new ChecksumError(
          String(volumeId),
          r.offset,
          `intent record ${token}/${r.seq} of volume ${volumeId} does not match its checksum`,
        );
      if (newest && newest.token === token && r.seq <= newest.seq) continue; // a retry: held already
      fresh.push(r);
      bytes += HOLDER_FRAME_BYTES + r.bytes.length;
    }
    const pressure = (): { pressure: boolean } => ({ pressure: this.pastHalf() });
    if (fresh.length === 0) {
      await this.lastStaged;
      return pressure();
    }
    if (!this.fits(bytes))
      throw new IoError('ENOSPC', `intent holder log full (${this.fileBytes} bytes)`);
    this.newest.set(volumeId, { token, seq: fresh.at(-1)!.seq });
    await this.stage(
      KIND_INTENT,
      volumeId,
      fresh.map((r) => ({ bytes: r.bytes, token, seq: r.seq })),
      bytes,
    );
    return pressure();
  }

  async seal(request: IntentSealRequest): Promise<IntentSealPage> {
    this.checkOpen();
    const { volumeId, token } = request;
    const before = this.seals.get(volumeId) ?? 0;
    if (token > before) this.seals.set(volumeId, token); // refused from this moment on
    await this.lastStaged.catch(() => undefined);
    if (token > before) await this.writeSeals();
    const held = (this.index.get(volumeId) ?? []).filter((h) => h.token < token);
    const records: Buffer[] = [];
    let bytes = SEAL_REPLY_HEAD_BYTES;
    let i = request.skip;
    for (; i < held.length; i++) {
      const h = held[i];
      if (bytes + h.bodyBytes > MAX_PAYLOAD_BYTES && records.length > 0) break;
      const body = Buffer.allocUnsafe(h.bodyBytes);
      await this.file.read(body, 0, h.bodyBytes, h.position);
      records.push(body);
      bytes += h.bodyBytes;
    }
    return { records, more: i < held.length };
  }

  covered(covered: IntentCovered): Promise<void> {
    this.checkOpen();
    const dropped = this.drop(covered);
    if (dropped > 0 && this.liveRecords > 0) {
      // The body is INTENT_COVERED's payload, as it came.
      const body = encodeIntentCovered(0, covered).subarray(HEADER_SIZE);
      // Not waited for: losing it costs space until the next commit says it again, never data.
      const note = { bytes: body, token: covered.token, seq: covered.seq };
      this.stage(KIND_COVERED, covered.volumeId, [note], HOLDER_FRAME_BYTES + body.length).catch(
        () => undefined,
      );
    }
    this.maybeReset();
    return Promise.resolve();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.writer;
    await this.file.close();
  }

  // ----------------------------------------------------------------- inside

  private checkOpen(): void {
    if (this.closed) throw new IoError('ESHUTDOWN', 'intent holder log closed');
    if (this.failed !== undefined)
      throw new IoError('EIO', `intent holder log failed: ${(this.failed as Error).message}`);
  }

  private pastHalf(): boolean {
    return this.position + this.queuedBytes > this.fileBytes / 2;
  }

  private fits(bytes: number): boolean {
    const from = this.resetPending && !this.inFlight ? HOLDER_RECORDS_START : this.position;
    return from + this.queuedBytes + bytes <= this.fileBytes;
  }

  /** Records held below (token, seq) of the volume are gone; how many were dropped. */
  private drop(covered: IntentCovered): number {
    const dropped = dropCovered(this.index, covered);
    this.liveRecords -= dropped;
    return dropped;
  }

  /** Nothing held and nothing being written: the next batch may start the file over. */
  private maybeReset(): void {
    if (this.liveRecords === 0 && !this.inFlight && this.position > HOLDER_RECORDS_START)
      this.resetPending = true;
  }

  private stage(kind: number, volumeId: number, bodies: Body[], bytes: number): Promise<void> {
    let resolve!: () => void;
    let reject!: (err: unknown) => void;
    const done = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.queue.push({ kind, bodies, bytes, volumeId, held: [], done, resolve, reject });
    this.queuedBytes += bytes;
    this.lastStaged = done.catch(() => undefined);
    if (!this.writer) this.writer = this.writeBatches();
    return done;
  }

  private async writeBatches(): Promise<void> {
    // As IntentLog's: what the event loop took in this turn rides one batch. This also keeps the
    // loop from ending before stage() has stored its promise in this.writer.
    await new Promise<void>((resolve) => setImmediate(resolve));
    while (this.queue.length > 0 && this.failed === undefined) {
      let take = 0;
      let bytes = 0;
      while (
        take < this.queue.length &&
        (take === 0 || bytes + this.queue[take].bytes <= MAX_BATCH_BYTES)
      )
        bytes += this.queue[take++].bytes;
      const items = this.queue.splice(0, take);
      this.queuedBytes -= bytes;
      this.inFlight = true;
      try {
        if (this.resetPending) {
          this.resetPending = false;
          this.epoch++;
          this.position = HOLDER_RECORDS_START;
          await this.writeHeader();
        }
        const chunks: Buffer[] = [];
        const frames = Buffer.alloc(
          HOLDER_FRAME_BYTES * items.reduce((n, s) => n + s.bodies.length, 0),
        );
        const start = this.position;
        let at = start;
        let f = 0;
        for (const item of items) {
          for (const body of item.bodies) {
            const frame = frames.subarray(f, f + HOLDER_FRAME_BYTES);
            f += HOLDER_FRAME_BYTES;
            encodeHolderFrame(frame, item.kind, this.epoch, this.nextSeq++, body.bytes, this.hash);
            chunks.push(frame, body.bytes);
            if (item.kind === KIND_INTENT)
              item.held.push({
                token: body.token,
                seq: body.seq,
                position: at + HOLDER_FRAME_BYTES,
                bodyBytes: body.bytes.length,
              });
            at += HOLDER_FRAME_BYTES + body.bytes.length;
          }
        }
        assert(at <= this.fileBytes, 'intent holder batch past the end of its file');
        this.position = at;
        // O_DSYNC: durable on return, inline or not (log-file.ts, InlineWrites).
        await this.inlineWrites.write(
          at - start,
          () => writevFullySync(this.file.fd, chunks, start),
          () => this.file.writev(chunks, start),
        );
        for (const item of items) {
          if (item.kind === KIND_INTENT) this.indexHeld(item.volumeId, item.held);
          item.resolve();
        }
      } catch (err) {
        this.failed = err;
        this.log.error(
          { path: this.path, err: (err as Error).message },
          'intent holder log write failed; appends are refused from now on (writers commit versions)',
        );
        for (const item of [...items, ...this.queue]) item.reject(err);
        this.queue = [];
        this.queuedBytes = 0;
      }
      this.inFlight = false;
      this.maybeReset();
    }
    this.writer = undefined;
  }

  private indexHeld(volumeId: number, held: Held[]): void {
    let list = this.index.get(volumeId);
    if (!list) this.index.set(volumeId, (list = []));
    for (const h of held) list.push(h);
    this.liveRecords += held.length;
  }

  private async writeHeader(): Promise<void> {
    encodeHolderHeader(
      { epoch: this.epoch, firstSeq: this.nextSeq, fileBytes: this.fileBytes },
      this.headerBuffer,
      this.hash,
    );
    await this.file.write(this.headerBuffer, 0, HOLDER_HEADER_BYTES, 0);
  }

  private async writeSeals(): Promise<void> {
    const json = JSON.stringify({ version: 1, seals: Object.fromEntries(this.seals) });
    const temp = `${this.sealsPath}.tmp`;
    await writeFile(temp, json, { mode: 0o600, flush: true });
    await rename(temp, this.sealsPath);
    const dir = await open(join(this.sealsPath, '..'), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }
}

/** Drop the records a COVERED says a committed version holds; how many went. */
function dropCovered(index: Map<number, Held[]>, { volumeId, token, seq }: IntentCovered): number {
  const held = index.get(volumeId);
  if (!held) return 0;
  const kept = held.filter((h) => h.token > token || (h.token === token && h.seq >= seq));
  if (kept.length === 0) index.delete(volumeId);
  else index.set(volumeId, kept);
  return held.length - kept.length;
}

async function readSeals(path: string): Promise<Map<number, number>> {
  const file = await open(path, 'r').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (!file) return new Map();
  try {
    const parsed = JSON.parse(await file.readFile('utf8')) as { seals?: Record<string, number> };
    const seals = new Map<number, number>();
    for (const [id, token] of Object.entries(parsed.seals ?? {})) {
      if (!Number.isSafeInteger(token) || token < 1 || !/^\d+$/.test(id))
        throw new Error(`${path}: seal ${id} → ${token} is not a volume id and a lock epoch`);
      seals.set(Number(id), token);
    }
    return seals;
  } finally {
    await file.close();
  }
}

interface Scanned {
  epoch: number;
  nextSeq: number;
  position: number;
  index: Map<number, Held[]>;
}

function emptyScan(): Scanned {
  return { epoch: 1, nextSeq: 1, position: HOLDER_RECORDS_START, index: new Map() };
}

/** The epoch's intact records from HOLDER_RECORDS_START, up to the first that is not; COVERED applied. */
async function scan(
  file: FileHandle,
  fileBytes: number,
  epoch: number,
  firstSeq: number,
  hash: Hasher,
): Promise<Scanned> {
  const index = new Map<number, Held[]>();
  const frame = Buffer.alloc(HOLDER_FRAME_BYTES);
  let position = HOLDER_RECORDS_START;
  let seq = firstSeq;
  while (position + HOLDER_FRAME_BYTES <= fileBytes) {
    await file.read(frame, 0, HOLDER_FRAME_BYTES, position);
    const f = decodeHolderFrame(frame);
    if (!f || f.epoch !== epoch || f.seq !== seq) break;
    const bodyAt = position + HOLDER_FRAME_BYTES;
    if (bodyAt + f.bodyBytes > fileBytes) break;
    const body = Buffer.alloc(f.bodyBytes);
    await file.read(body, 0, f.bodyBytes, bodyAt);
    if (!holderFrameIntact(frame, body, hash)) break;
    if (f.kind === KIND_INTENT) {
      let r: IntentRecord;
      try {
        r = decodeIntentRecord(body, 0, body.length);
      } catch {
        break;
      }
      if (r.bytes.length !== body.length || !intentRecordIntact(r, hash)) break;
      let list = index.get(r.volumeId);
      if (!list) index.set(r.volumeId, (list = []));
      list.push({ token: r.token, seq: r.seq, position: bodyAt, bodyBytes: f.bodyBytes });
    } else {
      dropCovered(index, decodeIntentCovered(body));
    }
    position = bodyAt + f.bodyBytes;
    seq++;
  }
  return { epoch, nextSeq: seq, position, index };
}
