/**
 * VolumeHost: the volumes this node has open, and the NBD ExportProvider
 * over them.
 *
 * Which volumes are open, and when, is the HostingMode's decision, made once
 * at assembly: a single node opens every volume at start (then sweeps the
 * blocks none references: every-volume-hosting.ts); a cluster node opens one
 * when a client asks for it, under its write lock, and lets go of it after
 * the last session (on-demand-hosting.ts). The host keeps what both share:
 * the open Volume objects, the ones that could not be opened and why, and a
 * per-volume queue so that opens and unloads of one volume never interleave.
 */
import { formatSize } from '../common/size.js';
import type { Logger } from '../common/log.js';
import type { VersionedRecord, VolumeRecord } from '../controlplane/volumes/catalog.js';
import type { VolumeOwnership } from '../controlplane/volumes/ownership.js';
import type { SnapshotCatalog } from '../controlplane/volumes/snapshots.js';
import type { KeyRing } from '../dataplane/crypto/key-ring.js';
import type { ExportInfo, ExportProvider, NbdExport } from '../dataplane/nbd/export.js';
import { Volume, type VolumeServices } from '../dataplane/volume/volume.js';
import { VolumeExport } from '../dataplane/volume/volume-export.js';
import type { NodeMetrics } from './metrics.js';
import { SnapshotExports } from './snapshot-exports.js';

/** What NBD_OPT_INFO says of an export. */
export type ExportDescription = NonNullable<Awaited<ReturnType<ExportProvider['describe']>>>;

/** When volumes are opened and let go of: one node's policy, chosen at assembly. */
export interface HostingMode {
  /** At open: whatever the mode opens or cleans up before serving. */
  start(): Promise<void>;
  /** The volume for a new NBD session; undefined when there is no such volume. */
  volumeFor(name: string): Promise<Volume | undefined>;
  /** A session of `volume` ended. */
  sessionEnded(name: string, volume: Volume): void;
  /** Volume `name` was just created in the catalog. */
  created(name: string): Promise<void>;
  /** The exports NBD_OPT_LIST shows. */
  exports(): Promise<ExportInfo[]>;
  /** NBD_OPT_INFO on a volume not open here; undefined when there is none. */
  describeUnopened(name: string): Promise<ExportDescription | undefined>;
  /** Nothing is let go of on a timer any more (the node is closing, or deleting `name` when given). */
  stopLingering(name?: string): void;
  /**
   * Volumes this node's intent holder log keeps FLUSHed records of (a
   * cluster member's): take over, commit and let go of those whose writer
   * has been gone for `afterMs`. Never rejects.
   */
  adoptOrphans?(names: readonly string[], afterMs: number): Promise<void>;
}

export interface VolumeHostParts {
  ownership: VolumeOwnership;
  snapshots: SnapshotCatalog;
  keys: KeyRing;
  services: VolumeServices;
  log: Logger;
}

export class VolumeHost implements ExportProvider {
  /** The volumes open here, by name. */
  readonly volumes = new Map<string, Volume>();
  /** Volumes present in metadata that could not be opened, and why. */
  readonly unavailable = new Map<string, string>();
  /** The tail of each volume's queue of opens and unloads (exclusive()). */
  private readonly serial = new Map<string, Promise<void>>();
  /** Snapshots served read-only as VOLUME@SNAPSHOT. */
  readonly snapshotExports: SnapshotExports;
  private closingNow = false;
  private mode!: HostingMode;

  constructor(
    private readonly parts: VolumeHostParts,
    mode: (host: VolumeHost) => HostingMode,
  ) {
    this.mode = mode(this);
    this.snapshotExports = new SnapshotExports(
      parts.snapshots,
      parts.keys,
      parts.services,
      parts.log,
      (volume, snapshot) => parts.ownership.pinSnapshot(parts.snapshots, volume, snapshot),
    );
  }

  get closing(): boolean {
    return this.closingNow;
  }

  get ownership(): VolumeOwnership {
    return this.parts.ownership;
  }

  start(): Promise<void> {
    return this.mode.start();
  }

  created(name: string): Promise<void> {
    return this.mode.created(name);
  }

  /** See HostingMode.adoptOrphans; nothing on a single node. */
  adoptOrphans(names: readonly string[], afterMs: number): Promise<void> {
    return this.mode.adoptOrphans?.(names, afterMs) ?? Promise.resolve();
  }

  /** Open the version `versioned` names (its key unwrapped when encrypted). */
  openVolume(versioned: VersionedRecord): Promise<Volume> {
    return openVersion(versioned.record, this.parts.keys, this.parts.services);
  }

  /** The data key of an encrypted volume's record (null when not encrypted). */
  dataKey(versioned: VersionedRecord): Promise<Uint8Array | null> {
    const { record } = versioned;
    return record.encrypted ? this.parts.keys.unwrap(record) : Promise.resolve(null);
  }

  /**
   * Run fn after every earlier call for the same volume settled, so opens and
   * unloads of one volume never interleave (two clients connecting at once
   * take the lock once and share one Volume).
   */
  exclusive<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const before = this.serial.get(name) ?? Promise.resolve();
    const run = before.then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.serial.set(name, tail);
    void tail.then(() => {
      if (this.serial.get(name) === tail) this.serial.delete(name);
    });
    return run;
  }

  /**
   * Close an idle volume — commit what is dirty (fenced by the lock), drop
   * its cache — then let go of what this node holds of it.
   */
  async unload(name: string): Promise<void> {
    const volume = this.volumes.get(name);
    try {
      await volume?.close();
    } catch (err) {
      this.parts.log.error(
        { volume: name, err: (err as Error).message },
        'could not commit the volume before closing it: writes since its last FLUSH are lost',
      );
    }
    this.volumes.delete(name);
    await this.parts.ownership.release(name);
  }

  /** Forget a deleted volume: no longer open, nothing let go of on a timer; its data is going anyway. */
  async forget(name: string): Promise<void> {
    const volume = this.volumes.get(name);
    this.volumes.delete(name);
    this.unavailable.delete(name);
    if (volume) await volume.close().catch(() => undefined);
  }

  /** Nothing is let go of on a timer while `name` is being deleted. */
  stopLingering(name: string): void {
    this.mode.stopLingering(name);
  }

  describeVolume(volume: Volume): string {
    return exportDescription(
      volume.name,
      volume.size,
      volume.identity.encrypted,
      this.parts.ownership.readOnlyReason(volume.name),
    );
  }

  // ------------------------------------------------------- ExportProvider

  async list(): Promise<ExportInfo[]> {
    return [...(await this.mode.exports()), ...(await this.snapshotExports.list())];
  }

  async describe(name: string): Promise<ExportDescription | undefined> {
    if (SnapshotExports.handles(name)) {
      const probe = await this.snapshotExports.open(name);
      await probe?.close();
      return probe;
    }
    const volume = this.volumes.get(name);
    if (!volume) return this.mode.describeUnopened(name);
    const probe = new VolumeExport(
      volume,
      this.describeVolume(volume),
      () => undefined,
      this.readOnly(name),
    );
    await probe.close();
    return probe;
  }

  async open(name: string): Promise<NbdExport | undefined> {
    if (this.closingNow) return undefined;
    if (SnapshotExports.handles(name)) return this.snapshotExports.open(name);
    const volume = await this.mode.volumeFor(name);
    if (!volume) return undefined;
    return new VolumeExport(
      volume,
      this.describeVolume(volume),
      () => this.mode.sessionEnded(name, volume),
      this.readOnly(name),
    );
  }

  private readOnly(name: string): boolean {
    return this.parts.ownership.readOnlyReason(name) !== undefined;
  }

  // ------------------------------------------------------------- closing

  /** No new sessions, nothing let go of on a timer: the node is closing. */
  beginClose(): void {
    this.closingNow = true;
    this.mode.stopLingering();
  }

  /**
   * Wait for every queued open and unload (exclusive()) to finish: an unload
   * whose linger timer fired just before beginClose() still commits through
   * the metadata store, which must not close under it.
   */
  async settle(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.serial.size > 0 && Date.now() < deadline) {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<void>((done) => {
        timer = setTimeout(done, deadline - Date.now());
      });
      await Promise.race([Promise.all([...this.serial.values()]), late]);
      clearTimeout(timer);
    }
    if (this.serial.size > 0)
      this.parts.log.warn(
        { volumes: [...this.serial.keys()] },
        'closing with volume opens or unloads still running (metadata store slow?)',
      );
  }

  /** Close every open volume (after the last flush). */
  async closeVolumes(): Promise<void> {
    await this.snapshotExports.close();
    for (const volume of this.volumes.values()) await volume.close().catch(() => undefined);
  }

  registerGauges(metrics: NodeMetrics): void {
    metrics.gauge('torus_volumes', 'Volumes served by this node', () => this.volumes.size);
  }
}

/** An export's NBD description: "torus volume NAME (SIZE[, encrypted][; read-only: WHY])". */
export function exportDescription(
  name: string,
  size: number,
  encrypted: boolean,
  readOnly?: string,
): string {
  return `torus volume ${name} (${formatSize(size)}${encrypted ? ', encrypted' : ''}${readOnly ? `; read-only: ${readOnly}` : ''})`;
}

/** What opening a version takes: a volume record, or a snapshot's copy of one under its export name. */
export type OpenableVersion = Pick<
  VolumeRecord,
  | 'id'
  | 'name'
  | 'size'
  | 'blockSize'
  | 'encrypted'
  | 'wrappedKey'
  | 'masterKeyFingerprint'
  | 'ancestors'
  | 'generation'
  | 'root'
  | 'mapHeight'
>;

/** A Volume at `version` (its key unwrapped when encrypted), on `services`. */
export async function openVersion(
  version: OpenableVersion,
  keys: KeyRing,
  services: VolumeServices,
): Promise<Volume> {
  const key = version.encrypted ? await keys.unwrap(version) : null;
  return Volume.open(
    {
      id: version.id,
      name: version.name,
      size: version.size,
      blockSize: version.blockSize,
      encrypted: version.encrypted,
      ...(version.ancestors ? { ancestors: version.ancestors } : {}),
    },
    version.generation,
    version.root ?? undefined,
    key,
    services,
    version.mapHeight,
  );
}
