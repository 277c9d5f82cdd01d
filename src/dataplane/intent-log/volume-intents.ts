/**
 * VolumeIntents: one volume's side of the intent log. It notes the byte
 * ranges written or zeroed since they were last logged; a FLUSH logs their
 * current content (sealed for an encrypted volume) and waits for the
 * log's group fdatasync — not for a version commit, which follows in the
 * background (the periodic commit, cache pressure, or the log filling up).
 *
 * Why current content and not each write's bytes: replay applies records in
 * log order, so the last record over a byte decides it; a data record holds
 * what the volume reads there when the flush captured it, a zeros record
 * says the range was trimmed or zeroed. Either way the last record over a
 * byte gives what a read saw at the capture, and no write has to be copied
 * on the write path (the ranges are all it keeps).
 *
 * Which version holds a record's bytes (its coveredBy): every write done
 * before a commit round starts is in that round's version. No commit
 * running at the capture: the next one (committed generation + 1). One
 * running: it may have started before the capture, so the one after
 * (generation + 2). Never less than the previous capture's: a running
 * commit that fails leaves generation + 1 for the next, and a later record
 * marked covered by it while an earlier one is not would let replay put the
 * earlier one's older bytes over data the later one flushed. Monotonic per
 * volume, the records replay picks (coveredBy above the committed
 * generation) are a suffix of the volume's records, applied in order over a
 * version holding everything captured before them.
 */
import { assert } from '../../common/assert.js';
import { IoError } from '../../common/errors.js';
import { CaptureQueue } from './capture-queue.js';
import type { IntentLog } from './intent-log.js';
import {
  FLAG_COMMITTED,
  FLAG_PARTIAL,
  FLAG_SEALED,
  FLAG_ZEROS,
  MAX_RECORD_LENGTH,
  RECORD_HEADER_BYTES,
  encodeRecordHeader,
  recordBytes,
  sealAad,
} from './record.js';
import { IntentSealer } from './seal.js';
import { WrittenRanges, readContent } from './written-ranges.js';
import type { VolumeState } from '../volume/volume-state.js';

/**
 * A flush logging more than this commits a version instead: whole blocks cost
 * no more than the log then. It also bounds memory: a capture holds its bytes
 * until they are logged (64 MiB, with 1 MiB writes FLUSHed every 32, had the
 * cgroup's OOM killer stop a node in a 512 MiB limit: docs/benchmarks.md, session 31).
 */
export const MAX_LOGGED_BYTES_PER_FLUSH = 8 * 1024 * 1024;
/** Most ranges kept between flushes; more and the next flush commits a version. */
export const MAX_LOGGED_RANGES = 4096;

/** What VolumeIntents needs of its volume besides its state. */
export interface IntentSource {
  /** The volume's current content at `offset` (what a client read would see). */
  read(offset: number, dest: Buffer): Promise<void>;
  /** Commit a version holding every write completed before the call. */
  commit(): Promise<void>;
}

const DONE = Promise.resolve();

/** Room kept free in the log for commit markers: a capture that would use it commits instead. */
const MARKER_HEADROOM = 64 * RECORD_HEADER_BYTES;

/** Where a commit round started, in captures and in the log (commitStarting()). */
export interface CommitStart {
  capture: number;
  nextSeq: number;
}

/**
 * A volume's fast FLUSH, as the volume and its write-back use it: a single
 * node's log (VolumeIntents) or a cluster's replicated one
 * (replicated-intents.ts).
 */
export interface FlushLog {
  /** How many captures there were: a commit started after this covers them. */
  readonly captured: number;
  noteWrite(offset: number, length: number): void;
  noteZeros(offset: number, length: number): void;
  /** Resolves once every write completed before the call is durable (logged, or committed). */
  flush(): Promise<void>;
  /** A full commit round starts; what it will hold, for committed(). */
  commitStarting(): CommitStart;
  /** That round's version `generation` landed. */
  committed(start: CommitStart, generation: number): void;
  /** A commit of spilled blocks only (which may lack logged bytes) is about to run. */
  beforePartialCommit(generation: number): Promise<void>;
  close(): void;
}

export class VolumeIntents implements FlushLog {
  private readonly ranges = new WrittenRanges(MAX_LOGGED_BYTES_PER_FLUSH, MAX_LOGGED_RANGES);
  /** Captures made; a commit covers every capture made before it started. */
  private captures = 0;
  private lastCoveredBy = 0;
  /** FLUSHes captured one at a time; one arriving while a capture waits joins it. */
  private readonly captureQueue = new CaptureQueue(() => this.capture());
  private lastDurable: Promise<void> = DONE;
  /** The last commit marker's durability (see committed()). */
  private lastMarker: Promise<void> = DONE;
  private scratch: Buffer = Buffer.alloc(0);
  private readonly sealer: IntentSealer | undefined;
  private readonly log: IntentLog;
  private readonly id: number;

  constructor(
    private readonly state: VolumeState,
    private readonly source: IntentSource,
  ) {
    const log = state.services.intentLog;
    assert(log !== undefined, 'VolumeIntents without an intent log');
    this.log = log;
    this.id = state.id;
    this.sealer = state.key ? new IntentSealer(state.key) : undefined;
    log.register(state.id, () => {
      source.commit().catch(() => undefined); // its failure is the commit's to report, retried later
    });
  }

  /** Bytes [offset, offset + length) were written. */
  noteWrite(offset: number, length: number): void {
    this.ranges.note(offset, length, false);
  }

  /** Bytes [offset, offset + length) now read as zeros (trim, write-zeroes). */
  noteZeros(offset: number, length: number): void {
    this.ranges.note(offset, length, true);
  }

  /** How many captures there were: a commit started after this covers them. */
  get captured(): number {
    return this.captures;
  }

  /**
   * A commit round starts: what it will hold, for committed() once it
   * lands — the captures made so far and the sequence number the next
   * record staged will get (every record before it is a capture made so
   * far, of this volume or another).
   */
  commitStarting(): CommitStart {
    return { capture: this.captures, nextSeq: this.log.nextSeqToStage };
  }

  /**
   * A commit that started at `start` has landed as version `generation`.
   * Once the volume has logged anything, a marker record says so: replay
   * skips this volume's records numbered below `start.nextSeq` when the
   * committed version reaches the marker's. Its position in the log is not
   * that bound: records captured while the commit ran come before it and
   * are not in the version. Without a marker a record whose coveredBy ran
   * ahead (captured while a commit that then failed was running) could
   * replay older bytes over data a flush made durable by committing (the
   * fallback, which waits for the marker).
   */
  committed(start: CommitStart, generation: number): void {
    const { log } = this;
    log.settled(this.id, start.nextSeq);
    if (this.lastCoveredBy === 0 || !log.usable || !log.fits(RECORD_HEADER_BYTES)) return;
    this.stageMarker(FLAG_COMMITTED, generation, start.nextSeq);
    this.lastMarker = log.syncStaged();
  }

  /**
   * A version of `generation` is about to be committed holding only what
   * is already spilled (a full store: write-back.ts), so it may lack bytes
   * of records that say it covers them. A marker, durable before that
   * version can land, tells replay to apply those records over it; later
   * captures are covered by a later version. Throws (and nothing is
   * committed) when the log cannot take the marker.
   */
  async beforePartialCommit(generation: number): Promise<void> {
    if (this.lastCoveredBy === 0) return; // nothing logged: no record can claim it
    const { log } = this;
    if (!log.usable || !log.fits(RECORD_HEADER_BYTES))
      throw new IoError('ENOSPC', `volume ${this.state.name}: the intent log cannot take a marker`);
    this.stageMarker(FLAG_PARTIAL, generation, 0);
    this.lastCoveredBy = Math.max(this.lastCoveredBy, generation + 1);
    await log.syncStaged();
  }

  private stageMarker(flags: number, coveredBy: number, offset: number): void {
    const { buffer, at } = this.log.stage(RECORD_HEADER_BYTES);
    encodeRecordHeader({ flags, volumeId: this.id, coveredBy, offset, length: 0 }, buffer, at);
  }

  close(): void {
    this.log.unregister(this.id);
  }

  /**
   * Resolves once every write completed before the call is durable: in the
   * log (one group fdatasync), or — when the log can't take it — committed.
   */
  flush(): Promise<void> {
    return this.captureQueue.flush();
  }

  /** A flush the log can't take: commit, then wait for that commit's marker (committed()). */
  private async commitInstead(): Promise<void> {
    await this.source.commit();
    await this.lastMarker;
  }

  /** Log the noted ranges' content (runs one at a time per volume); resolves when durable. */
  private async capture(): Promise<void> {
    const { log, source } = this;
    if (!log.usable || this.ranges.overflow) {
      this.ranges.reset();
      return this.commitInstead();
    }
    if (this.ranges.empty) return this.lastDurable; // nothing new: the last records may still be syncing
    const taken = this.ranges.take();
    const { offsets, lengths, zeros, dataBytes } = taken;
    const coveredBy = Math.max(
      this.lastCoveredBy,
      this.state.generation + (this.state.committing ? 2 : 1),
    );
    this.lastCoveredBy = coveredBy;
    this.captures++;
    // Read the content first (a read may wait for a block to load), then stage without yielding.
    this.scratch = await readContent(source, taken, this.scratch);
    let total = 0;
    for (let i = 0; i < offsets.length; i++) {
      for (let done = 0; done < lengths[i]; done += MAX_RECORD_LENGTH) {
        const n = Math.min(MAX_RECORD_LENGTH, lengths[i] - done);
        const flags = zeros[i] ? FLAG_ZEROS : this.sealer ? FLAG_SEALED : 0;
        total += recordBytes(flags, n);
      }
    }
    if (!log.usable || !log.fits(total + MARKER_HEADROOM)) return this.commitInstead();
    let at = 0;
    for (let i = 0; i < offsets.length; i++) {
      for (let done = 0; done < lengths[i]; done += MAX_RECORD_LENGTH) {
        const n = Math.min(MAX_RECORD_LENGTH, lengths[i] - done);
        const flags = zeros[i] ? FLAG_ZEROS : this.sealer ? FLAG_SEALED : 0;
        const { buffer, at: where } = log.stage(recordBytes(flags, n));
        encodeRecordHeader(
          { flags, volumeId: this.id, coveredBy, offset: offsets[i] + done, length: n },
          buffer,
          where,
        );
        if (!zeros[i]) {
          const plain = this.scratch.subarray(at, at + n);
          const payloadAt = where + RECORD_HEADER_BYTES;
          if (this.sealer) this.sealer.seal(plain, buffer, payloadAt, sealAad(buffer, where));
          else plain.copy(buffer, payloadAt);
          at += n;
        }
      }
    }
    assert(at === dataBytes, 'intent log: staged data differs from the bytes read');
    this.lastDurable = log.durable(this.id);
    return this.lastDurable;
  }
}
