/**
 * After a version commit failed: did it land anyway? A txn whose reply was
 * lost (etcd died mid-call) may have been applied. The answer is asked for
 * until the store gives it, however long it is away: a commit counted as
 * failed that had in fact landed would be made again under the same
 * generation, overwriting the map pages and blocks the landed version
 * references (seen as a volume whose map failed its checksum on every
 * replica after an etcd restart). Meanwhile the volume's write-back waits,
 * a round at a time, so nothing of that generation is written.
 */
import { NotFoundError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import { sameMapRoot, type MapRoot } from '../../model/map-root.js';
import { readVolumeLock, type VolumeLock } from '../locks/index.js';
import type { MetadataStore } from '../metadata/store.js';
import type { VersionedRecord, VolumeCatalog } from './catalog.js';

export interface FailedCommit {
  name: string;
  /** The record the commit was a compare-and-swap on. */
  before: VersionedRecord;
  generation: number;
  root: MapRoot | null;
  lock: VolumeLock;
}

/**
 * The record if the commit landed: it holds exactly that generation and
 * root, moved past `before`, and the lock is still ours at the same epoch (a
 * new writer's reserving commit can look the same, but it takes the lock
 * first). 'not landed' when the store says otherwise. 'unknown' when
 * `stillWaiting()` turns false (the node stops) before the store answers, or
 * when the record is ours but the lock is not (it lapsed meanwhile): the
 * caller must then treat the generation as used.
 */
export async function commitOutcome(
  parts: { catalog: VolumeCatalog; meta: MetadataStore; node: string | undefined; log: Logger },
  commit: FailedCommit,
  stillWaiting: () => boolean,
  maxRetryMs: number,
): Promise<VersionedRecord | 'not landed' | 'unknown'> {
  const { name, before, generation, root, lock } = commit;
  for (let attempt = 0; ; attempt++) {
    try {
      const now = await parts.catalog.get(name);
      const held = await readVolumeLock(parts.meta, name);
      const same = now.record.generation === generation && sameMapRoot(now.record.root, root);
      if (!same || now.modRevision <= before.modRevision) return 'not landed';
      const ours = held?.epoch === lock.epoch && held.holder.node === parts.node;
      return ours ? now : 'unknown';
    } catch (err) {
      if (err instanceof NotFoundError) return 'not landed'; // deleted: the commit says so next
      if (!stillWaiting()) return 'unknown';
      if (attempt === 0)
        parts.log.warn(
          { volume: name, generation, err: (err as Error).message },
          'a commit failed and the metadata store does not answer: waiting for it, to learn whether the commit landed',
        );
      const wait = Math.min(maxRetryMs, 100 * 2 ** Math.min(attempt, 10));
      await new Promise((resolve) => setTimeout(resolve, wait).unref());
    }
  }
}
