/**
 * The store's layout file (`store.json`) and its format versions.
 *
 * - Format 1: `data` (block-size slots) and `slots` (64-byte records,
 *   record.ts). Every read checks a whole block against its xxh64.
 * - Format 2: the same two files, byte for byte, plus `subsums` (sub-sums.ts):
 *   a 4 KiB sub-block can be read and checked on its own.
 *
 * A format 1 store is upgraded in place when it is opened: `subsums` is
 * created all zeros (no entry is valid, so its blocks are read whole, as
 * before, until rewritten), synced, and only then does store.json say 2. A
 * crash between the two leaves format 1 and a spare file, which the next
 * open recreates. Code that knows only format 1 refuses a format 2 store
 * (its open checks the number), so nothing reads the new files wrongly.
 */
import { open, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SUBSUMS_FILE, subsumsEntrySize } from './sub-sums.js';

/** The format create() writes and open() upgrades to. */
export const STORE_FORMAT = 2;
/** The first format: no sub-block checksums. Still opened (and upgraded). */
export const STORE_FORMAT_WHOLE_BLOCK_SUMS = 1;

export interface StoreLayout {
  format: number;
  blockSize: number;
  slotCount: number;
  createdAt: string;
}

export function layoutPath(dir: string): string {
  return join(dir, 'store.json');
}

export function subsumsPath(dir: string): string {
  return join(dir, SUBSUMS_FILE);
}

/** Write store.json atomically (temp file, fsync, rename, directory fsync); `made` gets each path before it exists. */
export async function writeLayout(
  dir: string,
  layout: StoreLayout,
  made: string[] = [],
): Promise<void> {
  const tmp = join(dir, 'store.json.tmp');
  made.push(tmp);
  await writeFile(tmp, JSON.stringify(layout, null, 2) + '\n');
  const handle = await open(tmp, 'r');
  await handle.sync();
  await handle.close();
  made.push(layoutPath(dir));
  await rename(tmp, layoutPath(dir));
  const dirHandle = await open(dir, 'r');
  await dirHandle.sync();
  await dirHandle.close();
}

/** Create (or recreate) an all-zero sub-sums table: every entry invalid. */
export async function createSubsumsFile(
  dir: string,
  blockSize: number,
  slotCount: number,
): Promise<void> {
  const file = await open(subsumsPath(dir), 'w');
  try {
    await file.truncate(slotCount * subsumsEntrySize(blockSize));
    await file.sync();
  } finally {
    await file.close();
  }
}

/**
 * Read store.json for opening: a format 1 store is upgraded to format 2
 * first (see above); a format 2 store whose `subsums` is gone gets an empty
 * one (its entries are hints, never needed for correctness). With `upgrade`
 * false (fsck's check, which writes nothing) neither happens: the layout is
 * returned as found. Any other format is refused: it was written by a newer
 * torus.
 */
export async function readLayoutForOpen(dir: string, upgrade = true): Promise<StoreLayout> {
  const layout = JSON.parse(await readFile(layoutPath(dir), 'utf8')) as StoreLayout;
  if (layout.format !== STORE_FORMAT && layout.format !== STORE_FORMAT_WHOLE_BLOCK_SUMS)
    throw new Error(
      `${dir}: unsupported store format ${layout.format} (this torus reads formats ${STORE_FORMAT_WHOLE_BLOCK_SUMS} and ${STORE_FORMAT}); run a newer torus`,
    );
  if (!upgrade) return layout;
  const present = await stat(subsumsPath(dir)).catch(() => undefined);
  if (layout.format === STORE_FORMAT_WHOLE_BLOCK_SUMS || !present)
    await createSubsumsFile(dir, layout.blockSize, layout.slotCount);
  if (layout.format === STORE_FORMAT_WHOLE_BLOCK_SUMS) {
    const upgraded = { ...layout, format: STORE_FORMAT };
    await writeLayout(dir, upgraded);
    return upgraded;
  }
  return layout;
}
