/**
 * Replay: at start-up, before a volume is served, apply the records the
 * log holds for it that its committed version does not (recordsToReplay)
 * in log order, then commit. Idempotent: a record
 * sets bytes to what they were at its capture, so replaying twice (a kill
 * during replay) ends where replaying once does; once the commit lands the
 * records are older than the version and are skipped.
 */
import { IoError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { RecordContent, RecoveredRecord } from './intent-log.js';
import {
  FLAG_COMMITTED,
  FLAG_PARTIAL,
  FLAG_SEALED,
  FLAG_ZEROS,
  type RecordHeader,
} from './record.js';
import { IntentSealer } from './seal.js';

/** What replay needs of a volume. */
export interface ReplayTarget {
  readonly id: number;
  readonly name: string;
  readonly size: number;
  readonly committedGeneration: number;
  /** The volume's data key when it is encrypted. */
  readonly dataKey: Uint8Array | null;
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  zeroRange(offset: number, length: number, fua: boolean): Promise<void>;
  /** Commit a version holding every write completed before the call. */
  commit(): Promise<void>;
}

/**
 * The data records of volume `volumeId` a version of `generation` lacks, in
 * log order. The last commit marker that version reaches bounds them: every
 * record numbered below its `offset` is in the version. Of the rest, those
 * whose coveredBy is above the generation — where a partial marker after a
 * record says its version (coveredBy or less) lacked it, the record counts
 * as covered by the version after that one only.
 */
export function recordsToReplay<R extends RecordHeader>(
  records: readonly R[],
  volumeId: number,
  generation: number,
): R[] {
  let from = 0;
  const partials: R[] = [];
  for (const r of records) {
    if (r.volumeId !== volumeId) continue;
    if (r.flags & FLAG_COMMITTED && r.coveredBy <= generation) from = Math.max(from, r.offset);
    if (r.flags & FLAG_PARTIAL) partials.push(r);
  }
  const coveredBy = (r: R): number => {
    let covered = r.coveredBy;
    for (const p of partials)
      if (p.seq > r.seq && p.coveredBy >= covered) covered = p.coveredBy + 1;
    return covered;
  };
  return records.filter(
    (r) =>
      r.volumeId === volumeId &&
      !(r.flags & (FLAG_COMMITTED | FLAG_PARTIAL)) &&
      r.seq >= from &&
      coveredBy(r) > generation,
  );
}

/**
 * Apply `records` (the whole log's, in order) to `target` and commit;
 * returns how many applied. `content` reads a record's payload (one at a
 * time: replay holds no more than one record's bytes).
 */
export async function replayInto(
  target: ReplayTarget,
  records: readonly RecoveredRecord[],
  content: (record: RecoveredRecord) => Promise<RecordContent>,
  log: Logger,
): Promise<number> {
  let applied = 0;
  let sealer: IntentSealer | undefined;
  for (const record of recordsToReplay(records, target.id, target.committedGeneration)) {
    if (record.offset + record.length > target.size) {
      // Only a shrink can put a logged range past the end, and a shrink commits first.
      log.warn(
        { volume: target.name, offset: record.offset, length: record.length, size: target.size },
        'intent-log record past the end of the volume skipped',
      );
      continue;
    }
    if (record.flags & FLAG_ZEROS) {
      await target.zeroRange(record.offset, record.length, false);
    } else if (record.flags & FLAG_SEALED) {
      if (!target.dataKey)
        throw new IoError(
          'EIO',
          `volume ${target.name}: the intent log holds sealed data for it but it is not encrypted; move ${'intent.log'} aside to start without it`,
        );
      sealer ??= new IntentSealer(target.dataKey);
      const what = `volume ${target.name} offset ${record.offset}`;
      const { payload, aad } = await content(record);
      await target.write(record.offset, sealer.open(payload, aad, what), false);
    } else {
      await target.write(record.offset, (await content(record)).payload, false);
    }
    applied++;
  }
  if (applied > 0) await target.commit();
  return applied;
}
