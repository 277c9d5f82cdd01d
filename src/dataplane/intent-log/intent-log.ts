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
 * Space comes back by epochs. A volume is live in the log from the moment
 * it stages a record until a commit covering that record lands
 * (settled()). When no volume is live every record in the file is held by
 * a committed version too; the next batch then starts the file over at
 * RECORDS_START under a new epoch, writing the file header (epoch,
 * firstSeq) just before its records. A scan reads from
 * RECORDS_START while records are intact, of the header's epoch and
 * numbered firstSeq, firstSeq + 1, …: whatever follows a torn or stale
 * record is ignored. Above half full the log asks its live volumes to
 * commit (the committers registered with it).
 *
 * Format: record.ts. Replay at start-up: replay.ts and the node's hosting.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { assert } from '../../common/assert.js';
import type { Logger } from '../../common/log.js';
import { hasher, type Hasher } from '../blocks/hash.js';
import {
  FILE_HEADER_BYTES,
  RECORD_HEADER_BYTES,
  RECORDS_START,
  decodeFileHeader,
  decodeRecordHeader,
  encodeFileHeader,
  recordIsIntact,
  sealAad,
  stampRecord,
  type RecordHeader,
} from './record.js';
import { InlineWrites, openLogFile, writeFullySync, writeZeros } from './log-file.js';

export const INTENT_LOG_FILE = 'intent.log';
/** The size to turn the log on with: 64 MiB; past half of it (~8k flushed 4 KiB writes) volumes commit. */
export const SUGGESTED_INTENT_LOG_BYTES = 64 * 1024 * 1024;
/** A single node has one unless told otherwise (`--intent-log-size 0`: every FLUSH commits a version). */
export const DEFAULT_INTENT_LOG_BYTES = SUGGESTED_INTENT_LOG_BYTES;
/** Smallest log worth having: a few large flushes. */
export const MIN_INTENT_LOG_BYTES = 16 * 1024 * 1024;
const INITIAL_STAGING = 1024 * 1024;

/** A record found intact by the start-up scan, with what replay needs. */
export interface RecoveredRecord extends RecordHeader {
  /** Payload as logged (sealed when FLAG_SEALED); empty for FLAG_ZEROS. */
  payload: Buffer;
  /** The aad its payload was sealed with. */
  aad: Buffer;
}

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
  private batch: Batch | undefined;
  private writing = false;
  /** The batch loop while it runs (close() waits for it). */
  private writer: Promise<void> | undefined;
  private resetPending = false;
  private accepting = false;
  private failed: unknown;
  /** Volume id → the last capture it staged; absent: nothing of it is needed any more. */
  private readonly live = new Map<number, number>();
  private readonly committers = new Map<number, () => void>();
  private pressing = false;
  private readonly headerBuffer = Buffer.alloc(FILE_HEADER_BYTES);
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly file: FileHandle,
    readonly fileBytes: number,
    private readonly hash: Hasher,
    private readonly log: Logger,
    epoch: number,
    nextSeq: number,
    recovered: RecoveredRecord[],
  ) {
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
      const recovered = await scan(file, bytes, header.epoch, header.firstSeq, hash);
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
      return await scan(
        file,
        Math.min(header.fileBytes, size),
        header.epoch,
        header.firstSeq,
        hash,
      );
    } finally {
      await file.close();
    }
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
    this.epoch++;
    this.position = RECORDS_START;
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

  /** Whether `bytes` more bytes of records fit before the end of the file. */
  fits(bytes: number): boolean {
    const from = this.resetPending && !this.writing ? RECORDS_START : this.position;
    const fits = from + this.stagedBytes + bytes <= this.fileBytes;
    if (!fits || from + this.stagedBytes + bytes > this.fileBytes / 2) this.press();
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
   * The records staged so far belong to volume `volumeId`'s capture
   * `capture`: the volume is live until settled() covers it. Resolves once
   * they are on disk (the batch's O_DSYNC write returned).
   */
  durable(volumeId: number, capture: number): Promise<void> {
    this.live.set(volumeId, capture);
    return this.syncStaged();
  }

  /** Resolves once what is staged so far is on disk; marks no volume live (commit markers). */
  syncStaged(): Promise<void> {
    this.batch ??= newBatch();
    const { promise } = this.batch;
    if (!this.writing) this.writer = this.writeBatches();
    return promise;
  }

  /** A commit of the volume landed holding every capture up to `capture`. */
  settled(volumeId: number, capture: number): void {
    const last = this.live.get(volumeId);
    if (last !== undefined && last <= capture) this.live.delete(volumeId);
    if (this.live.size === 0 && this.position > RECORDS_START) {
      this.resetPending = true;
      this.pressing = false;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // The loop, not a batch's promise: the batch being written is no longer this.batch.
    await this.writer;
    await this.file.close();
  }

  /** Half full: ask every live volume to commit, once until the log starts over. */
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
      try {
        let headerChanged = false;
        if (this.resetPending) {
          this.resetPending = false;
          this.epoch++;
          this.position = RECORDS_START;
          headerChanged = true;
        }
        const firstSeq = this.nextSeq;
        for (const at of starts) stampRecord(buffer, at, this.epoch, this.nextSeq++, this.hash);
        const position = this.position;
        assert(position + bytes <= this.fileBytes, 'intent log batch past the end of its file');
        this.position += bytes;
        if (headerChanged) {
          encodeFileHeader(
            { epoch: this.epoch, firstSeq, fileBytes: this.fileBytes },
            this.headerBuffer,
            this.hash,
          );
        }
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

  private async writeHeader(epoch: number, firstSeq: number): Promise<void> {
    encodeFileHeader({ epoch, firstSeq, fileBytes: this.fileBytes }, this.headerBuffer, this.hash);
    await this.file.write(this.headerBuffer, 0, FILE_HEADER_BYTES, 0);
    await this.file.datasync();
  }
}

/** The epoch's intact records from RECORDS_START, in order, up to the first that is not. */
async function scan(
  file: FileHandle,
  fileBytes: number,
  epoch: number,
  firstSeq: number,
  hash: Hasher,
): Promise<RecoveredRecord[]> {
  const records: RecoveredRecord[] = [];
  const head = Buffer.alloc(RECORD_HEADER_BYTES);
  let position = RECORDS_START;
  let seq = firstSeq;
  while (position + RECORD_HEADER_BYTES <= fileBytes) {
    await file.read(head, 0, RECORD_HEADER_BYTES, position);
    const header = decodeRecordHeader(head, 0);
    if (!header || header.epoch !== epoch || header.seq !== seq) break;
    const end = position + RECORD_HEADER_BYTES + header.payloadBytes;
    if (end > fileBytes) break;
    const whole = Buffer.alloc(RECORD_HEADER_BYTES + header.payloadBytes);
    head.copy(whole);
    await file.read(
      whole,
      RECORD_HEADER_BYTES,
      header.payloadBytes,
      position + RECORD_HEADER_BYTES,
    );
    if (!recordIsIntact(whole, 0, header, hash)) break;
    records.push({
      ...header,
      payload: whole.subarray(RECORD_HEADER_BYTES),
      aad: sealAad(whole, 0),
    });
    position = end;
    seq++;
  }
  return records;
}
