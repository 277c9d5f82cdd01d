/**
 * Resizing a volume (`torusctl volume resize`).
 *
 * Growing is metadata only: a compare-and-swap of the record's size (no
 * lock: the version is untouched, and a writer holding the volume open
 * commits on top of the new record — VolumeOwnership.commit). The open
 * Volume learns the size at once, so sessions opened afterwards see it; NBD
 * has no resize notice, so a session already open keeps the size its
 * handshake gave until its client reconnects.
 *
 * Shrinking is refused without `shrink` (the data past the new end is lost)
 * and while any client has the volume open. Otherwise it goes through the
 * open Volume, which holds the version: every block past the new end is
 * trimmed and that version committed (its blocks released like any a commit
 * supersedes), then the record's size is changed. In a cluster that needs
 * the volume's write lock: the node doing it must be able to take it
 * (nobody else writes or reads the volume).
 */
import { ConflictError, UsageError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { formatSize } from '../common/size.js';
import type {
  VersionedRecord,
  VolumeCatalog,
  VolumeRecord,
} from '../controlplane/volumes/catalog.js';
import type { VolumeHost } from './volume-host.js';

/** How many times a resize is tried again when a commit moved the record under it. */
const RESIZE_ATTEMPTS = 5;

export interface ResizeOptions {
  /** Allow a smaller size (the data past it is lost). */
  shrink?: boolean;
}

export interface ResizeResult {
  name: string;
  oldSize: number;
  size: number;
  /** Open NBD connections (on the node that did it) that keep the old size until they reconnect. */
  sessions: number;
}

/** The most a volume may hold, and what that is, for the refusal: "the store's capacity". */
export interface SizeLimit {
  bytes: number;
  what: string;
}

/**
 * Check a resize of `record` to `size`: a positive multiple of 4 KiB, within
 * `limit`, and smaller only with `shrink`. Returns which way it goes.
 */
export function checkResize(
  record: VolumeRecord,
  size: number,
  options: ResizeOptions,
  limit?: SizeLimit,
): 'grow' | 'shrink' | 'same' {
  if (!Number.isSafeInteger(size) || size <= 0 || size % 4096 !== 0)
    throw new UsageError(`volume size must be a positive multiple of 4 KiB, got ${size} bytes`);
  const old = record.size;
  if (size === old) return 'same';
  if (size < old && !options.shrink)
    throw new UsageError(
      `volume "${record.name}" is ${formatSize(old)}; ${formatSize(size)} would shrink it and lose the data past ${formatSize(size)}: add --shrink to do that`,
    );
  if (size > old && limit && size > limit.bytes)
    throw new ConflictError(
      `volume "${record.name}" cannot grow to ${formatSize(size)}: ${limit.what} is ${formatSize(limit.bytes)}; choose at most that`,
    );
  return size > old ? 'grow' : 'shrink';
}

/** Change a record's size by compare-and-swap, reading it again when a commit moved it meanwhile. */
export async function resizeRecord(
  catalog: VolumeCatalog,
  name: string,
  size: number,
  check: (record: VolumeRecord) => void,
): Promise<VersionedRecord> {
  for (let attempt = 1; ; attempt++) {
    const current = await catalog.get(name);
    check(current.record);
    try {
      return await catalog.resize(current, size);
    } catch (err) {
      if (!(err instanceof ConflictError) || attempt >= RESIZE_ATTEMPTS) throw err;
    }
  }
}

export interface VolumeResizerParts {
  catalog: VolumeCatalog;
  host: VolumeHost;
  /** What the node can hold: a single node's store capacity; undefined on a cluster member. */
  limit: SizeLimit | undefined;
  clustered: boolean;
  log: Logger;
}

export class VolumeResizer {
  constructor(private readonly parts: VolumeResizerParts) {}

  /** Resize volume `name` to `size` bytes (module comment); in the volume's queue, so no open interleaves. */
  resize(name: string, size: number, options: ResizeOptions = {}): Promise<ResizeResult> {
    const { host } = this.parts;
    return host.exclusive(name, async () => {
      const { record } = await this.parts.catalog.get(name);
      const way = checkResize(record, size, options, this.parts.limit);
      const volume = host.volumes.get(name);
      const result = { name, oldSize: record.size, size, sessions: volume?.openSessions ?? 0 };
      if (way === 'same') return result;
      if (way === 'grow') {
        await resizeRecord(this.parts.catalog, name, size, (now) =>
          checkResize(now, size, options, this.parts.limit),
        );
        if (volume && volume.size < size) volume.grow(size);
      } else {
        await this.shrink(name, size, options);
      }
      this.parts.log.info(
        { volume: name, from: formatSize(record.size), to: formatSize(size) },
        'volume resized',
      );
      return result;
    });
  }

  /** Trim the tail through the open Volume and commit it, then change the record's size. */
  private async shrink(name: string, size: number, options: ResizeOptions): Promise<void> {
    const { host, catalog } = this.parts;
    if (this.parts.clustered && !host.ownership.writing(name))
      throw new ConflictError(
        `volume "${name}" is not written by this node: shrink it with torusctl -C ETCD volume resize --shrink while no client has it open`,
      );
    const volume = host.volumes.get(name);
    if (!volume) {
      const why = host.unavailable.get(name);
      throw new ConflictError(
        `volume "${name}" is not open on this node${why ? ` (${why})` : ''}; it cannot be shrunk until it is`,
      );
    }
    await volume.shrink(size);
    try {
      if (this.parts.clustered) await host.ownership.resizeHeld(name, size);
      else await resizeRecord(catalog, name, size, (now) => checkResize(now, size, options));
    } catch (err) {
      // The tail is trimmed and committed; the record keeps the old size, which reads zeros there.
      volume.grow(Math.max(volume.size, (await catalog.get(name)).record.size));
      throw err;
    }
  }
}
