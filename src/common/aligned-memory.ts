/**
 * Shared memory that starts on a page, for buffers written with O_DIRECT
 * (which wants the memory aligned to the device's logical block). A
 * SharedArrayBuffer from Node's allocator starts 16 bytes into a page, so a
 * direct write from it fails (EINVAL); a shared WebAssembly.Memory's buffer
 * starts on one. wasm32 memory stops at 65,536 pages of 64 KiB (4 GiB).
 */
const WASM_PAGE = 65536;
const MAX_WASM_PAGES = 65536;

/** `bytes` (rounded up to a 64 KiB page) of zeroed shared memory starting on a page, or undefined past 4 GiB. */
export function pageAlignedSharedMemory(bytes: number): SharedArrayBuffer | undefined {
  const pages = Math.ceil(bytes / WASM_PAGE);
  if (pages > MAX_WASM_PAGES) return undefined;
  try {
    const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
    // A shared memory's buffer is a SharedArrayBuffer (typed as ArrayBuffer by the DOM lib).
    return memory.buffer as unknown as SharedArrayBuffer;
  } catch {
    return undefined; // the engine would not reserve it: the caller's plain buffer instead
  }
}
