/**
 * Writing the dump's output file around the page cache (O_DIRECT), where the
 * system allows it.
 *
 * Why: a dump writes every data byte of a volume once, and nobody reads the
 * file back soon. Through the page cache each byte is first copied into
 * freshly allocated cache pages, and on the 2-core VM of docs/benchmarks.md
 * that copy was 0.7 s of system CPU per GiB, 2.5 s with the hash thread
 * running beside it (perf: copy_folio_from_iter_atomic), more than the rest
 * of the dump together; a GiB of 4 MiB writes took 5.5-6.8 s through the
 * cache and 2.4-3.2 s around it (8 in flight, at load 11). nbdcopy keeps the
 * cache out of its way with sync_file_range and POSIX_FADV_DONTNEED on what
 * it wrote; Node has neither call, and O_DIRECT is what it offers.
 *
 * O_DIRECT wants the memory address, the file offset and the length aligned
 * to the device's logical block (512 B or 4 KiB). The buffers are a
 * WebAssembly.Memory's: shared (the hash thread reads them) and starting on
 * a page, which a SharedArrayBuffer from Node's allocator does not (it
 * starts 16 bytes into one: every 4 MiB write then spans one page more, and
 * measured 10x slower). Writes whose offset or length is not a multiple of
 * DIRECT_ALIGNMENT (another server's odd extents) go through the page cache
 * on the ordinary handle. Where O_DIRECT cannot be opened (tmpfs, a system
 * without the flag) everything does, as before.
 */
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { pageAlignedSharedMemory } from '../common/aligned-memory.js';

/** Offsets, lengths and memory of direct writes are multiples of this (the largest logical block in use). */
export const DIRECT_ALIGNMENT = 4096;
/**
 * Shorter writes go through the page cache: a direct write pays the
 * device's latency whole, and ext4 runs direct writes that allocate one at a
 * time, even into a file already sized (1 MiB: ~1.1 ms each here, 4 MiB:
 * ~2.1 ms). Through the cache, writes overlap in the thread pool but cost
 * CPU for the copy. Which wins depends on what else wants the CPU, so the
 * threshold depends on whether the dump hashes. Measured on the 2-core VM of
 * docs/benchmarks.md, a half-written volume (1 MiB runs), alternating builds:
 * - without the hash, the CPU is free and overlapping wins: 1 GiB in
 *   0.49-0.66 s through the cache, 0.58-0.75 s direct;
 * - with it, the hash (one core, the slowest step) needs the CPU the copies
 *   take: 1 GiB in 1.16-1.27 s direct, 1.70-1.87 s through the cache;
 *   4 GiB in 3.6-4.4 s against 5.2-6.1 s.
 * Whole 4 MiB chunks go direct either way (4.5-5.6 s for 1 GiB against
 * 6.7-11.9 s, with a quarter of the system CPU, at load 9).
 */
export const DIRECT_MIN_BYTES = 4 * 1024 * 1024;
/** …and when the dump hashes its content (the hash needs the CPU the page cache takes). */
export const DIRECT_MIN_BYTES_HASHING = 64 * 1024;
/** The output file's handles: `file` always; `direct` (O_DIRECT) when the system allows it. */
export interface OutputFile {
  file: FileHandle;
  direct: FileHandle | undefined;
}

/** Create (or truncate) `path` for writing; a second, O_DIRECT handle on it when it can be had. */
export async function openOutputFile(path: string): Promise<OutputFile> {
  const file = await open(path, 'w');
  const flag = constants.O_DIRECT;
  if (flag === undefined) return { file, direct: undefined };
  const direct = await open(path, constants.O_WRONLY | flag).catch(() => undefined);
  return { file, direct };
}

/**
 * `count` buffers of `size` bytes (a multiple of DIRECT_ALIGNMENT) in one
 * shared memory that starts on a page (a WebAssembly.Memory's buffer, a
 * SharedArrayBuffer), so each buffer starts aligned for O_DIRECT.
 */
export function pageAlignedSharedBuffers(count: number, size: number): Buffer[] {
  if (size % DIRECT_ALIGNMENT !== 0)
    throw new RangeError(`aligned buffers: size ${size} is not a multiple of ${DIRECT_ALIGNMENT}`);
  const memory = pageAlignedSharedMemory(count * size);
  if (!memory) throw new RangeError(`aligned buffers: ${count} × ${size} bytes is past 4 GiB`);
  return Array.from({ length: count }, (_, i) => Buffer.from(memory, i * size, size));
}

/** Whether `data` (a view of pageAlignedSharedBuffers' memory) goes to `offset` through O_DIRECT. */
export function directWritable(
  data: Buffer,
  offset: number,
  minBytes: number = DIRECT_MIN_BYTES,
): boolean {
  return (
    offset % DIRECT_ALIGNMENT === 0 &&
    data.length >= minBytes &&
    data.length % DIRECT_ALIGNMENT === 0 &&
    data.byteOffset % DIRECT_ALIGNMENT === 0
  );
}
