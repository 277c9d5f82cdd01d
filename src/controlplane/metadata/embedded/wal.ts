/**
 * The write-ahead log: segments of checksummed records (record.ts), appended
 * with group commit.
 *
 * Group commit: appends queue up while a write+fdatasync is in flight; when
 * it finishes, everything queued meanwhile goes out as one write and one
 * fdatasync. A lone writer pays one sync; a hundred concurrent writers pay
 * about two. An append's promise resolves only after the sync that covered
 * its record — that is what "acknowledged" means here.
 *
 * Fail-stop: if a write or sync fails, every queued and later append fails
 * with MetadataStorageError. After a failed fsync Linux may already have
 * dropped the dirty pages, so a retried fsync could "succeed" over lost data.
 *
 * Segments: the log is split at compaction (rotateAfter) so that a snapshot
 * at revision R makes every segment before `wal-<R+1>.log` deletable.
 */
import { open, readdir, readFile, truncate, type FileHandle } from 'node:fs/promises';
import { assert } from '../../../common/assert.js';
import type { Logger } from '../../../common/log.js';
import { MetadataCorruptError, MetadataStorageError } from '../errors.js';
import { pathIn, segmentFirstRevision, segmentName, syncDirectory } from './files.js';
import { readFrame, type TxnRecord } from './record.js';

export interface LogStats {
  /** fdatasync calls on the log. */
  syncs: number;
  /** Records made durable. */
  records: number;
  /** Bytes in the log written since the last snapshot (the compaction trigger). */
  bytesSinceSnapshot: number;
}

interface PendingAppend {
  kind: 'append';
  frame: Buffer;
  revision: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

interface PendingRotation {
  kind: 'rotate';
  nextRevision: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

export interface ReplayedLog {
  /** Records after the snapshot's revision, in order. */
  records: TxnRecord[];
  /** The highest revision in the log (or snapshot revision if none later). */
  revision: number;
  /** Segment files wholly at or before the snapshot: safe to delete. */
  obsoleteSegments: string[];
  bytesSinceSnapshot: number;
  activeSegment: string;
  activeSize: number;
}

/**
 * Read every segment, verify continuity and checksums, and truncate a torn
 * tail of the last segment. Only the last segment may end badly: earlier
 * ones were fsync'd in full before the next was created, so damage there is
 * real corruption and opening refuses.
 */
export async function replayLog(
  dir: string,
  snapshotRevision: number,
  log: Logger,
): Promise<ReplayedLog> {
  const segments = (await readdir(dir))
    .map((name) => ({ name, first: segmentFirstRevision(name) }))
    .filter((s): s is { name: string; first: number } => s.first !== undefined)
    .sort((a, b) => a.first - b.first);
  if (segments.length === 0) {
    const name = segmentName(snapshotRevision + 1);
    await (await open(pathIn(dir, name), 'wx')).close();
    await syncDirectory(dir);
    return {
      records: [],
      revision: snapshotRevision,
      obsoleteSegments: [],
      bytesSinceSnapshot: 0,
      activeSegment: name,
      activeSize: 0,
    };
  }
  const records: TxnRecord[] = [];
  const obsoleteSegments: string[] = [];
  let revision = snapshotRevision;
  let lastSeen: number | undefined;
  let bytesSinceSnapshot = 0;
  let activeSize = 0;
  for (let i = 0; i < segments.length; i++) {
    const { name, first } = segments[i];
    const path = pathIn(dir, name);
    const isLast = i === segments.length - 1;
    const buf = await readFile(path);
    let offset = 0;
    let segmentLast = first - 1;
    if (lastSeen !== undefined && first !== lastSeen + 1) {
      throw new MetadataCorruptError(
        `log segment ${path} starts at revision ${first} but the previous segment ends at ${lastSeen}`,
      );
    }
    while (offset < buf.length) {
      const frame = readFrame(buf, offset);
      if (!frame.ok) {
        if (!isLast)
          throw new MetadataCorruptError(
            `log segment ${path} is damaged at byte ${offset} (${frame.reason}); it was complete when the next segment began`,
          );
        // A torn or corrupt tail: the write it held was never acknowledged
        // (acknowledgement waits for the fsync that would have made it whole).
        log.warn(
          { segment: path, offset, dropped: buf.length - offset, reason: frame.reason },
          'truncating torn tail of metadata log',
        );
        await truncate(path, offset);
        const handle = await open(path, 'r+');
        try {
          await handle.sync();
        } finally {
          await handle.close();
        }
        break;
      }
      const record = frame.record;
      if (record.revision !== segmentLast + 1) {
        throw new MetadataCorruptError(
          `log segment ${path} holds revision ${record.revision} after ${segmentLast}`,
        );
      }
      segmentLast = record.revision;
      if (record.revision > snapshotRevision) {
        if (record.revision !== revision + 1) {
          throw new MetadataCorruptError(
            `log revision ${record.revision} does not follow ${revision} (snapshot at ${snapshotRevision}): records are missing`,
          );
        }
        records.push(record);
        revision = record.revision;
      }
      offset = frame.end;
    }
    lastSeen = segmentLast;
    if (isLast) activeSize = offset;
    if (!isLast && segmentLast <= snapshotRevision) obsoleteSegments.push(name);
    else bytesSinceSnapshot += isLast ? offset : buf.length;
  }
  if ((lastSeen ?? 0) < snapshotRevision) {
    // Compaction starts segment wal-<R+1> before installing a snapshot at R,
    // so the log always reaches the snapshot; if it does not, appending would
    // leave a gap that the next open could not replay.
    throw new MetadataCorruptError(
      `log in ${dir} ends at revision ${lastSeen} but the snapshot is at ${snapshotRevision}: log segments are missing`,
    );
  }
  return {
    records,
    revision,
    obsoleteSegments,
    bytesSinceSnapshot,
    activeSegment: segments[segments.length - 1].name,
    activeSize,
  };
}

export class WriteAheadLog {
  private queue: Array<PendingAppend | PendingRotation> = [];
  private flushing: Promise<void> | undefined;
  private failure: Error | undefined;
  private closed = false;
  /** The revision of the last record queued (or replayed): the next one is exactly one above. */
  private lastQueued: number;
  readonly stats: LogStats;

  private constructor(
    private readonly dir: string,
    private handle: FileHandle,
    private segment: string,
    private position: number,
    /** The highest revision known durable. */
    public durableRevision: number,
    bytesSinceSnapshot: number,
    /** Called after each sync with the highest revision it made durable, before appenders hear. */
    private readonly onDurable: (revision: number) => void,
  ) {
    this.stats = { syncs: 0, records: 0, bytesSinceSnapshot };
    this.lastQueued = durableRevision;
  }

  static async open(
    dir: string,
    replayed: ReplayedLog,
    onDurable: (revision: number) => void,
  ): Promise<WriteAheadLog> {
    const handle = await open(pathIn(dir, replayed.activeSegment), 'r+');
    return new WriteAheadLog(
      dir,
      handle,
      replayed.activeSegment,
      replayed.activeSize,
      replayed.revision,
      replayed.bytesSinceSnapshot,
      onDurable,
    );
  }

  get failed(): Error | undefined {
    return this.failure;
  }

  get activeSegment(): string {
    return this.segment;
  }

  /** Queue one encoded record; resolves once it is on disk. Revisions must be appended in order. */
  append(frame: Buffer, revision: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new Error('append after the log was closed'));
    // Replay requires consecutive revisions; a gap or repeat here would make the log refuse to open.
    assert(
      revision === this.lastQueued + 1,
      'log records are appended in revision order, without gaps',
    );
    this.lastQueued = revision;
    return new Promise((resolve, reject) => {
      this.queue.push({ kind: 'append', frame, revision, resolve, reject });
      this.kick();
    });
  }

  /**
   * Start a new segment beginning at `nextRevision`, once every record
   * before it is durable in the current one. Resolves when the new segment
   * exists durably (its directory entry fsync'd).
   */
  rotate(nextRevision: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.queue.push({ kind: 'rotate', nextRevision, resolve, reject });
      this.kick();
    });
  }

  /** Resolves once everything queued so far is durable (or has failed). */
  async drain(): Promise<void> {
    while (this.flushing) await this.flushing;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.drain();
    await this.handle.close();
  }

  private kick(): void {
    if (this.flushing) return;
    this.flushing = this.flushLoop().finally(() => {
      this.flushing = undefined;
      // A record queued after the loop's last look at the queue, before this
      // step (a caller resumed by the loop's last resolve() appending again),
      // found `flushing` still set: start again for it.
      if (this.queue.length > 0 && !this.failure) this.kick();
    });
  }

  private async flushLoop(): Promise<void> {
    while (this.queue.length > 0) {
      const batch: PendingAppend[] = [];
      while (this.queue.length > 0 && this.queue[0].kind === 'append')
        batch.push(this.queue.shift() as PendingAppend);
      try {
        if (batch.length > 0) await this.writeBatch(batch);
      } catch (err) {
        this.fail(err, batch);
        return;
      }
      for (const item of batch) item.resolve();
      const next = this.queue[0];
      if (next?.kind === 'rotate') {
        this.queue.shift();
        try {
          await this.startSegment(next.nextRevision);
        } catch (err) {
          this.fail(err, [next]);
          return;
        }
        next.resolve();
      }
    }
  }

  private async writeBatch(batch: PendingAppend[]): Promise<void> {
    const data = batch.length === 1 ? batch[0].frame : Buffer.concat(batch.map((b) => b.frame));
    let written = 0;
    while (written < data.length) {
      const { bytesWritten } = await this.handle.write(
        data,
        written,
        data.length - written,
        this.position + written,
      );
      written += bytesWritten;
    }
    // fdatasync: the file's size is metadata needed to read the data back,
    // so it is flushed too; mtime is not needed and not waited for.
    await this.handle.datasync();
    this.position += data.length;
    this.stats.syncs++;
    this.stats.records += batch.length;
    this.stats.bytesSinceSnapshot += data.length;
    this.durableRevision = batch[batch.length - 1].revision;
    this.onDurable(this.durableRevision);
  }

  private async startSegment(nextRevision: number): Promise<void> {
    const name = segmentName(nextRevision);
    const handle = await open(pathIn(this.dir, name), 'wx');
    try {
      await syncDirectory(this.dir);
    } catch (err) {
      await handle.close();
      throw err;
    }
    const previous = this.handle;
    this.handle = handle;
    this.segment = name;
    this.position = 0;
    await previous.close();
  }

  private fail(err: unknown, inFlight: Array<{ reject: (err: Error) => void }>): void {
    this.failure = new MetadataStorageError(
      `metadata log write failed; the store is stopped and must be reopened: ${(err as Error).message}`,
      { cause: err },
    );
    for (const item of [...inFlight, ...this.queue]) item.reject(this.failure);
    this.queue = [];
  }

  /** After a snapshot at `revision` is installed, the log bytes it covers no longer count. */
  snapshotTaken(): void {
    this.stats.bytesSinceSnapshot = this.position;
  }
}
