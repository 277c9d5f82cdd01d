/**
 * SnapshotExports: snapshots served read-only over NBD as `VOLUME@SNAPSHOT`.
 *
 * A snapshot export is a Volume opened at the snapshot's version (its map
 * root, generation and lineage; the volume's key if encrypted), read-only:
 * the NBD layer refuses writes, trims and zeroing, and nothing it holds is
 * ever committed. One Volume is shared by every session of the same
 * snapshot and closed (its cache slots dropped) after the last one ends.
 * It works the same on a single node and in a cluster (blocks a node does
 * not hold come from their replicas, as for any volume).
 */
import { IoError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import {
  isSnapshotName,
  parseSnapshotName,
  type SnapshotCatalog,
  type SnapshotRecord,
  type VersionedSnapshot,
} from '../controlplane/volumes/snapshots.js';
import type { ReadPin } from '../controlplane/volumes/read-pins.js';
import type { KeyRing } from '../dataplane/crypto/key-ring.js';
import type { ExportInfo, NbdExport } from '../dataplane/nbd/export.js';
import type { Volume, VolumeServices } from '../dataplane/volume/volume.js';
import { VolumeExport } from '../dataplane/volume/volume-export.js';
import { sameMapRoot } from '../model/map-root.js';
import { exportDescription, openVersion } from './volume-host.js';

interface Served {
  volume: Volume;
  snapshot: VersionedSnapshot;
  /** In a cluster: the pin that keeps this version's blocks while it is served. */
  pin?: ReadPin;
}

/** Pins a snapshot while it is served (VolumeOwnership.pinSnapshot); undefined where no pin is needed. */
export type SnapshotPinner = (
  volume: string,
  snapshot: string,
) => Promise<{ pin: ReadPin; snapshot: SnapshotRecord } | undefined>;

export class SnapshotExports {
  /** Open snapshot volumes by export name. */
  private readonly served = new Map<string, Promise<Served>>();

  constructor(
    private readonly snapshots: SnapshotCatalog,
    private readonly keys: KeyRing,
    private readonly services: VolumeServices,
    private readonly log: Logger,
    private readonly pinner: SnapshotPinner = async () => undefined,
  ) {}

  /** Is `name` a snapshot's export name (VOLUME@SNAPSHOT)? */
  static handles(name: string): boolean {
    return isSnapshotName(name);
  }

  /** Open sessions of snapshot `volume@snapshot` here. */
  sessionsOf(exportName: string): number {
    return this.opened.get(exportName)?.openSessions ?? 0;
  }

  private readonly opened = new Map<string, Volume>();

  async open(exportName: string): Promise<NbdExport | undefined> {
    const found = await this.find(exportName);
    if (!found) return undefined;
    let pending = this.served.get(exportName);
    const current = pending ? await pending.catch(() => undefined) : undefined;
    // A snapshot deleted and taken again under the same name is another version.
    if (!current || !sameMapRoot(current.snapshot.record.root, found.record.root)) {
      pending = this.openVolume(exportName, found);
      this.served.set(exportName, pending);
    }
    const { volume } = await pending!;
    this.opened.set(exportName, volume);
    return new VolumeExport(
      volume,
      exportDescription(exportName, volume.size, volume.identity.encrypted, 'a snapshot'),
      () => this.sessionEnded(exportName, volume),
      true,
    );
  }

  /** Every snapshot, for NBD_OPT_LIST. */
  async list(): Promise<ExportInfo[]> {
    return (await this.snapshots.listAll()).map((s) => ({
      name: `${s.volume}@${s.name}`,
      description: exportDescription(`${s.volume}@${s.name}`, s.size, s.encrypted, 'a snapshot'),
    }));
  }

  private async find(exportName: string): Promise<VersionedSnapshot | undefined> {
    let parsed;
    try {
      parsed = parseSnapshotName(exportName);
    } catch {
      return undefined;
    }
    return this.snapshots.get(parsed.volume, parsed.snapshot).catch(() => undefined);
  }

  private async openVolume(exportName: string, snapshot: VersionedSnapshot): Promise<Served> {
    const { volume: volumeName, snapshot: snapshotName } = parseSnapshotName(exportName);
    const pinned = await this.pinner(volumeName, snapshotName);
    // The pinned record is the one served: the snapshot as it was when pinned.
    const record = pinned?.snapshot ?? snapshot.record;
    try {
      return { volume: await this.openPinned(exportName, record), snapshot, pin: pinned?.pin };
    } catch (err) {
      await pinned?.pin.release();
      throw err;
    }
  }

  private async openPinned(exportName: string, record: SnapshotRecord): Promise<Volume> {
    // No intent log: a snapshot is never written, and its id is its volume's (the log's key).
    const { intentLog: _log, ...shared } = this.services;
    const services: VolumeServices = {
      ...shared,
      commit: () =>
        Promise.reject(new IoError('EPERM', `${exportName} is a snapshot: it is never written`)),
    };
    const volume = await openVersion(
      { ...record, id: record.volumeId, name: exportName },
      this.keys,
      services,
    );
    this.log.info(
      { snapshot: exportName, generation: record.generation },
      'serving a snapshot read-only',
    );
    return volume;
  }

  private sessionEnded(exportName: string, volume: Volume): void {
    if (volume.openSessions > 0) return;
    if (this.opened.get(exportName) === volume) this.opened.delete(exportName);
    const pending = this.served.get(exportName);
    this.served.delete(exportName);
    void pending
      ?.then(async ({ volume: served, pin }) => {
        if (served !== volume) return;
        await volume.close();
        await pin?.release();
      })
      .catch(() => undefined);
  }

  /** Close every snapshot volume (the node is closing). */
  async close(): Promise<void> {
    for (const pending of this.served.values()) {
      const served = await pending.catch(() => undefined);
      await served?.volume.close().catch(() => undefined);
      await served?.pin?.release();
    }
    this.served.clear();
    this.opened.clear();
  }
}
