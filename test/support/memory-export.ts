/**
 * MemoryExport: an in-RAM NbdExport with real semantics, for tests and as a
 * diagnostic backend (serve the protocol layer with no storage beneath it).
 *
 * Storage is sparse: a Map of 64 KiB chunks, created on first write, so a
 * 1 TiB export costs nothing until written. Trimmed or zeroed ranges read as
 * zeros; a chunk that ends up all zero is dropped and reports as a hole
 * (NBD_STATE_HOLE | NBD_STATE_ZERO) in blockStatus, allocated chunks as data
 * (flags 0). Every session shares one store, so FLUSH (a no-op in RAM) covers
 * every connection and CAN_MULTI_CONN holds.
 */
import { IoError } from '../../src/common/errors.js';
import type {
  ExportInfo,
  ExportProvider,
  Extent,
  NbdExport,
  WriteZeroesOptions,
} from '../../src/dataplane/nbd/export.js';
import { NBD_STATE_HOLE, NBD_STATE_ZERO } from '../../src/dataplane/nbd/wire.js';

const CHUNK = 64 * 1024;

export interface MemoryExportOptions {
  name: string;
  size: number;
  description?: string;
  readOnly?: boolean;
  minimumBlockSize?: number;
  preferredBlockSize?: number;
  maximumPayload?: number;
  canMultiConn?: boolean;
}

export class MemoryExport implements NbdExport {
  readonly name: string;
  readonly description: string;
  readonly size: number;
  readonly readOnly: boolean;
  readonly minimumBlockSize: number;
  readonly preferredBlockSize: number;
  readonly maximumPayload: number;
  readonly canMultiConn: boolean;
  private readonly chunks = new Map<number, Buffer>();
  /** Sessions holding this export (opened by the provider, not yet closed). */
  openSessions = 0;

  constructor(options: MemoryExportOptions) {
    this.name = options.name;
    this.description = options.description ?? `in-memory export ${options.name}`;
    this.size = options.size;
    this.readOnly = options.readOnly ?? false;
    this.minimumBlockSize = options.minimumBlockSize ?? 1;
    this.preferredBlockSize = options.preferredBlockSize ?? 4096;
    this.maximumPayload = options.maximumPayload ?? 32 * 1024 * 1024;
    this.canMultiConn = options.canMultiConn ?? true;
    if (
      !Number.isSafeInteger(this.size) ||
      this.size < 0 ||
      this.size % this.minimumBlockSize !== 0
    ) {
      throw new RangeError(
        `export size ${this.size} must be a non-negative multiple of the minimum block size ${this.minimumBlockSize}`,
      );
    }
  }

  /** Bytes of RAM holding data (allocated chunks × 64 KiB). */
  get allocatedBytes(): number {
    return this.chunks.size * CHUNK;
  }

  async read(offset: number, dest: Buffer): Promise<void> {
    this.checkRange(offset, dest.length);
    this.forEachPiece(offset, dest.length, (index, within, length, done) => {
      const chunk = this.chunks.get(index);
      if (chunk) chunk.copy(dest, done, within, within + length);
      else dest.fill(0, done, done + length);
    });
  }

  async write(offset: number, data: Buffer, _fua: boolean): Promise<void> {
    this.checkWritable(offset, data.length);
    this.forEachPiece(offset, data.length, (index, within, length, done) => {
      let chunk = this.chunks.get(index);
      if (!chunk) {
        chunk = Buffer.alloc(CHUNK);
        this.chunks.set(index, chunk);
      }
      data.copy(chunk, within, done, done + length);
    });
  }

  async flush(): Promise<void> {}

  async trim(offset: number, length: number, _fua: boolean): Promise<void> {
    this.checkWritable(offset, length);
    this.zero(offset, length);
  }

  async writeZeroes(offset: number, length: number, _options: WriteZeroesOptions): Promise<void> {
    // Zeroing in RAM is always fast, so FAST_ZERO never fails. NO_HOLE is
    // honoured in what clients can see (zeros); a thin RAM store keeps no zero chunks.
    this.checkWritable(offset, length);
    this.zero(offset, length);
  }

  async cache(offset: number, length: number): Promise<void> {
    this.checkRange(offset, length);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.checkRange(offset, length);
    const extents: Extent[] = [];
    this.forEachPiece(offset, length, (index, _within, pieceLength) => {
      const flags = this.chunks.has(index) ? 0 : NBD_STATE_HOLE | NBD_STATE_ZERO;
      const last = extents[extents.length - 1];
      if (last && last.flags === flags) last.length += pieceLength;
      else extents.push({ length: pieceLength, flags });
    });
    return extents;
  }

  async close(): Promise<void> {
    this.openSessions--;
  }

  private zero(offset: number, length: number): void {
    this.forEachPiece(offset, length, (index, within, pieceLength) => {
      const chunk = this.chunks.get(index);
      if (!chunk) return;
      if (pieceLength === CHUNK) {
        this.chunks.delete(index);
        return;
      }
      chunk.fill(0, within, within + pieceLength);
      if (isAllZero(chunk)) this.chunks.delete(index);
    });
  }

  /** Split [offset, offset+length) at chunk boundaries: visit(chunk index, offset within it, piece length, bytes before it). */
  private forEachPiece(
    offset: number,
    length: number,
    visit: (index: number, within: number, length: number, done: number) => void,
  ): void {
    let done = 0;
    while (done < length) {
      const at = offset + done;
      const index = Math.floor(at / CHUNK);
      const within = at - index * CHUNK;
      const piece = Math.min(CHUNK - within, length - done);
      visit(index, within, piece, done);
      done += piece;
    }
  }

  private checkRange(offset: number, length: number): void {
    // The session validates first; this guards direct (diagnostic) use.
    if (offset < 0 || length < 0 || offset + length > this.size)
      throw new IoError('EINVAL', `range ${offset}+${length} outside the ${this.size}-byte export`);
  }

  private checkWritable(offset: number, length: number): void {
    if (this.readOnly) throw new IoError('EPERM', `export ${this.name} is read-only`);
    this.checkRange(offset, length);
  }
}

const ZERO_CHUNK = Buffer.alloc(CHUNK);
function isAllZero(chunk: Buffer): boolean {
  return chunk.equals(ZERO_CHUNK);
}

/** Serves a fixed set of MemoryExports by name. */
export class MemoryExportProvider implements ExportProvider {
  private readonly exports = new Map<string, MemoryExport>();

  constructor(exports: MemoryExport[] = []) {
    for (const exp of exports) this.add(exp);
  }

  add(exp: MemoryExport): void {
    this.exports.set(exp.name, exp);
  }

  get(name: string): MemoryExport | undefined {
    return this.exports.get(name);
  }

  list(): ExportInfo[] {
    return [...this.exports.values()].map((e) => ({ name: e.name, description: e.description }));
  }

  async open(name: string): Promise<NbdExport | undefined> {
    const exp = this.exports.get(name);
    if (exp) exp.openSessions++;
    return exp;
  }

  async describe(name: string): Promise<MemoryExport | undefined> {
    return this.exports.get(name);
  }
}
