/**
 * File names in the store's directory and the fsync helpers every durable
 * step goes through.
 *
 *   LOCK                         owner's pid (dir-lock.ts)
 *   snapshot                     full state at some revision R (snapshot.ts)
 *   snapshot.tmp                 a snapshot being written; ignored and removed on open
 *   wal-<first revision>.log     log segments (record.ts), replayed after the snapshot
 */
import { open } from 'node:fs/promises';
import { join } from 'node:path';

export const LOCK_FILE = 'LOCK';
export const SNAPSHOT_FILE = 'snapshot';
export const SNAPSHOT_TEMP_FILE = 'snapshot.tmp';
const SEGMENT_PATTERN = /^wal-(\d{16})\.log$/;

export function segmentName(firstRevision: number): string {
  return `wal-${String(firstRevision).padStart(16, '0')}.log`;
}

/** The segment's first revision, or undefined if `name` is not a segment. */
export function segmentFirstRevision(name: string): number | undefined {
  const m = SEGMENT_PATTERN.exec(name);
  return m ? Number(m[1]) : undefined;
}

/**
 * Make a directory's entries durable: a created, renamed or removed file is
 * only sure to survive a power cut once its directory is fsync'd.
 */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export function pathIn(dir: string, name: string): string {
  return join(dir, name);
}
