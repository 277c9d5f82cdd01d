/**
 * The contract between the NBD protocol layer and whatever serves the bytes.
 *
 * The session validates every request before it reaches an export: offsets and
 * lengths are in range (reads past the end get EINVAL, writes ENOSPC, never
 * passed down), lengths are within the advertised maximum, flags are known.
 * So an export only ever sees well-formed, in-range requests.
 *
 * Errors: an export rejects with an IoError (common/errors.ts) carrying the
 * errno the client should see; any other rejection is answered as EIO. A
 * rejection never ends the session.
 *
 * Concurrency: the session issues requests as they arrive (pipelined) and
 * replies as each settles, possibly out of order. Several sessions may hold the
 * same export at once (multi-conn); an export must make FLUSH on any of them
 * cover every write that completed on any of them before the FLUSH arrived.
 */

/** One run of the base:allocation meta context. */
export interface Extent {
  length: number;
  /** NBD_STATE_HOLE (1) | NBD_STATE_ZERO (2), as in the base:allocation context. */
  flags: number;
}

export interface ReadViews {
  buffers: Buffer[];
  release(): void;
}

export interface ExportInfo {
  name: string;
  description: string;
}

export interface WriteZeroesOptions {
  fua: boolean;
  /** NBD_CMD_FLAG_NO_HOLE: the range must stay allocated. */
  noHole: boolean;
  /** NBD_CMD_FLAG_FAST_ZERO: fail with ENOTSUP rather than do slow work. */
  fastZero: boolean;
}

export interface NbdExport {
  readonly name: string;
  readonly description: string;
  /** Size in bytes; a multiple of minimumBlockSize. */
  readonly size: number;
  readonly readOnly: boolean;
  /** Block-size constraints for NBD_INFO_BLOCK_SIZE. */
  readonly minimumBlockSize: number;
  readonly preferredBlockSize: number;
  readonly maximumPayload: number;
  /** True when every connection to this export sees one consistent store (NBD_FLAG_CAN_MULTI_CONN). */
  readonly canMultiConn: boolean;

  /** Fill dest (length bytes) with the data at offset. dest belongs to the session. */
  read(offset: number, dest: Buffer): Promise<void>;
  /**
   * Optional zero-copy read: if the whole range can be had at once without
   * waiting, return buffers that together hold it (views into the export's
   * own memory, kept unchanged-in-place until release() is called); else
   * undefined, and the session falls back to read(). The session calls
   * release() exactly once, after the socket has taken every buffer.
   */
  readViews?(offset: number, length: number): ReadViews | undefined;
  /**
   * Zero copy for a range readViews() could not serve at once: resolves with
   * views once what was missing is loaded, pinned the same way, or undefined
   * (then, as without it, the session reads into a reply buffer of its own).
   */
  loadViews?(offset: number, length: number): Promise<ReadViews | undefined>;
  /** Write data at offset. data is only valid until the promise settles: copy it, do not keep it. */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  /** Make every completed write durable. */
  flush(): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  writeZeroes(offset: number, length: number, options: WriteZeroesOptions): Promise<void>;
  /** Advisory prefetch. */
  cache(offset: number, length: number): Promise<void>;
  /** Allocation status of [offset, offset+length): at least one extent, all lengths > 0, may stop short. */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  /** The session that opened this export has ended. */
  close(): Promise<void>;
}

/** What the server exports: looked up by name on each EXPORT_NAME / INFO / GO. */
export interface ExportProvider {
  list(): ExportInfo[] | Promise<ExportInfo[]>;
  /** Open the named export for one session; undefined if no such export. */
  open(name: string): Promise<NbdExport | undefined>;
  /** Describe an export without opening it (NBD_OPT_INFO); undefined if none. */
  describe(
    name: string,
  ): Promise<
    | Omit<
        NbdExport,
        'read' | 'write' | 'flush' | 'trim' | 'writeZeroes' | 'cache' | 'blockStatus' | 'close'
      >
    | undefined
  >;
}
