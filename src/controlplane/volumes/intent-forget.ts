/**
 * The operator's way out when every node holding a volume's replicated
 * intent log is gone for good (docs/cluster-flush.md): a node taking the
 * volume over must read the last writer's records from one of them, and
 * refuses to serve the volume until one answers. Forgetting the log moves
 * the record's bound past every lock epoch handed out so far and names no
 * holders, in one compare-and-swap: the next writer opens the last committed
 * version and replays nothing. What the dead writer acknowledged by FLUSH
 * after that version is lost, which is why the command asks to be told so.
 */
import { decodeLock, volumeEpochKey, volumeLockKey } from '../locks/lock-record.js';
import { VolumeLockedError } from '../locks/errors.js';
import { keyAbsent, unchangedSince, type MetadataStore } from '../metadata/store.js';
import { ConflictError } from '../../common/errors.js';
import { volumeKey, type VersionedRecord, type VolumeCatalog } from './catalog.js';

export interface ForgottenLog {
  /** The holders the record named (whose records are now ignored). */
  holders: string[];
  /** Every record under an epoch below this one is held by the version. */
  epoch: number;
}

/** Forget volume `name`'s intent log; refused while anyone holds its write lock. */
export async function forgetIntentLog(
  meta: MetadataStore,
  catalog: VolumeCatalog,
  name: string,
): Promise<ForgottenLog> {
  const expected: VersionedRecord = await catalog.get(name);
  const holders = expected.record.intent?.holders ?? [];
  const epochs = await meta.get(volumeEpochKey(name));
  const epoch = (epochs ? Number(epochs.value.toString()) : 0) + 1;
  const record = { ...expected.record, intent: { epoch, seq: 1, holders: [] } };
  const result = await meta.txn({
    compare: [
      unchangedSince(volumeKey(name), expected.modRevision),
      // No lock taken since the epoch was read: its epoch would be below the bound.
      unchangedSince(volumeEpochKey(name), epochs?.modRevision ?? 0),
      keyAbsent(volumeLockKey(name)),
    ],
    success: [{ type: 'put', key: volumeKey(name), value: Buffer.from(JSON.stringify(record)) }],
    failure: [{ type: 'get', key: volumeLockKey(name) }],
  });
  if (result.succeeded) return { holders, epoch };
  const got = result.results[0];
  const lock = got?.type === 'get' ? got.kvs[0] : undefined;
  if (lock) throw new VolumeLockedError(decodeLock(name, lock), 'intent log not forgotten');
  throw new ConflictError(`volume "${name}" changed meanwhile; nothing was changed, try again`);
}
