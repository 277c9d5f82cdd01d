/**
 * A FUSE filesystem holding one file, `volume`, whose bytes are a volume's
 * NBD export: what the loop device of the fallback attach path sits on.
 * It exists instead of nbdfuse because nbdfuse's file keeps the size it
 * connected with, while this file's size is the link's current size, so a
 * grown volume reaches the loop device (`losetup -c`) with no remount.
 *
 * Contract: serves requests from an open, mounted /dev/fuse descriptor until
 * the mount goes away (`closed` resolves), then flushes and closes the link.
 * Reads, writes, fsync/flush, fallocate (punch hole → trim, zero range →
 * write zeroes) go to the link; a read-only link refuses writes with EROFS.
 * Request buffers are copied before dispatch, so requests overlap freely.
 */
import { read as readFd, writevSync } from 'node:fs';
import { promisify } from 'node:util';
import type { Logger } from '../../common/log.js';
import { errnoOf } from '../../common/errors.js';
import {
  FALLOC_FL_PUNCH_HOLE,
  FALLOC_FL_ZERO_RANGE,
  FATTR_SIZE,
  FOPEN_DIRECT_IO,
  FUSE_ASYNC_READ,
  FUSE_MAX_PAGES,
  IN_HEADER_SIZE,
  OP,
  ROOT_NODE,
  decodeFallocateIn,
  decodeHeader,
  decodeInitIn,
  decodeReadIn,
  decodeWriteIn,
  encodeAttrOut,
  encodeDirent,
  encodeEntryOut,
  encodeInitOut,
  encodeOpenOut,
  encodeStatfsOut,
  encodeWriteOut,
  errnoNumber,
  replyHeader,
  type FileAttributes,
} from './fuse-wire.js';
import type { NbdLink } from './nbd-link.js';

export const VOLUME_FILE_NAME = 'volume';
const FILE_NODE = 2n;
/** Largest WRITE the kernel sends us: 256 pages. */
const MAX_PAGES = 256;
const MAX_WRITE = MAX_PAGES * 4096;
/** A request buffer must hold the largest write and its headers. */
const REQUEST_BUFFER_SIZE = MAX_WRITE + 64 * 1024;
/** Reads of /dev/fuse block a libuv thread each; two keep the queue drained. */
const READERS = 2;

const readAsync = promisify(readFd);

export class FuseFileServer {
  readonly closed: Promise<void>;

  constructor(
    private readonly fuseFd: number,
    private readonly link: NbdLink,
    /** Refuse writes even when the server would take them (a read-only attachment). */
    private readonly readOnly: boolean,
    private readonly log: Logger,
  ) {
    this.closed = Promise.all(Array.from({ length: READERS }, () => this.readLoop())).then(() =>
      this.link.close().catch((err) => this.log.error({ err: String(err) }, 'final flush failed')),
    );
  }

  private async readLoop(): Promise<void> {
    const buffer = Buffer.alloc(REQUEST_BUFFER_SIZE);
    for (;;) {
      let length: number;
      try {
        length = (await readAsync(this.fuseFd, buffer, 0, buffer.length, null)).bytesRead;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        // ENOENT: the request was interrupted before we read it; EINTR/EAGAIN: try again.
        if (code === 'ENOENT' || code === 'EINTR' || code === 'EAGAIN') continue;
        if (code !== 'ENODEV') this.log.error({ err: String(err) }, 'reading /dev/fuse failed');
        return; // ENODEV: unmounted
      }
      if (length === 0) return;
      const request = Buffer.from(buffer.subarray(0, length));
      void this.dispatch(request);
    }
  }

  private async dispatch(request: Buffer): Promise<void> {
    const header = decodeHeader(request);
    const body = request.subarray(IN_HEADER_SIZE);
    try {
      const reply = await this.handle(header.opcode, header.nodeId, body);
      if (reply !== null) this.send(header.unique, reply);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const errno = typeof code === 'string' && code.startsWith('E') ? code : errnoOf(err);
      if (header.opcode !== OP.READ)
        this.log.warn({ op: header.opcode, err: String(err) }, 'request failed');
      this.send(header.unique, [], errnoNumber(errno));
    }
  }

  /** The reply body, or null for requests the kernel expects no answer to. */
  private async handle(opcode: number, node: bigint, body: Buffer): Promise<Buffer[] | null> {
    switch (opcode) {
      case OP.INIT: {
        const init = decodeInitIn(body);
        this.log.debug({ kernel: `${init.major}.${init.minor}` }, 'FUSE init');
        return [
          encodeInitOut({
            maxReadahead: init.maxReadahead,
            flags: FUSE_ASYNC_READ | FUSE_MAX_PAGES,
            maxWrite: MAX_WRITE,
            maxPages: MAX_PAGES,
            maxBackground: 64,
          }),
        ];
      }
      case OP.LOOKUP: {
        const name = body.subarray(0, body.indexOf(0)).toString();
        if (node !== ROOT_NODE || name !== VOLUME_FILE_NAME) throw errno('ENOENT');
        return [encodeEntryOut(this.fileAttributes())];
      }
      case OP.GETATTR:
        return [encodeAttrOut(node === ROOT_NODE ? this.rootAttributes() : this.fileAttributes())];
      case OP.SETATTR:
        // Only the size is refused: the file is the volume, its size the server's.
        if (body.readUInt32LE(0) & FATTR_SIZE) throw errno('EPERM');
        return [encodeAttrOut(node === ROOT_NODE ? this.rootAttributes() : this.fileAttributes())];
      case OP.OPEN: {
        const accessMode = body.readUInt32LE(0) & 3;
        if (accessMode !== 0 && this.writesRefused) throw errno('EROFS');
        return [encodeOpenOut(FOPEN_DIRECT_IO)];
      }
      case OP.OPENDIR:
        return [encodeOpenOut(0)];
      case OP.READ: {
        const { offset, size } = decodeReadIn(body);
        const length = Math.max(0, Math.min(size, this.link.size - offset));
        const data = Buffer.allocUnsafe(length);
        if (length > 0) await this.link.read(data, offset);
        return [data];
      }
      case OP.WRITE: {
        if (this.writesRefused) throw errno('EROFS');
        const { offset, data } = decodeWriteIn(body);
        if (offset + data.length > this.link.size) throw errno('ENOSPC');
        await this.link.write(data, offset);
        return [encodeWriteOut(data.length)];
      }
      case OP.FALLOCATE: {
        if (this.writesRefused) throw errno('EROFS');
        const { offset, length, mode } = decodeFallocateIn(body);
        if (offset + length > this.link.size) throw errno('EINVAL');
        if (mode & FALLOC_FL_PUNCH_HOLE) await this.link.trim(offset, length);
        else if (mode & FALLOC_FL_ZERO_RANGE) await this.link.writeZeroes(offset, length);
        else if (mode !== 0) throw errno('EOPNOTSUPP');
        return [];
      }
      case OP.FSYNC:
      case OP.FLUSH:
        if (node === FILE_NODE && !this.writesRefused) await this.link.flush();
        return [];
      case OP.READDIR: {
        const { offset } = decodeReadIn(body);
        const entries = [
          encodeDirent(ROOT_NODE, 1, 4, '.'),
          encodeDirent(ROOT_NODE, 2, 4, '..'),
          encodeDirent(FILE_NODE, 3, 8, VOLUME_FILE_NAME),
        ];
        return entries.slice(offset);
      }
      case OP.STATFS:
        return [encodeStatfsOut()];
      case OP.RELEASE:
      case OP.RELEASEDIR:
      case OP.FSYNCDIR:
      case OP.ACCESS:
      case OP.DESTROY:
        return [];
      case OP.FORGET:
      case OP.BATCH_FORGET:
      case OP.INTERRUPT:
        return null;
      default:
        throw errno('ENOSYS');
    }
  }

  private get writesRefused(): boolean {
    return this.readOnly || this.link.readOnly;
  }

  private fileAttributes(): FileAttributes {
    const mode = 0o100000 | (this.writesRefused ? 0o400 : 0o600);
    return { ino: FILE_NODE, size: this.link.size, mode, nlink: 1 };
  }

  private rootAttributes(): FileAttributes {
    return { ino: ROOT_NODE, size: 0, mode: 0o040755, nlink: 2 };
  }

  private send(unique: bigint, body: Buffer[], error = 0): void {
    const length = body.reduce((sum, b) => sum + b.length, 0);
    try {
      writevSync(this.fuseFd, [replyHeader(unique, length, error), ...body]);
    } catch (err) {
      // ENOENT: the kernel gave up on this request (interrupted); nothing to answer.
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENODEV')
        this.log.error({ err: String(err) }, 'writing a FUSE reply failed');
    }
  }
}

function errno(code: string): NodeJS.ErrnoException {
  const err: NodeJS.ErrnoException = new Error(code);
  err.code = code;
  return err;
}
