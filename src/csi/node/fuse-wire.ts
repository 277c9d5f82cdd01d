/**
 * The slice of the Linux FUSE protocol (include/uapi/linux/fuse.h) the
 * volume file server speaks: constants, offsets and pure encoders over
 * Buffers. We answer as protocol 7.31, whose structures every kernel since
 * 5.x accepts; the kernel adapts to a server's older minor.
 */
import { constants as osConstants } from 'node:os';

export const FUSE_KERNEL_VERSION = 7;
export const FUSE_KERNEL_MINOR_VERSION = 31;

export const OP = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  ACCESS: 34,
  INTERRUPT: 36,
  DESTROY: 38,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
} as const;

/** INIT flags. ASYNC_READ lets reads overlap; MAX_PAGES lets writes be up to max_pages pages. */
export const FUSE_ASYNC_READ = 1 << 0;
export const FUSE_MAX_PAGES = 1 << 22;
/** OPEN reply flag: bypass the page cache (the loop device above has its own). */
export const FOPEN_DIRECT_IO = 1 << 0;
/** SETATTR `valid` bit for a size change. */
export const FATTR_SIZE = 1 << 3;
/** fallocate(2) modes the loop driver sends for discard and write-zeroes. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

export const IN_HEADER_SIZE = 40;
export const OUT_HEADER_SIZE = 16;
const ATTR_SIZE = 88;
export const ATTR_OUT_SIZE = 16 + ATTR_SIZE;
export const ENTRY_OUT_SIZE = 40 + ATTR_SIZE;
export const INIT_OUT_SIZE = 64;
export const OPEN_OUT_SIZE = 16;
export const WRITE_OUT_SIZE = 8;
export const STATFS_OUT_SIZE = 80;
/** fuse_write_in: fh, offset, size, write_flags, lock_owner, flags, padding; the data follows. */
export const WRITE_IN_SIZE = 40;

export const ROOT_NODE = 1n;

/** The fixed part of every request the kernel sends. */
export interface FuseRequestHeader {
  length: number;
  opcode: number;
  unique: bigint;
  nodeId: bigint;
}

export function decodeHeader(request: Buffer): FuseRequestHeader {
  return {
    length: request.readUInt32LE(0),
    opcode: request.readUInt32LE(4),
    unique: request.readBigUInt64LE(8),
    nodeId: request.readBigUInt64LE(16),
  };
}

/** The errno number for a name (ENOENT → 2), for the reply header's negative error. */
export function errnoNumber(name: string): number {
  return (osConstants.errno as Record<string, number>)[name] ?? osConstants.errno.EIO;
}

/** A reply: the out header (length covers `bodyLength` more bytes) followed by the body. */
export function replyHeader(unique: bigint, bodyLength: number, error = 0): Buffer {
  const out = Buffer.alloc(OUT_HEADER_SIZE);
  out.writeUInt32LE(OUT_HEADER_SIZE + bodyLength, 0);
  out.writeInt32LE(error === 0 ? 0 : -Math.abs(error), 4);
  out.writeBigUInt64LE(unique, 8);
  return out;
}

export interface FileAttributes {
  ino: bigint;
  size: number;
  /** st_mode bits including the type (S_IFDIR / S_IFREG). */
  mode: number;
  nlink: number;
}

/** struct fuse_attr at `offset`. Times are zero: nothing here has a meaningful mtime. */
export function encodeAttr(out: Buffer, offset: number, attr: FileAttributes): void {
  out.fill(0, offset, offset + ATTR_SIZE);
  out.writeBigUInt64LE(attr.ino, offset);
  out.writeBigUInt64LE(BigInt(attr.size), offset + 8);
  out.writeBigUInt64LE(BigInt(Math.ceil(attr.size / 512)), offset + 16);
  out.writeUInt32LE(attr.mode, offset + 60);
  out.writeUInt32LE(attr.nlink, offset + 64);
  out.writeUInt32LE(4096, offset + 80); // blksize
}

/** fuse_attr_out with a zero validity: every stat asks again, so a grown size shows at once. */
export function encodeAttrOut(attr: FileAttributes): Buffer {
  const out = Buffer.alloc(ATTR_OUT_SIZE);
  encodeAttr(out, 16, attr);
  return out;
}

/** fuse_entry_out for a lookup, with zero validity for the same reason. */
export function encodeEntryOut(attr: FileAttributes): Buffer {
  const out = Buffer.alloc(ENTRY_OUT_SIZE);
  out.writeBigUInt64LE(attr.ino, 0);
  encodeAttr(out, 40, attr);
  return out;
}

export interface InitReply {
  maxReadahead: number;
  flags: number;
  maxWrite: number;
  maxPages: number;
  maxBackground: number;
}

export function encodeInitOut(reply: InitReply): Buffer {
  const out = Buffer.alloc(INIT_OUT_SIZE);
  out.writeUInt32LE(FUSE_KERNEL_VERSION, 0);
  out.writeUInt32LE(FUSE_KERNEL_MINOR_VERSION, 4);
  out.writeUInt32LE(reply.maxReadahead, 8);
  out.writeUInt32LE(reply.flags, 12);
  out.writeUInt16LE(reply.maxBackground, 16);
  out.writeUInt16LE(Math.ceil((reply.maxBackground * 3) / 4), 18); // congestion threshold
  out.writeUInt32LE(reply.maxWrite, 20);
  out.writeUInt32LE(1, 24); // time granularity, ns
  out.writeUInt16LE(reply.maxPages, 28);
  return out;
}

export function encodeOpenOut(openFlags: number): Buffer {
  const out = Buffer.alloc(OPEN_OUT_SIZE);
  out.writeUInt32LE(openFlags, 8);
  return out;
}

export function encodeWriteOut(size: number): Buffer {
  const out = Buffer.alloc(WRITE_OUT_SIZE);
  out.writeUInt32LE(size, 0);
  return out;
}

/** fuse_kstatfs: a file server has no free space of its own to report. */
export function encodeStatfsOut(): Buffer {
  const out = Buffer.alloc(STATFS_OUT_SIZE);
  out.writeUInt32LE(4096, 40); // bsize
  out.writeUInt32LE(255, 44); // namelen
  out.writeUInt32LE(4096, 48); // frsize
  return out;
}

/** One struct fuse_dirent: ino, next offset, name length, type, name padded to 8 bytes. */
export function encodeDirent(ino: bigint, nextOffset: number, type: number, name: string): Buffer {
  const nameBytes = Buffer.from(name);
  const length = (24 + nameBytes.length + 7) & ~7;
  const out = Buffer.alloc(length);
  out.writeBigUInt64LE(ino, 0);
  out.writeBigUInt64LE(BigInt(nextOffset), 8);
  out.writeUInt32LE(nameBytes.length, 16);
  out.writeUInt32LE(type, 20);
  nameBytes.copy(out, 24);
  return out;
}

/** fuse_read_in (READ, READDIR): fh, offset, size. */
export function decodeReadIn(body: Buffer): { offset: number; size: number } {
  return { offset: Number(body.readBigUInt64LE(8)), size: body.readUInt32LE(16) };
}

/** fuse_write_in and the data after it. */
export function decodeWriteIn(body: Buffer): { offset: number; data: Buffer } {
  const size = body.readUInt32LE(16);
  return {
    offset: Number(body.readBigUInt64LE(8)),
    data: body.subarray(WRITE_IN_SIZE, WRITE_IN_SIZE + size),
  };
}

/** fuse_fallocate_in: fh, offset, length, mode. */
export function decodeFallocateIn(body: Buffer): { offset: number; length: number; mode: number } {
  return {
    offset: Number(body.readBigUInt64LE(8)),
    length: Number(body.readBigUInt64LE(16)),
    mode: body.readUInt32LE(24),
  };
}

/** fuse_init_in: major, minor, max_readahead, flags. */
export function decodeInitIn(body: Buffer): { major: number; minor: number; maxReadahead: number } {
  return {
    major: body.readUInt32LE(0),
    minor: body.readUInt32LE(4),
    maxReadahead: body.readUInt32LE(8),
  };
}
