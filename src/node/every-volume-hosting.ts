/**
 * Single-node hosting: every volume of the catalog is opened at start and
 * stays open; a volume created later is opened at once.
 *
 * Start-up order matters for safety: every volume's committed map is loaded
 * and verified, and only when all of them loaded are blocks no version
 * references swept away (LocalGc, with snapshots and clones). A volume that
 * can't be loaded (missing key, damaged map) disables the sweep rather than
 * letting it free that volume's blocks.
 */
import type { Logger } from '../common/log.js';
import type { VolumeCatalog } from '../controlplane/volumes/catalog.js';
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
  ) {}

  async start(): Promise<void> {
    const { unavailable } = this.host;
    for (const record of await this.catalog.list()) {
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

  private async load(name: string): Promise<void> {
    const versioned = await this.catalog.get(name);
    this.host.ownership.adopt(name, versioned);
    this.host.volumes.set(name, await this.host.openVolume(versioned));
  }
}
