/**
 * The stored form of a volume write lock, and how to read it.
 *
 * Keys
 *   locks/volumes/<name>    LockRecord (JSON), attached to the holder's lease
 *   epochs/volumes/<name>   last epoch handed out for <name> (decimal); never
 *                           deleted, so a name's epochs never repeat
 *
 * The lock key is written once, by the txn that takes the lock, and never
 * rewritten: its createRevision names one life of the lock, and a lock whose
 * modRevision differs from its createRevision is not one this module wrote.
 */
import type { KeyValue, MetadataStore } from '../metadata/store.js';
import { VolumeLockedError } from './errors.js';
import { holderFrom, type LockHolder } from './holder.js';

const LOCKS = 'locks/volumes/';
const EPOCHS = 'epochs/volumes/';

export function volumeLockKey(volume: string): string {
  return LOCKS + volume;
}

export function volumeEpochKey(volume: string): string {
  return EPOCHS + volume;
}

/** What the lock key holds. */
export interface LockRecord {
  holder: LockHolder;
  epoch: number;
  /** ISO time the lock was taken, by the holder's clock (for people, not for ordering). */
  acquiredAt: string;
}

/** A lock as read from the store: who holds it, since when, and which life of the key it is. */
export interface VolumeLockInfo extends LockRecord {
  volume: string;
  /** Lease the lock key is attached to (the lock lapses when it ends). */
  lease?: string;
  /** Revision of the txn that took the lock: the key's createRevision. */
  revision: number;
}

export function encodeLockRecord(record: LockRecord): Buffer {
  return Buffer.from(
    JSON.stringify({ holder: record.holder, epoch: record.epoch, acquiredAt: record.acquiredAt }),
  );
}

/**
 * Decode a lock key without trusting it. A damaged or foreign value still
 * decodes (holder "unknown", epoch 0): the key exists, so the volume is
 * locked, and the refusal must still say something.
 */
export function decodeLock(volume: string, kv: KeyValue): VolumeLockInfo {
  let parsed: Record<string, unknown> = {};
  try {
    const value = JSON.parse(kv.value.toString()) as unknown;
    if (typeof value === 'object' && value !== null) parsed = value as Record<string, unknown>;
  } catch {
    // undecodable: reported as held by "unknown"
  }
  const epoch =
    typeof parsed.epoch === 'number' && Number.isSafeInteger(parsed.epoch) ? parsed.epoch : 0;
  const info: VolumeLockInfo = {
    volume,
    holder: holderFrom(parsed.holder),
    epoch,
    acquiredAt: typeof parsed.acquiredAt === 'string' ? parsed.acquiredAt : 'unknown',
    revision: kv.createRevision,
  };
  if (kv.lease !== undefined) info.lease = kv.lease;
  return info;
}

/** Who holds `volume`'s write lock, or undefined when nobody does. */
export async function readVolumeLock(
  meta: MetadataStore,
  volume: string,
): Promise<VolumeLockInfo | undefined> {
  const kv = await meta.get(volumeLockKey(volume));
  return kv ? decodeLock(volume, kv) : undefined;
}

/** Every held volume lock, by volume name (one read, for `volume list`). */
export async function listVolumeLocks(meta: MetadataStore): Promise<Map<string, VolumeLockInfo>> {
  const locks = new Map<string, VolumeLockInfo>();
  for (const kv of await meta.getPrefix(LOCKS)) {
    const volume = kv.key.slice(LOCKS.length);
    locks.set(volume, decodeLock(volume, kv));
  }
  return locks;
}

/**
 * Throw VolumeLockedError, naming the holder, if `volume` is locked for
 * writing. For an early, friendly refusal (e.g. before a delete does other
 * work); the check is only as fresh as its read, so the write that follows
 * must still compare the lock key — VolumeCatalog.remove does, in its txn.
 */
export async function assertVolumeUnlocked(meta: MetadataStore, volume: string): Promise<void> {
  const lock = await readVolumeLock(meta, volume);
  if (lock) throw new VolumeLockedError(lock);
}
