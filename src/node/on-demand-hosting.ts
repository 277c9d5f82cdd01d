/**
 * Cluster hosting: a volume is opened when an NBD client asks for it (so a
 * volume created anywhere after start is served too), taken for this node
 * at that moment (VolumeOwnership): the node whose client came first writes,
 * every other node serves the volume read-only until the writer lets go.
 * The volume stays open while any session is, and for lockLingerMs after the
 * last one closes (a reconnecting client keeps its warm cache); then it is
 * committed, closed and let go of — at once if another node's client asks
 * for it meanwhile (a pod that moved: VolumeOwnership's handover requests).
 *
 * No start-up sweep: this store also holds copies for volumes other nodes
 * write, including versions not committed yet, so freeing by one node's
 * view of committed maps could destroy them; cluster GC (replication/) does
 * it safely.
 */
import { ConflictError, NotFoundError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import type { Watcher } from '../controlplane/metadata/store.js';
import type { VolumeCatalog, VolumeRecord } from '../controlplane/volumes/catalog.js';
import type { ExportInfo } from '../dataplane/nbd/export.js';
import type { ClusterPlacement } from '../dataplane/replication/placement.js';
import type { Volume } from '../dataplane/volume/volume.js';
import { LOCK_TTL_SECONDS, type TakenVolume } from '../controlplane/volumes/ownership.js';
import type { IntentReplication } from './intent-replication.js';
import { MAX_PAYLOAD } from '../dataplane/volume/volume-export.js';
import {
  exportDescription,
  type ExportDescription,
  type HostingMode,
  type VolumeHost,
} from './volume-host.js';

/**
 * How long a node that would serve a volume read-only waits for a writer
 * that does not answer to let go before refusing the open: a dead writer's
 * lock lapses within its lease (LOCK_TTL_SECONDS), and the reader then takes
 * the volume over, so a client arriving just after a writer's death is
 * served, late, rather than refused. The NBD handshake's deadline does not
 * run while the server opens an export (dataplane/nbd/server.ts).
 */
const READER_WAIT_MS = LOCK_TTL_SECONDS * 1000 + 5_000;

export class OnDemandHosting implements HostingMode {
  /** Volumes whose last session closed, waiting lockLingerMs before letting go. */
  private readonly lingering = new Map<string, { timer: NodeJS.Timeout; volume: Volume }>();
  /** Other nodes asking for locks this node holds (VolumeOwnership.watchHandoverRequests). */
  private handoverWatch: Watcher | undefined;
  /** Snapshots and clones asking this node to commit a volume it writes (replicated FLUSH only). */
  private commitWatch: Watcher | undefined;
  /** A pass of adoptOrphans under way. */
  private adopting: Promise<void> | undefined;
  /** Volumes held here whose lock was free at a GC run, since when (adoptOrphans). */
  private readonly orphanedSince = new Map<string, number>();

  constructor(
    private readonly host: VolumeHost,
    private readonly catalog: VolumeCatalog,
    private readonly placement: ClusterPlacement,
    private readonly lockLingerMs: number,
    private readonly log: Logger,
    /** A volume's replicated intent log: taken over when a volume is, and FLUSHes of one written here. */
    private readonly intents: IntentReplication,
  ) {}

  async start(): Promise<void> {
    this.log.info('cluster mode: volumes open when an NBD client asks for one; no start-up sweep');
    this.commitWatch = await this.host.ownership.serveCommitRequests(async (name) => {
      const volume = this.host.volumes.get(name);
      if (!volume) throw new Error('not open here');
      await volume.commit();
      return volume.committedGeneration;
    });
    // A lingering volume another node's client now wants is let go at once.
    this.handoverWatch = await this.host.ownership.watchHandoverRequests((name) => {
      const lingering = this.lingering.get(name);
      if (!lingering) return;
      this.log.info({ volume: name }, 'another node asks for this idle volume: letting go now');
      this.stopLingering(name);
      this.letGo(name, lingering.volume);
    });
  }

  /**
   * Joins the volume already open here if it has sessions or is a lingering
   * writer; otherwise takes the newest committed version (writable with the
   * lock, read-only naming the writer without) and opens it.
   */
  volumeFor(name: string): Promise<Volume | undefined> {
    const { host } = this;
    return host.exclusive(name, async () => {
      if (host.closing) return undefined;
      this.stopLingering(name);
      const loaded = host.volumes.get(name);
      if (loaded) {
        if (loaded.openSessions > 0 || host.ownership.writing(name)) {
          await this.followGrowth(loaded);
          return loaded;
        }
        // An idle reader may be stale (the writer committed since) and the lock
        // may be free by now; a writer whose lock was lost is fenced: reopen.
        await host.unload(name);
      }
      try {
        const taken = await this.takeSeeingFlushes(name);
        if (!taken) return undefined;
        const { record } = taken.versioned;
        this.placement.setVolumeReplication(record.id, record.replication);
        const volume = await host.openVolume(taken.versioned);
        const epoch = host.ownership.lockEpoch(name);
        if (epoch !== undefined && host.ownership.writing(name)) {
          try {
            await this.intents.takeOver(
              volume,
              epoch,
              record.intent,
              await host.dataKey(taken.versioned),
            );
          } catch (err) {
            await volume.close().catch(() => undefined);
            throw err;
          }
        }
        host.volumes.set(name, volume);
        host.unavailable.delete(name);
        return volume;
      } catch (err) {
        await host.ownership.abandon(name);
        host.unavailable.set(name, (err as Error).message);
        throw err;
      }
    });
  }

  /**
   * Take the volume (ownership.take), and when that makes this node a
   * reader of a volume whose writer logs its FLUSHes (replicated intent
   * log), make the version read show every FLUSH the writer acknowledged:
   * ask the writer to commit; if it does not answer (dead, cut off), wait
   * for its lock to lapse and take the volume over (replaying its log).
   * Past READER_WAIT_MS the open is refused, saying why: the last committed
   * version may lack acknowledged FLUSHes, and a reader is never served
   * older data than the writer acknowledged.
   */
  private async takeSeeingFlushes(name: string): Promise<TakenVolume | undefined> {
    const { ownership } = this.host;
    let taken = await ownership.take(name);
    const { intents } = this;
    // No holders named: the writer commits every FLUSH (or has not logged one yet).
    if (!taken?.writer || !taken.versioned.record.intent?.holders.length) return taken;
    const id = taken.versioned.record.id;
    if (await intents.askCommit(taken.writer, id)) {
      await ownership.abandon(name);
      return ownership.take(name);
    }
    const deadline = Date.now() + READER_WAIT_MS;
    while (taken?.readOnly && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      await ownership.abandon(name);
      taken = await ownership.take(name);
    }
    if (taken?.readOnly) {
      const writer = taken.writer;
      await ownership.abandon(name);
      throw new ConflictError(
        `volume "${name}": its writer (node ${writer}) neither commits nor lets go of its lock after ${READER_WAIT_MS / 1000} s, so what it last FLUSHed cannot be shown here; retry, or stop that node's clients`,
      );
    }
    return taken;
  }

  /**
   * A grow is a change of the record only (node/volume-resize.ts): a session
   * joining a volume open here gets the size the record has now.
   */
  private async followGrowth(volume: Volume): Promise<void> {
    try {
      const { record } = await this.catalog.get(volume.name);
      if (record.id === volume.id && record.size > volume.size) volume.grow(record.size);
    } catch (err) {
      this.log.warn(
        { volume: volume.name, err: (err as Error).message },
        'could not read the volume record: the new session gets the size the volume had',
      );
    }
  }

  /**
   * A session of `volume` ended. When it was the last, commit what the
   * sessions wrote now, and let go of the volume (and its lock) after
   * lockLingerMs unless a new session arrives first.
   */
  sessionEnded(name: string, volume: Volume): void {
    const { host } = this;
    if (host.closing || volume.openSessions > 0 || host.volumes.get(name) !== volume) return;
    if (host.ownership.writes(name)) {
      // A commit, not a FLUSH: with the replicated log a FLUSH is not a
      // version, and a writer's clients gone is when readers and replicas
      // should see what it wrote.
      volume
        .commit()
        .catch((err) =>
          this.log.warn(
            { volume: name, err: (err as Error).message },
            'commit after the last session closed failed',
          ),
        );
    }
    const timer = setTimeout(() => {
      if (this.lingering.get(name)?.timer !== timer) return;
      this.lingering.delete(name);
      this.letGo(name, volume);
    }, this.lockLingerMs);
    timer.unref();
    this.lingering.set(name, { timer, volume });
  }

  /** Commit, close and let go of `volume` if it is still the idle one open here. */
  private letGo(name: string, volume: Volume): void {
    const { host } = this;
    host
      .exclusive(name, async () => {
        if (host.volumes.get(name) === volume && volume.openSessions === 0) await host.unload(name);
      })
      .catch((err) =>
        this.log.error(
          { volume: name, err: (err as Error).message },
          'could not close an idle volume',
        ),
      );
  }

  /**
   * Volumes whose FLUSHed records this node's holder log keeps, named by a
   * GC listing: one whose write lock no node has held for `afterMs` — its
   * writer died and nobody opened it since — is taken over here, as an NBD
   * client's open would (its holders' records replayed and committed:
   * volumeFor), and let go at once. Left alone, its records stay live in
   * the holder log, and once the log's ring comes round to them every FLUSH
   * through this holder commits a version instead (docs/cluster-flush.md).
   * Orphaned "since" the first GC run that saw the lock free, so a client
   * reopening the volume elsewhere within `afterMs` gets there first. One
   * volume at a time, one pass at a time; a failure is logged and the
   * volume tried again at a later GC run.
   */
  adoptOrphans(names: readonly string[], afterMs: number): Promise<void> {
    if (this.adopting) return this.adopting;
    this.adopting = this.adoptEach(names, afterMs).finally(() => (this.adopting = undefined));
    return this.adopting;
  }

  private async adoptEach(names: readonly string[], afterMs: number): Promise<void> {
    const { host } = this;
    // Volumes no longer held here are no longer anyone's orphans.
    for (const name of this.orphanedSince.keys())
      if (!names.includes(name)) this.orphanedSince.delete(name);
    for (const name of names) {
      if (host.closing) return;
      try {
        // Open here (this node writes or reads it), or its lock held: its writer lives.
        if (host.volumes.has(name) || (await host.ownership.writtenElsewhere(name)) !== undefined) {
          this.orphanedSince.delete(name);
          continue;
        }
        const since = this.orphanedSince.get(name) ?? Date.now();
        this.orphanedSince.set(name, since);
        if (Date.now() - since < afterMs) continue;
        this.orphanedSince.delete(name);
        this.log.info(
          { volume: name, orphanedForS: Math.round((Date.now() - since) / 1000) },
          'taking over a volume whose writer is gone, to commit the FLUSHes this node holds of it',
        );
        const volume = await this.volumeFor(name);
        if (volume && volume.openSessions === 0 && !this.lingering.has(name)) {
          this.log.info({ volume: name }, 'volume committed for its gone writer: letting it go');
          this.letGo(name, volume);
        }
      } catch (err) {
        this.log.warn(
          { volume: name, err: (err as Error).message },
          'could not take over a volume whose writer is gone: tried again at a later GC run',
        );
      }
    }
  }

  async created(): Promise<void> {
    // Opened when a client asks for it.
  }

  /** Every volume of the cluster, open here or not. */
  async exports(): Promise<ExportInfo[]> {
    return (await this.catalog.list()).map((record) => {
      const volume = this.host.volumes.get(record.name);
      return {
        name: record.name,
        description: volume
          ? this.host.describeVolume(volume)
          : exportDescription(record.name, record.size, record.encrypted),
      };
    });
  }

  /** NBD_OPT_INFO on a volume not open here: its record, and whether another node holds its write lock. */
  async describeUnopened(name: string): Promise<ExportDescription | undefined> {
    let record: VolumeRecord;
    try {
      record = (await this.catalog.get(name)).record;
    } catch (err) {
      if (err instanceof NotFoundError) return undefined;
      throw err;
    }
    const readOnly = await this.host.ownership.writtenElsewhere(name);
    return {
      name,
      description: exportDescription(name, record.size, record.encrypted, readOnly),
      size: record.size,
      readOnly: readOnly !== undefined,
      minimumBlockSize: 1,
      preferredBlockSize: record.blockSize,
      maximumPayload: MAX_PAYLOAD,
      canMultiConn: true,
    };
  }

  stopLingering(name?: string): void {
    for (const [volume, { timer }] of this.lingering) {
      if (name !== undefined && volume !== name) continue;
      clearTimeout(timer);
      this.lingering.delete(volume);
    }
    if (name === undefined) {
      // The node is closing: no more handovers.
      void this.handoverWatch?.close().catch(() => undefined);
      this.handoverWatch = undefined;
      void this.commitWatch?.close().catch(() => undefined);
      this.commitWatch = undefined;
    }
  }
}
