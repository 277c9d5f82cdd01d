/**
 * Snapshot file: the whole key space at one revision, so that opening reads
 * one file plus a short log tail instead of the full history.
 *
 *   offset 0   8 bytes  magic "TORUSMD1"
 *   offset 8   u32 LE   format version (1)
 *   offset 12  u64 LE   revision R the state is at
 *   offset 20  u32 LE   entry count
 *   offset 24  entries, sorted by key:
 *                u32 LE key length, key (UTF-8); u32 LE value length, value;
 *                u64 LE createRevision; u64 LE modRevision; u64 LE version;
 *                u16 LE lease id length, lease id (ASCII; 0 = none)
 *   last 4     u32 LE   CRC-32 of every byte before it
 *
 * It is written whole to snapshot.tmp, fsync'd, renamed over `snapshot` and
 * the directory fsync'd, so `snapshot` is always either the old complete file
 * or the new complete one. A bad checksum therefore means damage, not a
 * crash, and opening refuses.
 */
import { open, readFile, rename } from 'node:fs/promises';
import { crc32 } from 'node:zlib';
import { ownedCopy } from '../../../common/owned-copy.js';
import { MetadataCorruptError } from '../errors.js';
import { pathIn, SNAPSHOT_FILE, SNAPSHOT_TEMP_FILE, syncDirectory } from './files.js';

const MAGIC = Buffer.from('TORUSMD1');
const FORMAT_VERSION = 1;
const HEADER_BYTES = 24;

export interface SnapshotEntry {
  key: string;
  value: Buffer;
  createRevision: number;
  modRevision: number;
  version: number;
  lease?: string;
}

export interface Snapshot {
  revision: number;
  /** Sorted by key. */
  entries: SnapshotEntry[];
}

export function encodeSnapshot(snapshot: Snapshot): Buffer {
  const keys = snapshot.entries.map((e) => Buffer.from(e.key));
  let size = HEADER_BYTES + 4;
  snapshot.entries.forEach((e, i) => {
    size += 4 + keys[i].length + 4 + e.value.length + 24 + 2 + (e.lease?.length ?? 0);
  });
  const buf = Buffer.allocUnsafe(size);
  MAGIC.copy(buf, 0);
  let at = buf.writeUInt32LE(FORMAT_VERSION, 8);
  at = buf.writeBigUInt64LE(BigInt(snapshot.revision), at);
  at = buf.writeUInt32LE(snapshot.entries.length, at);
  snapshot.entries.forEach((e, i) => {
    at = buf.writeUInt32LE(keys[i].length, at);
    at += keys[i].copy(buf, at);
    at = buf.writeUInt32LE(e.value.length, at);
    at += e.value.copy(buf, at);
    at = buf.writeBigUInt64LE(BigInt(e.createRevision), at);
    at = buf.writeBigUInt64LE(BigInt(e.modRevision), at);
    at = buf.writeBigUInt64LE(BigInt(e.version), at);
    at = buf.writeUInt16LE(e.lease?.length ?? 0, at);
    if (e.lease) at += buf.write(e.lease, at, 'ascii');
  });
  at = buf.writeUInt32LE(crc32(buf.subarray(0, at)), at);
  if (at !== size) throw new Error(`snapshot encoder wrote ${at} of ${size} bytes`);
  return buf;
}

export function decodeSnapshot(buf: Buffer, path: string): Snapshot {
  const corrupt = (why: string) =>
    new MetadataCorruptError(
      `snapshot ${path} is damaged (${why}); restore the directory from a backup`,
    );
  if (buf.length < HEADER_BYTES + 4 || !buf.subarray(0, 8).equals(MAGIC))
    throw corrupt('not a snapshot file');
  if (crc32(buf.subarray(0, buf.length - 4)) !== buf.readUInt32LE(buf.length - 4))
    throw corrupt('checksum mismatch');
  const version = buf.readUInt32LE(8);
  if (version !== FORMAT_VERSION)
    throw corrupt(`format version ${version}, this build reads ${FORMAT_VERSION}`);
  const revision = Number(buf.readBigUInt64LE(12));
  const count = buf.readUInt32LE(20);
  const entries: SnapshotEntry[] = new Array(count);
  let at = HEADER_BYTES;
  try {
    for (let i = 0; i < count; i++) {
      const keyLength = buf.readUInt32LE(at);
      at += 4;
      const key = buf.toString('utf8', at, at + keyLength);
      at += keyLength;
      const valueLength = buf.readUInt32LE(at);
      at += 4;
      // A copy, so the whole file's buffer is not kept alive by one value.
      const value = ownedCopy(buf.subarray(at, at + valueLength));
      at += valueLength;
      const createRevision = Number(buf.readBigUInt64LE(at));
      const modRevision = Number(buf.readBigUInt64LE(at + 8));
      const keyVersion = Number(buf.readBigUInt64LE(at + 16));
      at += 24;
      const leaseLength = buf.readUInt16LE(at);
      at += 2;
      const entry: SnapshotEntry = { key, value, createRevision, modRevision, version: keyVersion };
      if (leaseLength) entry.lease = buf.toString('ascii', at, at + leaseLength);
      at += leaseLength;
      entries[i] = entry;
    }
  } catch (err) {
    throw corrupt(`entry overruns the file: ${(err as Error).message}`);
  }
  if (at !== buf.length - 4)
    throw corrupt(`${buf.length - 4 - at} unexplained bytes after the entries`);
  return { revision, entries };
}

/** Undefined when there is no snapshot yet (a new store). */
export async function readSnapshot(dir: string): Promise<Snapshot | undefined> {
  const path = pathIn(dir, SNAPSHOT_FILE);
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return decodeSnapshot(buf, path);
}

/** Write, fsync, rename into place, fsync the directory: see the file comment. */
export async function writeSnapshot(dir: string, snapshot: Snapshot): Promise<number> {
  const encoded = encodeSnapshot(snapshot);
  const temp = pathIn(dir, SNAPSHOT_TEMP_FILE);
  const handle = await open(temp, 'w');
  try {
    await handle.writeFile(encoded);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(temp, pathIn(dir, SNAPSHOT_FILE));
  await syncDirectory(dir);
  return encoded.length;
}
