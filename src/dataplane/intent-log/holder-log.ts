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
 * arrived while the last was being written), and a ring: a batch goes at the
 * head, or at HOLDER_RECORDS_START when it would pass the end, never over
 * the oldest batch still holding a live record (the live tail; an append
 * that would is refused with ENOSPC, and its writer commits a version
 * instead). The header says where a scan starts (tailPosition, and the
 * holder seq found there); it is rewritten, before the batch's records,
 * only when a batch would overwrite what a scan from there walks, and then
 * names the live tail. So a writer that flushes steadily never waits for
 * the log to empty, as it had to when the log could only start over once
 * nothing in it was live: with commits landing while appends go on, that
 * moment rarely came, the log filled, and every FLUSH committed a version
 * (docs/benchmarks.md, session 25).
 *
 * Unlike the single node's log, a holder never replays: records stay until
 * covered, a restart included. The scan follows holder seqs from the
 * header's tail, looks once at HOLDER_RECORDS_START where the next is not
 * found (a holder seq is written at one place only), and rebuilds the index;
 * appending goes on after the last intact record. The free bytes a torn
 * batch may have left there (or at HOLDER_RECORDS_START, where a batch that
 * wrapped goes) are zeroed first, so nothing stale can follow a new record.
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
import type { FileHandle } from 'node:fs/promises';
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
  encodeIntentCovered,
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
  decodeHolderHeader,
  encodeHolderFrame,
  encodeHolderHeader,
} from './holder-record.js';
import {
  dropCovered,
  emptyScan,
  scan,
  type Held,
  type LogPoint,
  type Scanned,
  type Segment,
} from './holder-scan.js';
import { readSeals, writeSeals } from './holder-seals.js';
import { InlineWrites, writevFullySync } from '../../common/inline-writes.js';
import { openLogFile, overlapsRun, writeZeros } from './log-file.js';

export const HOLDER_LOG_FILE = 'intent-holder.log';
export const HOLDER_SEALS_FILE = 'intent-seals.json';
/** Largest batch: one whole INTENT_APPEND and its frames; a torn batch is never longer. */
const MAX_BATCH_BYTES = MAX_PAYLOAD_BYTES + 1024 * 1024;
/** Smallest log: room for two of the largest batches. */
export const MIN_HOLDER_LOG_BYTES = 2 * MAX_BATCH_BYTES + HOLDER_RECORDS_START;

/** The (token, seq) of a COVERED note that covers every record of its volume (forgetVolumes). */
const FORGET_ALL = Number.MAX_SAFE_INTEGER;

/** Drop the segments from the front of the list once this many are dead and they are half of it. */
const SEGMENT_COMPACT = 1024;

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
  /** From the live tail to the head, and what is staged: what a full log is full of. */
  usedBytes: number;
  liveRecords: number;
  volumes: number;
  seals: number;
  /** Batches written at the start again since open. */
  wraps: number;
  /** Appends refused since open because the log was full (their writers committed instead). */
  refusals: number;
}

export class HolderLog implements IntentHolder {
  private readonly epoch: number;
  private nextSeq: number;
  /** The head: where the next batch goes if it fits before the end. */
  private position: number;
  /** Batches with records held, oldest first from firstSegment (dead ones dropped from the front). */
  private segments: Segment[];
  private firstSegment = 0;
  /** Where the header on disk says a scan starts. */
  private diskTail: LogPoint;
  private wraps = 0;
  private refusals = 0;
  private readonly index = new Map<number, Held[]>();
  private liveRecords = 0;
  /** Per volume, the newest (token, seq) staged: a retried append's records are not written twice. */
  private readonly newest = new Map<number, { token: number; seq: number }>();
  private queue: Staged[] = [];
  private queuedBytes = 0;
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
    this.diskTail = scanned.tail;
    this.segments = scanned.segments.filter((segment) => segment.live > 0);
    for (const [volumeId, held] of scanned.index) {
      this.index.set(volumeId, held);
      this.liveRecords += held.length;
      const last = held.at(-1);
      if (last) this.newest.set(volumeId, { token: last.token, seq: last.seq });
    }
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
      if (header.tailPosition >= bytes)
        throw new Error(`${path}: header's tail past the file's end`);
      const scanned = await scan(file, bytes, header, hash);
      const holder = new HolderLog(path, sealsPath, file, bytes, hash, log, seals, scanned);
      // A torn batch may have left intact-looking records past the last intact one, at the head
      // or at the start (where a batch that wrapped went): zero the free bytes there, so that none
      // can follow the records appended from here on.
      await holder.zeroFree(scanned.position, MAX_BATCH_BYTES);
      await holder.zeroFree(HOLDER_RECORDS_START, MAX_BATCH_BYTES);
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
      usedBytes: this.usedBytes() + this.queuedBytes,
      liveRecords: this.liveRecords,
      volumes: this.index.size,
      seals: this.seals.size,
      wraps: this.wraps,
      refusals: this.refusals,
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
    if (!this.fits(bytes)) {
      this.refusals++;
      throw new IoError('ENOSPC', `intent holder log full (${this.fileBytes} bytes)`);
    }
    const mine = { token, seq: fresh.at(-1)!.seq };
    this.newest.set(volumeId, mine);
    try {
      await this.stage(
        KIND_INTENT,
        volumeId,
        fresh.map((r) => ({ bytes: r.bytes, token, seq: r.seq })),
        bytes,
      );
    } catch (err) {
      // Refused for room when its batch was placed: not held, so a retry must not be taken for one.
      if (err instanceof IoError && err.errno === 'ENOSPC') {
        this.refusals++;
        if (this.newest.get(volumeId) === mine) {
          if (newest) this.newest.set(volumeId, newest);
          else this.newest.delete(volumeId);
        }
      }
      throw err;
    }
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
    // Logged even when nothing is left live: the dropped records stay on a later scan's path.
    if (this.drop(covered) > 0) this.logCovered(covered);
    return Promise.resolve();
  }

  /** The volumes this log holds records of now. */
  heldVolumes(): number[] {
    return [...this.index.keys()];
  }

  /**
   * Drop every record held of these volumes — deleted ones: no writer will
   * commit them, and a record nobody covers would stop the ring for good
   * once it came round to it. The caller knows them deleted (they had
   * records here before a catalog listing that lacks them: ids are never
   * reused). Logged as a COVERED note of everything, so a restart does not
   * find them again. Returns how many records went.
   */
  forgetVolumes(volumeIds: Iterable<number>): number {
    this.checkOpen();
    let dropped = 0;
    for (const volumeId of volumeIds) {
      const everything = { volumeId, token: FORGET_ALL, seq: FORGET_ALL };
      const went = this.drop(everything);
      if (went === 0) continue;
      dropped += went;
      this.newest.delete(volumeId);
      this.logCovered(everything);
    }
    return dropped;
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
    return this.usedBytes() + this.queuedBytes > (this.fileBytes - HOLDER_RECORDS_START) / 2;
  }

  /**
   * Whether `bytes` more, after what is staged, fit: all of it placed at
   * the head or wrapped to the start, clear of every record held. (Staged
   * appends are written in batches of up to MAX_BATCH_BYTES, each placed on
   * its own; a batch that finds no room then is refused the same way.)
   */
  private fits(bytes: number): boolean {
    const total = this.queuedBytes + bytes;
    if (total > this.fileBytes - HOLDER_RECORDS_START) return false;
    return this.clearOfLive(this.placement(total), total);
  }

  /** Where a batch of `bytes` goes: at the head, or at the start when it would pass the end. */
  private placement(bytes: number): number {
    return this.position + bytes <= this.fileBytes ? this.position : HOLDER_RECORDS_START;
  }

  /** Whether bytes [start, start + bytes) miss every record still held. */
  private clearOfLive(start: number, bytes: number): boolean {
    const tail = this.liveTail();
    return tail === undefined || !overlapsRun(tail.position, this.position, start, bytes);
  }

  /** The oldest batch with a record still held, or none. */
  private liveTail(): LogPoint | undefined {
    const { segments } = this;
    while (this.firstSegment < segments.length && segments[this.firstSegment].live === 0)
      this.firstSegment++;
    if (this.firstSegment >= SEGMENT_COMPACT && this.firstSegment * 2 >= segments.length) {
      this.segments = segments.slice(this.firstSegment);
      this.firstSegment = 0;
    }
    const segment = this.segments[this.firstSegment];
    return segment && { position: segment.start, seq: segment.firstSeq };
  }

  /** Bytes from the live tail to the head: what the records still held take. */
  private usedBytes(): number {
    const tail = this.liveTail();
    if (tail === undefined) return 0;
    if (tail.position < this.position) return this.position - tail.position;
    return this.fileBytes - tail.position + (this.position - HOLDER_RECORDS_START);
  }

  /**
   * Zero up to `bytes` from `from` (the head, or the start) on, short of the
   * end of the file and of the records a scan walks (from the header's tail
   * to the head: zeroing a dead one there could make a later scan stop
   * early and number new records as old ones were).
   */
  private async zeroFree(from: number, bytes: number): Promise<void> {
    const tail = this.diskTail.position;
    const head = this.position;
    let end = Math.min(from + bytes, this.fileBytes);
    if (this.diskTail.seq < this.nextSeq) {
      // The path holds records (none: everything is free).
      if (tail >= head) {
        // It wraps, or goes once round (tail = head): free is [head, tail).
        if (from < head) return;
        end = Math.min(end, tail);
      } else if (from < head) {
        // It is [tail, head); below it, [start, tail) is free.
        if (from >= tail) return;
        end = Math.min(end, tail);
      }
    }
    if (end > from) await writeZeros(this.file, from, end);
  }

  /** Stage a COVERED note (the body INTENT_COVERED's payload) so a restart's scan drops the same records. */
  private logCovered(covered: IntentCovered): void {
    const body = encodeIntentCovered(0, covered).subarray(HEADER_SIZE);
    const note = { bytes: body, token: covered.token, seq: covered.seq };
    // Not waited for: losing it costs space until the next commit says it again, never data.
    this.stage(KIND_COVERED, covered.volumeId, [note], HOLDER_FRAME_BYTES + body.length).catch(
      () => undefined,
    );
  }

  /** Records held below (token, seq) of the volume are gone; how many were dropped. */
  private drop(covered: IntentCovered): number {
    const dropped = dropCovered(this.index, covered);
    this.liveRecords -= dropped;
    return dropped;
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
      const start = this.placement(bytes);
      if (!this.clearOfLive(start, bytes)) {
        // fits() counted on room that batching did not leave: these appends commit instead.
        const full = new IoError('ENOSPC', `intent holder log full (${this.fileBytes} bytes)`);
        for (const item of items) item.reject(full);
        continue;
      }
      try {
        const chunks: Buffer[] = [];
        const frames = Buffer.alloc(
          HOLDER_FRAME_BYTES * items.reduce((n, s) => n + s.bodies.length, 0),
        );
        // The header's tail is about to be overwritten: point it at the live tail (or at this batch) first.
        const headerChanged =
          this.diskTail.seq < this.nextSeq &&
          overlapsRun(this.diskTail.position, this.position, start, bytes);
        if (headerChanged)
          this.diskTail = this.liveTail() ?? { position: start, seq: this.nextSeq };
        const segment: Segment = { start, firstSeq: this.nextSeq, live: 0 };
        let at = start;
        let f = 0;
        for (const item of items) {
          for (const body of item.bodies) {
            const frame = frames.subarray(f, f + HOLDER_FRAME_BYTES);
            f += HOLDER_FRAME_BYTES;
            encodeHolderFrame(frame, item.kind, this.epoch, this.nextSeq++, body.bytes, this.hash);
            chunks.push(frame, body.bytes);
            // Counted live from layout on: liveTail() must never step past a batch being written.
            if (item.kind === KIND_INTENT) segment.live++;
            if (item.kind === KIND_INTENT)
              item.held.push({
                token: body.token,
                seq: body.seq,
                position: at + HOLDER_FRAME_BYTES,
                bodyBytes: body.bytes.length,
                segment,
              });
            at += HOLDER_FRAME_BYTES + body.bytes.length;
          }
        }
        assert(at <= this.fileBytes, 'intent holder batch past the end of its file');
        assert(at - start === bytes, 'intent holder batch of another size than staged');
        if (start < this.position) this.wraps++;
        this.segments.push(segment);
        this.position = at;
        if (headerChanged) this.encodeHeader();
        // O_DSYNC: durable on return, inline or not (log-file.ts, InlineWrites); the header first.
        await this.inlineWrites.write(
          bytes,
          () => {
            if (headerChanged) writevFullySync(this.file.fd, [this.headerBuffer], 0);
            writevFullySync(this.file.fd, chunks, start);
          },
          async () => {
            if (headerChanged) await this.file.write(this.headerBuffer, 0, HOLDER_HEADER_BYTES, 0);
            await this.file.writev(chunks, start);
          },
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
    }
    this.writer = undefined;
  }

  private indexHeld(volumeId: number, held: Held[]): void {
    let list = this.index.get(volumeId);
    if (!list) this.index.set(volumeId, (list = []));
    for (const h of held) list.push(h);
    this.liveRecords += held.length;
  }

  private encodeHeader(): void {
    encodeHolderHeader(
      {
        epoch: this.epoch,
        firstSeq: this.diskTail.seq,
        fileBytes: this.fileBytes,
        tailPosition: this.diskTail.position,
      },
      this.headerBuffer,
      this.hash,
    );
  }

  private async writeHeader(): Promise<void> {
    this.encodeHeader();
    await this.file.write(this.headerBuffer, 0, HOLDER_HEADER_BYTES, 0);
  }

  private writeSeals(): Promise<void> {
    return writeSeals(this.sealsPath, this.seals);
  }
}
