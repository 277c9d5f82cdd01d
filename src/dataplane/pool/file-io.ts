/** Whole-buffer positional reads and writes for the pool workers (blocking: a worker's I/O is meant to block). */
import { readSync, writeSync } from 'node:fs';

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
