/** Whole-buffer positional reads and writes for the pool workers (blocking: a worker's I/O is meant to block). */
import { closeSync, constants, openSync, readSync, readvSync, writeSync } from 'node:fs';

export function pwriteAll(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length)
    done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}

/** Read bytes.length bytes at position; a short file is an error naming where it ended. */
export function preadAll(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) {
    const n = readSync(fd, bytes, done, bytes.length - done, position + done);
    if (n === 0) throw new Error(`short read at ${position + done}`);
    done += n;
  }
}

/**
 * Fill `buffers`, one after the other, from `position` on: one readv unless
 * the kernel returns short. A short file is an error naming where it ended.
 */
export function preadvAll(fd: number, buffers: readonly Uint8Array[], position: number): void {
  let pending = buffers;
  for (;;) {
    let n = readvSync(fd, pending, position);
    if (n === 0) throw new Error(`short read at ${position}`);
    position += n;
    let filled = 0;
    while (filled < pending.length && n >= pending[filled].length) n -= pending[filled++].length;
    if (filled === pending.length) return;
    pending = [pending[filled].subarray(n), ...pending.slice(filled + 1)];
  }
}

/**
 * `path` opened around the page cache (O_DIRECT) for writing or for reading,
 * or undefined where the system will not (tmpfs, no such flag). Every I/O
 * through it must be aligned — offset, length and memory — to the device's
 * logical block (4 KiB sub-blocks and a page-aligned cache are).
 */
export function openDirect(path: string, access: 'write' | 'read' = 'write'): number | undefined {
  if (constants.O_DIRECT === undefined) return undefined;
  try {
    const mode = access === 'write' ? constants.O_WRONLY : constants.O_RDONLY;
    return openSync(path, mode | constants.O_DIRECT);
  } catch {
    return undefined;
  }
}

/** Whether `path` can be written around the page cache here. */
export function directWritesPossible(path: string): boolean {
  const fd = openDirect(path);
  if (fd === undefined) return false;
  closeSync(fd);
  return true;
}
