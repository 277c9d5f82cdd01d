/**
 * The store's files on disk: their creation, the layout file (`store.json`)
 * and its format versions.
 *
 * - Format 1: `data` (block-size slots) and `slots` (64-byte records,
 *   record.ts). Every read checks a whole block against its xxh64.
 * - Format 2: the same two files, byte for byte, plus `subsums` (sub-sums.ts):
 *   a 4 KiB sub-block can be read and checked on its own.
 * - Format 3: the same files; a record may be a patch's (RECORD_PATCH,
 *   patches.ts): a block whose slot holds only some sub-blocks, the rest
 *   being its base's, and whose hash is a tree hash.
 *
 * An older store is upgraded in place when it is opened. From format 1,
 * `subsums` is created all zeros (no entry is valid, so its blocks are read
 * whole, as before, until rewritten) and synced; then store.json says 3
 * (from format 2 that is all: its records are all whole blocks, which
 * format 3 reads as they are). A crash between the two leaves the old
 * format and a spare file, which the next open recreates. Code that knows
 * only an older format refuses a newer store (its open checks the number),
 * so nothing reads a patch as a whole block.
 */
import { spawnSync } from 'node:child_process';
import {
  open,
  readFile,
  rename,
  rm,
  rmdir,
  stat,
  statfs,
  writeFile,
  type FileHandle,
} from 'node:fs/promises';
import { join } from 'node:path';
import { ensureDirectory } from '../../common/dirs.js';
import { IoError } from '../../common/errors.js';
import { formatSize } from '../../common/size.js';
import { RECORD_SIZE } from './record.js';
import { SUBSUMS_FILE, subsumsEntrySize } from './sub-sums.js';

/** Room create() asks for beyond the data file and the tables: store.json and its rename. */
const LAYOUT_SLACK_BYTES = 64 * 1024;

/** The format create() writes and open() upgrades to. */
export const STORE_FORMAT = 3;
/** The first format: no sub-block checksums. Still opened (and upgraded). */
export const STORE_FORMAT_WHOLE_BLOCK_SUMS = 1;
/** Sub-block checksums, whole blocks only. Still opened (and upgraded). */
export const STORE_FORMAT_WHOLE_BLOCKS = 2;
const FORMATS_READ = [STORE_FORMAT_WHOLE_BLOCK_SUMS, STORE_FORMAT_WHOLE_BLOCKS, STORE_FORMAT];

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
 * Read store.json for opening: an older store is upgraded to the current
 * format first (see above); a store whose `subsums` is gone gets an empty
 * one (its entries are hints, never needed for correctness). With `upgrade`
 * false (fsck's check, which writes nothing) neither happens: the layout is
 * returned as found. Any other format is refused: it was written by a newer
 * torus.
 */
export async function readLayoutForOpen(dir: string, upgrade = true): Promise<StoreLayout> {
  const layout = JSON.parse(await readFile(layoutPath(dir), 'utf8')) as StoreLayout;
  if (!FORMATS_READ.includes(layout.format))
    throw new Error(
      `${dir}: unsupported store format ${layout.format} (this torus reads formats ${FORMATS_READ.join(', ')}); run a newer torus`,
    );
  if (!upgrade) return layout;
  const present = await stat(subsumsPath(dir)).catch(() => undefined);
  if (layout.format === STORE_FORMAT_WHOLE_BLOCK_SUMS || !present)
    await createSubsumsFile(dir, layout.blockSize, layout.slotCount);
  if (layout.format !== STORE_FORMAT) {
    const upgraded = { ...layout, format: STORE_FORMAT };
    await writeLayout(dir, upgraded);
    return upgraded;
  }
  return layout;
}

/**
 * Create the files of a new store; capacity is rounded down to whole slots.
 * Checks the filesystem's free space first (IoError ENOSPC naming the
 * directory, the size and the space free); if creation fails anyway, the
 * files it made, and the directory if it made it, are removed again.
 */
export async function createStore(
  dir: string,
  options: { blockSize: number; capacityBytes: number },
): Promise<void> {
  const { blockSize, capacityBytes } = options;
  if (!Number.isInteger(blockSize) || blockSize < 4096 || (blockSize & (blockSize - 1)) !== 0) {
    throw new RangeError(
      `block size must be a power of two of at least 4096 bytes, got ${blockSize}`,
    );
  }
  const slotCount = Math.floor(capacityBytes / blockSize);
  if (slotCount < 16)
    throw new RangeError(
      `capacity ${capacityBytes} holds fewer than 16 blocks of ${blockSize} bytes`,
    );
  const madeDir = !(await stat(dir).catch(() => undefined));
  await ensureDirectory(dir, 'block store directory');
  const made: string[] = [];
  try {
    await createStoreFiles(dir, blockSize, slotCount, made);
  } catch (err) {
    // Leave the directory as it was: a partial store would be opened next time.
    for (const path of made.reverse()) await rm(path, { force: true }).catch(() => undefined);
    if (madeDir) await rmdir(dir).catch(() => undefined);
    throw err;
  }
}

/** Whether `dir` holds a store (its store.json can be read). */
export async function storeExists(dir: string): Promise<boolean> {
  try {
    await readFile(layoutPath(dir));
    return true;
  } catch {
    return false;
  }
}

/**
 * createStore()'s work: data (preallocated), slots, subsums and store.json,
 * each file's path pushed to `made` before it is created.
 */
export async function createStoreFiles(
  dir: string,
  blockSize: number,
  slotCount: number,
  made: string[],
): Promise<void> {
  const dataBytes = slotCount * blockSize;
  const needed =
    dataBytes + slotCount * (RECORD_SIZE + subsumsEntrySize(blockSize)) + LAYOUT_SLACK_BYTES;
  const fsStats = await statfs(dir);
  const free = fsStats.bavail * fsStats.bsize;
  if (needed > free) {
    throw new IoError(
      'ENOSPC',
      `cannot create a ${formatSize(dataBytes)} block store in ${dir}: it needs ${formatSize(needed)} with its slot table, and the filesystem has ${formatSize(free)} free`,
    );
  }
  const dataPath = join(dir, 'data');
  // Preallocate so a full disk shows up now, not as ENOSPC in the middle of a
  // flush months later. fallocate(1) is util-linux, present on every Linux we
  // target; where it is missing or the filesystem can't, fall back to a sparse
  // file. A full filesystem is not "can't": that is an error, never a sparse file.
  made.push(dataPath);
  const file = await open(dataPath, 'w');
  await file.close();
  const fallocate = spawnSync('fallocate', ['-l', String(dataBytes), dataPath], {
    stdio: ['ignore', 'ignore', 'pipe'],
    encoding: 'utf8',
  });
  if (fallocate.status !== 0) {
    if (/no space left/i.test(fallocate.stderr ?? ''))
      throw new IoError(
        'ENOSPC',
        `cannot preallocate ${formatSize(dataBytes)} for ${dataPath}: the filesystem is full`,
      );
    const sparse = await open(dataPath, 'r+');
    await sparse.truncate(dataBytes);
    await sparse.close();
  }
  const slotsPath = join(dir, 'slots');
  made.push(slotsPath);
  const slots = await open(slotsPath, 'w');
  await slots.truncate(slotCount * RECORD_SIZE);
  await slots.sync();
  await slots.close();
  made.push(subsumsPath(dir));
  await createSubsumsFile(dir, blockSize, slotCount);
  const layout: StoreLayout = {
    format: STORE_FORMAT,
    blockSize,
    slotCount,
    createdAt: new Date().toISOString(),
  };
  await writeLayout(dir, layout, made);
}

/** How much of the slot table open reads at a time. */
const RECORDS_READ_CHUNK = 1024 * 1024;
/** The unit copied or skipped: a memory page (x86-64). */
const RECORDS_PAGE = 4096;
const ZERO_PAGE = Buffer.alloc(RECORDS_PAGE);

/**
 * Read the slot table into `records` (all zeros when made), copying only
 * the pages that hold something: the rest of the table are free records,
 * all zeros, and their pages of `records` are never touched, so they take
 * no memory. A store then costs memory for the part of it in use, not its
 * capacity (64 bytes a slot: 1 GiB per TB of 64 KiB blocks). A short
 * slots file reads as free slots. Returns one past the last slot whose
 * record is not all zeros (0 for an empty table).
 */
export async function readUsedRecords(
  slotsFile: FileHandle,
  records: SharedArrayBuffer,
): Promise<number> {
  const table = new Uint8Array(records);
  const chunk = Buffer.alloc(Math.min(RECORDS_READ_CHUNK, table.length));
  let usedBytes = 0;
  for (let at = 0; at < table.length;) {
    const { bytesRead } = await slotsFile.read(
      chunk,
      0,
      Math.min(chunk.length, table.length - at),
      at,
    );
    if (bytesRead === 0) break;
    for (let page = 0; page < bytesRead; page += RECORDS_PAGE) {
      const end = Math.min(page + RECORDS_PAGE, bytesRead);
      if (chunk.compare(ZERO_PAGE, 0, end - page, page, end) !== 0) {
        table.set(chunk.subarray(page, end), at + page);
        usedBytes = at + end;
      }
    }
    at += bytesRead;
  }
  return Math.ceil(usedBytes / RECORD_SIZE);
}

/** Write the records of `slots` (ascending) from `records` to the slot table, one write per run of consecutive slots. */
export async function writeRecordRuns(
  slotsFile: FileHandle,
  records: SharedArrayBuffer,
  slots: readonly number[],
): Promise<void> {
  for (let i = 0; i < slots.length;) {
    let end = i + 1;
    while (end < slots.length && slots[end] === slots[end - 1] + 1) end++;
    const at = slots[i] * RECORD_SIZE;
    const bytes = (end - i) * RECORD_SIZE;
    await slotsFile.write(new Uint8Array(records, at, bytes), 0, bytes, at);
    i = end;
  }
}
