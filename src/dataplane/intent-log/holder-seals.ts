/**
 * The holder log's seals (holder-log.ts): per volume, the lock epoch below
 * which appends are refused. Their own small file, replaced whole and
 * synced: they must outlive every record, since a sealed-out writer may
 * still be running.
 */
import { open, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** Replace the seals file with `seals`, durably (the file, then its directory). */
export async function writeSeals(path: string, seals: Map<number, number>): Promise<void> {
  const json = JSON.stringify({ version: 1, seals: Object.fromEntries(seals) });
  const temp = `${path}.tmp`;
  await writeFile(temp, json, { mode: 0o600, flush: true });
  await rename(temp, path);
  const dir = await open(join(path, '..'), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/** The seals on disk (none when the file is absent). */
export async function readSeals(path: string): Promise<Map<number, number>> {
  const file = await open(path, 'r').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (!file) return new Map();
  try {
    const parsed = JSON.parse(await file.readFile('utf8')) as { seals?: Record<string, number> };
    const seals = new Map<number, number>();
    for (const [id, token] of Object.entries(parsed.seals ?? {})) {
      if (!Number.isSafeInteger(token) || token < 1 || !/^\d+$/.test(id))
        throw new Error(`${path}: seal ${id} → ${token} is not a volume id and a lock epoch`);
      seals.set(Number(id), token);
    }
    return seals;
  } finally {
    await file.close();
  }
}
