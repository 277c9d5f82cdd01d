/**
 * Single-node hosting: every volume of the catalog is opened at start and
 * stays open; a volume created later is opened at once.
 *
 * Start-up order matters for safety: every volume's committed map is loaded
 * and verified, and only when all of them loaded are blocks no version
 * references swept away (LocalGc, with snapshots and clones). A volume that
 * can't be loaded (missing key, damaged map) disables the sweep rather than
 * letting it free that volume's blocks.
 *
 * Before the sweep and before serving, the intent log is replayed: each
 * volume gets the FLUSHed bytes its committed version lacks, committed as a
 * new version, then the log starts a new epoch. A volume that has records
 * but could not be loaded keeps the log as it is for a later start (FLUSH
 * commits whole versions meanwhile).
 */
import type { Logger } from '../common/log.js';
import type { IntentLog } from '../dataplane/intent-log/intent-log.js';
import { replayInto } from '../dataplane/intent-log/replay.js';
import type { VolumeCatalog, VolumeRecord } from '../controlplane/volumes/catalog.js';
import type { ExportInfo } from '../dataplane/nbd/export.js';
import type { Volume } from '../dataplane/volume/volume.js';
import type { LocalGc } from './local-gc.js';
import type { ExportDescription, HostingMode, VolumeHost } from './volume-host.js';

export class EveryVolumeHosting implements HostingMode {
  constructor(
    private readonly host: VolumeHost,
    private readonly catalog: VolumeCatalog,
    private readonly gc: LocalGc,
    private readonly log: Logger,
    private readonly intentLog: IntentLog | undefined,
  ) {}

  async start(): Promise<void> {
    const { unavailable } = this.host;
    const records = await this.catalog.list();
    for (const record of records) {
      try {
        await this.load(record.name);
      } catch (err) {
        unavailable.set(record.name, (err as Error).message);
        this.log.error(
          { volume: record.name, err: (err as Error).message },
          'volume could not be loaded; it will not be served',
        );
      }
    }
    if (this.intentLog) await this.replay(this.intentLog, records);
    if (unavailable.size > 0) {
      this.log.warn(
        { volumes: [...unavailable.keys()] },
        'skipping the sweep of unreferenced blocks while some volumes are unavailable',
      );
      return;
    }
    await this.gc.run({ atStart: true });
  }

  async volumeFor(name: string): Promise<Volume | undefined> {
    return this.host.volumes.get(name);
  }

  sessionEnded(): void {
    // Volumes stay open for the node's life.
  }

  created(name: string): Promise<void> {
    return this.load(name);
  }

  async exports(): Promise<ExportInfo[]> {
    return [...this.host.volumes.values()].map((v) => ({
      name: v.name,
      description: this.host.describeVolume(v),
    }));
  }

  async describeUnopened(): Promise<ExportDescription | undefined> {
    return undefined; // every volume there is, is open
  }

  stopLingering(): void {
    // Nothing lingers.
  }

  /** Replay the intent log into the volumes it has records of, then start its next epoch. */
  private async replay(intentLog: IntentLog, records: readonly VolumeRecord[]): Promise<void> {
    const logged = new Set(intentLog.recovered.map((r) => r.volumeId));
    let applied = 0;
    for (const record of records) {
      if (!logged.has(record.id)) continue;
      const volume = this.host.volumes.get(record.name);
      if (!volume) {
        intentLog.keepForLater(
          `volume ${record.name} has flushed data in the log but could not be loaded`,
        );
        return;
      }
      // A failure here fails the start: serving the volume without its flushed data would lose it.
      const dataKey = await this.host.dataKey(await this.catalog.get(record.name));
      const target = {
        id: volume.id,
        name: volume.name,
        size: volume.size,
        committedGeneration: volume.committedGeneration,
        dataKey,
        write: (offset: number, data: Buffer) => volume.write(offset, data, false),
        zeroRange: (offset: number, length: number) => volume.zeroRange(offset, length, false),
        commit: () => volume.commit(),
      };
      applied += await replayInto(
        target,
        intentLog.recovered,
        (r) => intentLog.recordContent(r),
        this.log,
      );
    }
    if (applied > 0)
      this.log.info(
        { records: applied, volumes: logged.size },
        'intent log replayed and committed',
      );
    await intentLog.startAfterReplay();
  }

  private async load(name: string): Promise<void> {
    const versioned = await this.catalog.get(name);
    this.host.ownership.adopt(name, versioned);
    this.host.volumes.set(name, await this.host.openVolume(versioned));
  }
}
