/**
 * The file under an intent log (a single node's, intent-log.ts, or a
 * holder's, holder-log.ts): created empty and private when absent, opened
 * O_DSYNC — a batch's write returns once its bytes are durable, the
 * fdatasync in the same system call (one write per batch, inline or one
 * trip through the thread pool: InlineWrites) — and preallocated with zeros, so later writes land on
 * allocated blocks and an fdatasync of them needs no metadata journal.
 */
import { closeSync, constants, openSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';

const ZERO_CHUNK = 1024 * 1024;

export interface OpenedLogFile {
  file: FileHandle;
  /** Created by this call: nothing in it. */
  created: boolean;
  /** Its first `headerBytes` bytes (zeros when created). */
  head: Buffer;
  size: number;
}

export async function openLogFile(path: string, headerBytes: number): Promise<OpenedLogFile> {
  let created = false;
  try {
    closeSync(openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o600));
    created = true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const file = await open(path, constants.O_RDWR | constants.O_DSYNC);
  try {
    const head = Buffer.alloc(headerBytes);
    await file.read(head, 0, headerBytes, 0);
    return { file, created, head, size: (await file.stat()).size };
  } catch (err) {
    await file.close();
    throw err;
  }
}

/** Zeros over bytes [from, to) of the file (durable on return: the file is O_DSYNC). */
export async function writeZeros(file: FileHandle, from: number, to: number): Promise<void> {
  const zeros = Buffer.alloc(Math.min(ZERO_CHUNK, Math.max(0, to - from)));
  for (let at = from; at < to; at += ZERO_CHUNK)
    await file.write(zeros, 0, Math.min(ZERO_CHUNK, to - at), at);
}

/**
 * In a log file used as a ring: whether bytes [start, start + bytes) meet
 * the run from `tail` to `head` (non-empty; it wraps at the end of the file
 * when the tail is not below the head).
 */
export function overlapsRun(tail: number, head: number, start: number, bytes: number): boolean {
  const end = start + bytes;
  if (tail < head) return start < head && end > tail;
  return end > tail || start < head;
}
