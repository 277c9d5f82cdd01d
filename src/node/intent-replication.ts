/**
 * IntentReplication: a cluster node's part in the replicated intent log
 * (docs/cluster-flush.md) as a volume's writer. When this node takes a
 * volume's write lock (epoch T), before the volume is served:
 *
 *   1. The record names the holders of the last writer's records (its
 *      IntentState). Seal them at T, one after another, until one answers:
 *      from then on it refuses appends below T, and it hands back what it
 *      holds. One answer is enough — a FLUSH was acknowledged only once
 *      every holder had its records, and a sealed holder refuses the rest.
 *      None answers: the volume is not served (its last acknowledged
 *      writes cannot be proven present).
 *   2. Replay, in (epoch, seq) order, the records the version does not hold.
 *   3. Choose this writer's holders: this node and the next R − 1 live
 *      nodes of the ring for the volume; FLUSHes append there from now on.
 *      A node that does not log its FLUSHes (--commit-every-flush, or no
 *      holder log) chooses none: each of its FLUSHes commits.
 *   4. Commit: the record says the new holders and that it holds every
 *      record below epoch T (a commit even with nothing replayed). Only
 *      then is the volume served. Old holders drop what they held.
 *
 * Steps 1, 2 and 4 run on every cluster node, whether or not it logs its
 * own FLUSHes: a node that took a volume over without replaying would lose
 * acknowledged FLUSHes, and one that committed without moving the bound
 * would leave old records for a later writer to replay over newer data.
 *
 * A crash anywhere before 4 leaves the record as it was: the next writer
 * seals the same holders again (sealing is idempotent) and replays again
 * (records set bytes to what they were at capture: replaying twice is
 * replaying once).
 */
import { assert } from '../common/assert.js';
import { IoError } from '../common/errors.js';
import type { Logger } from '../common/log.js';
import { heldByVersion, type IntentState } from '../model/intent-state.js';
import type { Hasher } from '../dataplane/blocks/hash.js';
import type { HolderLog } from '../dataplane/intent-log/holder-log.js';
import type { IntentChannel } from '../dataplane/intent-log/replicated-intents.js';
import { IntentSealer } from '../dataplane/intent-log/seal.js';
import type { PeerClient } from '../dataplane/peer/client.js';
import {
  INTENT_SEALED,
  INTENT_ZEROS,
  decodeIntentRecord,
  intentAad,
  intentRecordIntact,
  type IntentCovered,
  type IntentRecord,
  type IntentSealPage,
  type IntentSealReply,
} from '../dataplane/peer/wire.js';
import type { ClusterBlocks } from '../dataplane/replication/cluster-blocks.js';
import type { Volume } from '../dataplane/volume/volume.js';

/** How long a reader waits for the writer's commit before waiting for its lock to lapse instead. */
const COMMIT_ASK_TIMEOUT_MS = 5_000;
/** A seal's deadline per holder page: an fdatasync of the seals file and a read of what is held. */
const SEAL_TIMEOUT_MS = 10_000;

export interface IntentReplicationParts {
  /** This node's uuid. */
  self: string;
  /** This node's holder log: its own records and other writers'; undefined with no intent log. */
  holder: HolderLog | undefined;
  /** Whether this node's writers log their FLUSHes (holders chosen) or commit each (none). */
  logFlushes: boolean;
  cluster: ClusterBlocks;
  hash: Hasher;
  log: Logger;
}

export class IntentReplication {
  constructor(private readonly parts: IntentReplicationParts) {}

  /**
   * Take the volume over as its writer at lock epoch `token` (steps 1-4
   * above); `opened` is the intent state of the record the volume was opened
   * from, `dataKey` its key when encrypted. Rejects, with nothing served,
   * when no holder of the last writer's records answers.
   */
  async takeOver(
    volume: Volume,
    token: number,
    opened: IntentState | undefined,
    dataKey: Uint8Array | null,
  ): Promise<void> {
    const { log } = this.parts;
    let replayed = 0;
    // No holders named: the last writer committed every FLUSH, nothing is logged.
    if (opened && opened.holders.length > 0) {
      const records = await this.sealAny(opened, volume, token);
      replayed = await this.replay(volume, records, opened, dataKey);
    }
    const logging = this.parts.logFlushes && this.parts.holder !== undefined;
    const holders = logging ? this.chooseHolders(volume.id) : [];
    if (logging) {
      volume.replicateFlushes(
        {
          token,
          holders,
          rechoose: (failed) => this.chooseHolders(volume.id, failed),
          hash: this.parts.hash,
          log: log.child({ component: 'intents' }),
        },
        opened,
      );
    } else if (opened) {
      volume.holdIntentsBelow(token);
    }
    await volume.commit();
    if (logging || replayed > 0)
      log.info(
        { volume: volume.name, epoch: token, holders: holders.map((h) => h.node), replayed },
        logging
          ? 'FLUSH goes to the replicated intent log'
          : 'intent records replayed; FLUSH commits a version here (--commit-every-flush)',
      );
    // What the old holders kept is all in the version now (best effort: it only costs them space).
    const covered = { volumeId: volume.id, token, seq: 1 };
    for (const node of opened?.holders ?? [])
      if (!holders.some((h) => h.node === node))
        this.channelFor(node)
          ?.covered(covered)
          .catch(() => undefined);
  }

  /**
   * Ask `writer` (another node, holding the volume's lock) to commit what it
   * has FLUSHed, before this node serves the volume read-only: with the
   * replicated log a FLUSH is not a commit, and a reader elsewhere sees
   * committed versions only. False when it did not answer in time (the
   * reader then waits for the writer's lock to lapse and takes the volume
   * over: node/on-demand-hosting.ts).
   */
  async askCommit(writer: string, volumeId: number): Promise<boolean> {
    const at = this.parts.cluster.placement.peerIndex(writer);
    if (at === undefined) return false;
    try {
      await this.client(at).commitVolume(volumeId, { timeoutMs: COMMIT_ASK_TIMEOUT_MS });
      return true;
    } catch (err) {
      this.parts.log.warn(
        { volumeId, writer, err: (err as Error).message },
        "the volume's writer did not commit for this reader: waiting for its lock to lapse (a dead writer's) to take its log over",
      );
      return false;
    }
  }

  /**
   * A channel to every holder the volume's writer appends to: this node
   * first, then R − 1 live peers in the ring's order for the volume (its
   * spares when one of those is `exclude`, a holder that just failed).
   */
  private chooseHolders(volumeId: number, exclude?: string): IntentChannel[] {
    const { placement } = this.parts.cluster;
    const wanted = placement.replicationOf(volumeId);
    const channels: IntentChannel[] = [this.localChannel()];
    const targets = placement.writeTargets(volumeId, 0);
    for (const at of [...targets.remote, ...targets.spare]) {
      if (channels.length >= wanted) break;
      const uuid = placement.peers[at].uuid;
      if (uuid !== exclude) channels.push(this.peerChannel(uuid, at));
    }
    return channels;
  }

  private channelFor(node: string): IntentChannel | undefined {
    if (node === this.parts.self) return this.parts.holder ? this.localChannel() : undefined;
    const at = this.parts.cluster.placement.peerIndex(node);
    return at === undefined ? undefined : this.peerChannel(node, at);
  }

  private localChannel(): IntentChannel {
    const { holder, self } = this.parts;
    assert(holder !== undefined, 'a local intent channel without a holder log');
    return {
      node: self,
      append: (records) => holder.append(records, { checked: true }),
      covered: (covered) => holder.covered(covered),
    };
  }

  private peerChannel(node: string, at: number): IntentChannel {
    const client = this.client(at);
    return {
      node,
      append: (records, timeoutMs) =>
        client.appendIntents(
          records.map((r) => r.bytes),
          { timeoutMs },
        ),
      covered: (covered: IntentCovered) => client.intentsCovered(covered),
    };
  }

  private client(at: number): PeerClient {
    const { cluster } = this.parts;
    return cluster.clientFor(cluster.placement.peers[at]);
  }

  /** Seal the holders of `opened` at `token`, in turn, until one answers with records that check. */
  private async sealAny(
    opened: IntentState,
    volume: Volume,
    token: number,
  ): Promise<IntentRecord[]> {
    const { self, log } = this.parts;
    const volumeId = volume.id;
    // Ourselves first (no network), then the others in the record's order.
    const order = [...opened.holders].sort((a, b) => Number(b === self) - Number(a === self));
    const failures: string[] = [];
    for (const node of order) {
      try {
        const records = await this.sealAll(node, volumeId, token);
        const bad = records.find((r) => !intentRecordIntact(r, this.parts.hash));
        if (bad) throw new Error(`record ${bad.token}/${bad.seq} does not match its checksum`);
        log.info({ volumeId, holder: node, records: records.length }, 'intent log sealed');
        return records;
      } catch (err) {
        failures.push(`${node}: ${(err as Error).message}`);
        log.warn(
          { volumeId, holder: node, err: (err as Error).message },
          'intent holder did not answer the seal',
        );
      }
    }
    throw new IoError(
      'EIO',
      `volume ${volume.name}: its last FLUSHed writes are on the intent holders ${opened.holders.join(', ')}, none of which answered (${failures.join('; ')}); not served until one does (if they are gone for good: torusctl volume forget-log ${volume.name} --lose-flushed-writes)`,
    );
  }

  /** Every page of one holder's answer to a seal at `token`. */
  private async sealAll(node: string, volumeId: number, token: number): Promise<IntentRecord[]> {
    const { holder, self, cluster } = this.parts;
    let page: (skip: number) => Promise<IntentSealReply>;
    if (node === self) {
      if (!holder) throw new Error('no holder log on this node (--intent-log-size 0)');
      page = async (skip) => decodePage(await holder.seal({ volumeId, token, skip }));
    } else {
      const at = cluster.placement.peerIndex(node);
      if (at === undefined) throw new Error('not a known node');
      const client = this.client(at);
      page = (skip) =>
        client.sealIntents({ volumeId, token, skip }, { timeoutMs: SEAL_TIMEOUT_MS });
    }
    const records: IntentRecord[] = [];
    for (;;) {
      const reply = await page(records.length);
      records.push(...reply.records);
      if (!reply.more) return records;
      if (reply.records.length === 0)
        throw new Error('a seal page with no records and more to come');
    }
  }

  /** Apply the records `opened` does not hold, in (epoch, seq) order, each once; returns how many. */
  private async replay(
    volume: Volume,
    records: IntentRecord[],
    opened: IntentState,
    dataKey: Uint8Array | null,
  ): Promise<number> {
    const wanted = records
      .filter((r) => r.volumeId === volume.id && !heldByVersion(opened, r.token, r.seq))
      .sort((a, b) => a.token - b.token || a.seq - b.seq)
      .filter((r, i, all) => i === 0 || r.token !== all[i - 1].token || r.seq !== all[i - 1].seq);
    let sealer: IntentSealer | undefined;
    for (const r of wanted) {
      if (r.offset + r.length > volume.size) {
        this.parts.log.warn(
          { volume: volume.name, offset: r.offset, length: r.length, size: volume.size },
          'intent record past the end of the volume skipped',
        );
        continue;
      }
      if (r.flags === INTENT_ZEROS) {
        await volume.zeroRange(r.offset, r.length, false);
      } else if (r.flags === INTENT_SEALED) {
        if (!dataKey)
          throw new IoError(
            'EIO',
            `volume ${volume.name}: sealed intent records but no volume key`,
          );
        sealer ??= new IntentSealer(dataKey);
        const plain = sealer.open(
          r.payload,
          intentAad(r.bytes, 0),
          `volume ${volume.name} offset ${r.offset}`,
        );
        await volume.write(r.offset, plain, false);
      } else {
        await volume.write(r.offset, r.payload, false);
      }
    }
    return wanted.length;
  }
}

function decodePage(page: IntentSealPage): IntentSealReply {
  return {
    records: page.records.map((bytes) => decodeIntentRecord(bytes, 0, bytes.length)),
    more: page.more,
  };
}
