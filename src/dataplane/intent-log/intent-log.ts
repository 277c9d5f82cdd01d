/**
 * IntentLog: a node's log of the bytes its volumes' FLUSHes made durable
 * before those bytes are committed as a new version. One preallocated file
 * (written once with zeros, then only overwritten in place, so an
 * fdatasync of it needs no filesystem metadata journal), records appended
 * from RECORDS_START and synced in groups: every record staged while a
 * batch is being written and synced rides the next batch, one write for all
 * of them (the file is open O_DSYNC: the write returns once its bytes are
 * durable), whatever connection or volume they came from.
 *
 * Space comes back as commits land: the file is a ring. A record is needed
 * until a committed version holds it: settled(volume, seq) says every
 * record of the volume numbered below seq is. The oldest batch still
 * holding a needed record is the live tail; batches are written from the
 * head on, and wrap to RECORDS_START when the next does not fit before the
 * end of the file, never over the live tail (fits() says no first: the
 * flush then commits a version instead). The file header says where a scan
 * starts (tailPosition, and the seq found there); it is rewritten, in the
 * batch's own write sequence and before its records, only when a batch
 * would overwrite the records from that position on, and then says the
 * live tail. So a steady stream of flushes never waits for the log to
 * empty, as it did when the log could only start over once no volume had a
 * record in it.
 *
 * A scan reads from the header's tail while records are intact, of the
 * header's epoch and numbered firstSeq, firstSeq + 1, …; where the next is
 * not found it looks once at RECORDS_START (the writer wrapped there): a
 * sequence number is written at one place only, so what it finds there is
 * the next record or a stale one, never a wrong one. Whatever follows a
 * torn or stale record is ignored. Epochs change at each start (after
 * replay), so no record of an earlier run is read as one of this run's.
 * Above half full the log asks its live volumes to commit (the committers
 * registered with it), again after each commit lands while it stays so.
 *
 * Format: record.ts. Replay at start-up: replay.ts and the node's hosting.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { assert } from '../../common/assert.js';
import { IoError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import { hasher, type Hasher } from '../blocks/hash.js';
import {
  FILE_HEADER_BYTES,
  RECORD_HEADER_BYTES,
  RECORDS_START,
  decodeFileHeader,
  encodeFileHeader,
  sealAad,
  stampRecord,
} from './record.js';
import { readRecord, scan, type RecordContent, type RecoveredRecord } from './log-scan.js';
import { InlineWrites, writeFullySync } from '../../common/inline-writes.js';
import { openLogFile, overlapsRun, writeZeros } from './log-file.js';

export type { RecordContent, RecoveredRecord } from './log-scan.js';

export const INTENT_LOG_FILE = 'intent.log';
/** What a node with a store of 1 GiB or less gets, and the cluster's holder log. */
export const DEFAULT_INTENT_LOG_BYTES = 64 * 1024 * 1024;
/** What a node with a store of 4 GiB or more gets. */
export const LARGEST_DEFAULT_INTENT_LOG_BYTES = 256 * 1024 * 1024;

/**
 * A single node's log unless told otherwise: a sixteenth of its store,
 * from 64 MiB to 256 MiB. Past half full the log asks for a commit, and the
 * other half must take what arrives while that commit stores the dirty
 * blocks: in a 512 MiB memory budget, 64 KiB writes FLUSHed every 16 at
 * 250-290 MiB/s filled a 64 MiB log 16-20 times in 6 s (a FLUSH that finds
 * it full commits instead, ~100 ms), 256 MiB 13 times in 20 s, out of
 * ~5,800 FLUSHes (FLUSH p99 92 ms → 10 ms; docs/benchmarks.md, session 22). From the store, so a node with
 * little disk (a test's, a laptop's) does not give a quarter GiB to it.
 */
export function defaultIntentLogBytes(storeBytes: number): number {
  const share = Math.floor(storeBytes / 16 / 2 ** 20) * 2 ** 20;
  return Math.min(LARGEST_DEFAULT_INTENT_LOG_BYTES, Math.max(DEFAULT_INTENT_LOG_BYTES, share));
}

/** Smallest log worth having: a few large flushes. */
export const MIN_INTENT_LOG_BYTES = 16 * 1024 * 1024;
const INITIAL_STAGING = 1024 * 1024;

/** A written batch: where it lies, and the volumes whose records in it are needed until settled. */
interface Segment {
  start: number;
  firstSeq: number;
  /** Flat pairs: a volume id, the seq of that volume's last data record in the batch. */
  volumes: number[];
}

/** A record position and the seq a scan expects there. */
interface LogPoint {
  position: number;
  seq: number;
}

/** Compact the segment queue once this many have been dropped from its front. */
const SEGMENT_COMPACT = 1024;

interface Batch {
  promise: Promise<void>;
  resolve(): void;
  reject(err: unknown): void;
}

function newBatch(): Batch {
  let resolve!: () => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // A batch nobody awaits (its flushes fell back to commits) must not be an unhandled rejection.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

export class IntentLog {
  /** Records the start-up scan found, in log order; emptied by startAfterReplay(). */
  recovered: RecoveredRecord[];
  /** The file's size: records lie in [RECORDS_START, fileBytes). */
  fileBytes: number;
  /** Times a batch went back to RECORDS_START (for /metrics). */
  wraps = 0;
  /** Times fits() said no: a flush (or a commit marker) found no room (for /metrics: the log is small for the load). */
  refusals = 0;
  private epoch: number;
  private nextSeq: number;
  /** Where the next batch is written. */
  private position = RECORDS_START;
  private staging = Buffer.alloc(INITIAL_STAGING);
  private spare = Buffer.alloc(INITIAL_STAGING);
  private readonly inlineWrites = new InlineWrites();
  private stagedBytes = 0;
  private recordStarts: number[] = [];
  private spareStarts: number[] = [];
  /** The volumes that staged data records into the batch being staged (Segment.volumes). */
  private stagedVolumes: number[] = [];
  private batch: Batch | undefined;
  private writing = false;
  /** The batch loop while it runs (close() waits for it). */
  private writer: Promise<void> | undefined;
  private accepting = false;
  private failed: unknown;
  /** Batches written this run, oldest first from `firstSegment`; dropped once settled. */
  private segments: Segment[] = [];
  private firstSegment = 0;
  /** Where the file header on disk says a scan starts. */
  private diskTail: LogPoint = { position: RECORDS_START, seq: 1 };
  /** Volume id → the seq of its last data record staged; absent: nothing of it is needed any more. */
  private readonly live = new Map<number, number>();
  /** Volume id → every record of it numbered below this is in a committed version. */
  private readonly settledBelow = new Map<number, number>();
  private readonly committers = new Map<number, () => void>();
  private pressing = false;
  private readonly headerBuffer = Buffer.alloc(FILE_HEADER_BYTES);
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly file: FileHandle,
    fileBytes: number,
    private readonly hash: Hasher,
    private readonly log: Logger,
    epoch: number,
    nextSeq: number,
    recovered: RecoveredRecord[],
    /** The size asked for: an older, smaller log grows to it at startAfterReplay(). */
    private readonly requestedBytes = fileBytes,
  ) {
    this.fileBytes = fileBytes;
    this.epoch = epoch;
    this.nextSeq = nextSeq;
    this.recovered = recovered;
  }

  /**
   * Open (creating and preallocating when absent) the log at `path` and
   * scan it. Appending starts only after startAfterReplay().
   */
  static async open(path: string, fileBytes: number, log: Logger): Promise<IntentLog> {
    assert(fileBytes >= MIN_INTENT_LOG_BYTES, 'intent log below its minimum size');
    const hash = await hasher();
    const { file, created, head, size } = await openLogFile(path, FILE_HEADER_BYTES);
    try {
      const header = created ? undefined : decodeFileHeader(head, hash);
      if (!header) {
        if (!created && size > 0)
          log.warn({ path }, 'intent log header unreadable: starting the log afresh');
        const bytes = Math.max(fileBytes, size);
        await writeZeros(file, 0, bytes);
        await file.sync();
        const fresh = new IntentLog(path, file, bytes, hash, log, 1, 1, []);
        await fresh.writeHeader(1, 1);
        return fresh;
      }
      const bytes = Math.min(header.fileBytes, size);
      const recovered = await scan(file, bytes, header, hash);
      const last = recovered.at(-1);
      return new IntentLog(
        path,
        file,
        bytes,
        hash,
        log,
        header.epoch,
        last ? last.seq + 1 : header.firstSeq,
        recovered,
        fileBytes,
      );
    } catch (err) {
      await file.close();
      throw err;
    }
  }

  /**
   * Read-only: the records a start would replay from the log at `path`
   * (none when there is no log, or its header is unreadable). For fsck.
   */
  static async peek(path: string): Promise<RecoveredRecord[]> {
    const file = await open(path, 'r').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (!file) return [];
    try {
      const hash = await hasher();
      const head = Buffer.alloc(FILE_HEADER_BYTES);
      await file.read(head, 0, FILE_HEADER_BYTES, 0);
      const header = decodeFileHeader(head, hash);
      if (!header) return [];
      const size = (await file.stat()).size;
      return await scan(file, Math.min(header.fileBytes, size), header, hash);
    } finally {
      await file.close();
    }
  }

  /**
   * A recovered record's content, read again from the file and checked as
   * the scan checked it. Only before startAfterReplay(): appends write over
   * recovered records.
   */
  async recordContent(record: RecoveredRecord): Promise<RecordContent> {
    assert(!this.accepting, 'intent log: a recovered record read after appends started');
    const head = Buffer.alloc(RECORD_HEADER_BYTES);
    const { position, epoch, seq } = record;
    const whole = await readRecord(
      this.file,
      this.fileBytes,
      position,
      epoch,
      seq,
      head,
      this.hash,
    );
    if (!whole)
      throw new IoError('EIO', `${this.path}: record ${seq} at ${position} changed since the scan`);
    return { payload: whole.subarray(RECORD_HEADER_BYTES), aad: sealAad(whole, 0) };
  }

  /** Whether flushes may append now (after replay, until a write fails or the log closes). */
  get usable(): boolean {
    return this.accepting && this.failed === undefined && !this.closed;
  }

  /**
   * Replay is done and committed: start a new epoch (durable before this
   * resolves), so nothing recovered is read again, and accept appends.
   */
  async startAfterReplay(): Promise<void> {
    // Nothing in the file is needed any more: a log smaller than asked for
    // (made by an older default) grows now. Zeros first, then the header
    // saying the new size; a crash between leaves the old size in force.
    if (this.requestedBytes > this.fileBytes) {
      await writeZeros(this.file, this.fileBytes, this.requestedBytes);
      this.fileBytes = this.requestedBytes;
    }
    this.epoch++;
    this.position = RECORDS_START;
    this.segments = [];
    this.firstSegment = 0;
    await this.writeHeader(this.epoch, this.nextSeq);
    this.recovered = [];
    this.accepting = true;
  }

  /** Replay could not be done for every volume: leave the file as it is, and never append this run. */
  keepForLater(reason: string): void {
    this.accepting = false;
    this.log.warn(
      { path: this.path, reason },
      'intent log kept unreplayed for the next start; FLUSH commits a whole version this run',
    );
  }

  /** A volume's commit asked for when the log fills; dropped with unregister(). */
  register(volumeId: number, commit: () => void): void {
    this.committers.set(volumeId, commit);
  }

  unregister(volumeId: number): void {
    this.committers.delete(volumeId);
  }

  /** The sequence number the next record staged will get (records are numbered as their batch is written, in staging order). */
  get nextSeqToStage(): number {
    return this.nextSeq + this.recordStarts.length;
  }

  /**
   * Whether `bytes` more bytes of records fit in the batch being staged:
   * the batch, placed at the head or wrapped to RECORDS_START, clear of
   * every record still needed. Past half full (or full), live volumes are
   * asked to commit.
   */
  fits(bytes: number): boolean {
    const total = this.stagedBytes + bytes;
    const capacity = this.fileBytes - RECORDS_START;
    this.dropSettled();
    const start = this.placement(total);
    const tail = this.liveTail();
    const fits =
      total <= capacity &&
      (tail === undefined || !overlapsRun(tail.position, this.position, start, total));
    if (!fits) this.refusals++;
    if (!fits || this.usedBytes() + total > capacity / 2) this.press();
    return fits;
  }

  /**
   * Room for a record of `bytes` bytes in the batch being staged: write it
   * at `at` in the returned buffer before yielding (the buffer may be
   * replaced by a larger one at the next call). Check fits() first.
   */
  stage(bytes: number): { buffer: Buffer; at: number } {
    assert(this.usable, 'intent log staged while not accepting records');
    if (this.stagedBytes + bytes > this.staging.length) {
      const grown = Buffer.alloc(Math.max(this.staging.length * 2, this.stagedBytes + bytes));
      this.staging.copy(grown, 0, 0, this.stagedBytes);
      this.staging = grown;
    }
    const at = this.stagedBytes;
    this.recordStarts.push(at);
    this.stagedBytes += bytes;
    return { buffer: this.staging, at };
  }

  /**
   * The records staged since the last call are volume `volumeId`'s: needed
   * until settled() covers the last of them. Resolves once they are on disk
   * (the batch's O_DSYNC write returned).
   */
  durable(volumeId: number): Promise<void> {
    const last = this.nextSeqToStage - 1;
    assert(last >= this.nextSeq, 'intent log: durable() with no record staged');
    this.live.set(volumeId, last);
    this.stagedVolumes.push(volumeId, last);
    return this.syncStaged();
  }

  /** Resolves once what is staged so far is on disk; marks no volume live (commit markers). */
  syncStaged(): Promise<void> {
    this.batch ??= newBatch();
    const { promise } = this.batch;
    if (!this.writing) this.writer = this.writeBatches();
    return promise;
  }

  /**
   * A commit of the volume landed holding every record of it numbered
   * below `belowSeq` (nextSeqToStage when the commit started). Their space
   * is written again once every record before them is settled too.
   */
  settled(volumeId: number, belowSeq: number): void {
    if (belowSeq > (this.settledBelow.get(volumeId) ?? 0))
      this.settledBelow.set(volumeId, belowSeq);
    const last = this.live.get(volumeId);
    if (last !== undefined && last < belowSeq) this.live.delete(volumeId);
    this.pressing = false; // a commit landed: ask again if the log is still past half
  }

  /** Bytes from the live tail to the head: what the records still needed take. */
  usedBytes(): number {
    const tail = this.liveTail();
    if (tail === undefined) return 0;
    if (tail.position < this.position) return this.position - tail.position;
    return this.fileBytes - tail.position + (this.position - RECORDS_START);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // The loop, not a batch's promise: the batch being written is no longer this.batch.
    await this.writer;
    await this.file.close();
  }

  /** Past half full: ask every live volume to commit, once until a commit lands. */
  private press(): void {
    if (this.pressing) return;
    this.pressing = true;
    for (const id of this.live.keys()) this.committers.get(id)?.();
  }

  private async writeBatches(): Promise<void> {
    this.writing = true;
    // Every request the event loop took in this turn stages before the
    // first batch is cut: one write for all of them (group commit), inline
    // or not — while an inline write runs, nothing else can stage.
    await new Promise<void>((resolve) => setImmediate(resolve));
    while (this.stagedBytes > 0 && this.failed === undefined) {
      const buffer = this.staging;
      const bytes = this.stagedBytes;
      const starts = this.recordStarts;
      const batch = this.batch!;
      this.staging = this.spare;
      this.spare = buffer;
      this.recordStarts = this.spareStarts;
      this.spareStarts = starts;
      this.stagedBytes = 0;
      this.batch = undefined;
      const volumes = this.stagedVolumes;
      this.stagedVolumes = [];
      try {
        this.dropSettled();
        const position = this.placement(bytes);
        const tail = this.liveTail();
        assert(
          tail === undefined || !overlapsRun(tail.position, this.position, position, bytes),
          'intent log batch over records still needed',
        );
        // The header's tail is about to be overwritten: point it at the live tail (or at this batch) first.
        const headerChanged =
          this.diskTail.seq < this.nextSeq &&
          overlapsRun(this.diskTail.position, this.position, position, bytes);
        if (headerChanged) {
          this.diskTail = tail ?? { position, seq: this.nextSeq };
          encodeFileHeader(
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
        if (position < this.position) this.wraps++;
        const firstSeq = this.nextSeq;
        for (const at of starts) stampRecord(buffer, at, this.epoch, this.nextSeq++, this.hash);
        this.segments.push({ start: position, firstSeq, volumes });
        this.position = position + bytes;
        // O_DSYNC: durable on return, inline or not.
        const { fd } = this.file;
        await this.inlineWrites.write(
          bytes,
          () => {
            if (headerChanged) writeFullySync(fd, this.headerBuffer, 0, FILE_HEADER_BYTES, 0);
            writeFullySync(fd, buffer, 0, bytes, position);
          },
          async () => {
            if (headerChanged) await this.file.write(this.headerBuffer, 0, FILE_HEADER_BYTES, 0);
            await this.file.write(buffer, 0, bytes, position);
          },
        );
        batch.resolve();
      } catch (err) {
        // Where the file stands is unknown now: no more appends this run (flushes commit versions).
        this.failed = err;
        this.log.error(
          { path: this.path, err: (err as Error).message },
          'intent log write failed; FLUSH commits a whole version from now on',
        );
        batch.reject(err);
        const next = this.batch as Batch | undefined;
        next?.reject(err);
        this.batch = undefined;
      }
      starts.length = 0;
    }
    this.writing = false;
  }

  /** A header whose scan starts at RECORDS_START with `firstSeq` (a fresh log, a new run). */
  private async writeHeader(epoch: number, firstSeq: number): Promise<void> {
    this.diskTail = { position: RECORDS_START, seq: firstSeq };
    encodeFileHeader(
      { epoch, firstSeq, fileBytes: this.fileBytes, tailPosition: RECORDS_START },
      this.headerBuffer,
      this.hash,
    );
    await this.file.write(this.headerBuffer, 0, FILE_HEADER_BYTES, 0);
    await this.file.datasync();
  }

  /** Where a batch of `bytes` goes: at the head, or at RECORDS_START when it would pass the end. */
  private placement(bytes: number): number {
    return this.position + bytes <= this.fileBytes ? this.position : RECORDS_START;
  }

  /** The oldest batch with a record still needed, or none. */
  private liveTail(): LogPoint | undefined {
    const segment = this.segments[this.firstSegment];
    return segment && { position: segment.start, seq: segment.firstSeq };
  }

  /** Drop the batches from the front whose every needed record is settled. */
  private dropSettled(): void {
    const { segments } = this;
    while (this.firstSegment < segments.length && this.isSettled(segments[this.firstSegment]))
      this.firstSegment++;
    if (this.firstSegment >= SEGMENT_COMPACT && this.firstSegment * 2 >= segments.length) {
      this.segments = segments.slice(this.firstSegment);
      this.firstSegment = 0;
    }
  }

  private isSettled(segment: Segment): boolean {
    const { volumes } = segment;
    for (let i = 0; i < volumes.length; i += 2)
      if ((this.settledBelow.get(volumes[i]) ?? 0) <= volumes[i + 1]) return false;
    return true;
  }
}
