/**
 * PeerTable: this process's view of the cluster — every live registration
 * (`nodes/`) and the ring (`ring`) — kept current by watches.
 *
 * Loading is one read of both at a single revision R, then watches from
 * R + 1, so no change is missed or seen twice. A key's event older than what
 * the table holds for it is ignored. When a watch ends on its own (etcd
 * compacted the history it needed while reconnecting), the table reloads and
 * emits the differences, retrying with a capped backoff.
 *
 * Events:
 *   'peer-up'     (info: PeerInfo)                          a node registered
 *   'peer-update' (info: PeerInfo, previous: PeerInfo)      a node reported again
 *   'peer-down'   (uuid: string, last: PeerInfo)            a registration ended (left, or lease expired)
 *   'ring'        (ring: RingDescription | undefined, previous: RingDescription | undefined)
 *   'change'      ()                                        after any of the above
 */
import { EventEmitter } from 'node:events';
import { logger, type Logger } from '../../common/log.js';
import type { MetadataStore, Watcher, WatchEvent } from '../metadata/store.js';
import type { RingDescription } from '../../model/ring/ring.js';
import { decodePeerInfo, NODES_PREFIX, type PeerInfo } from './peer-info.js';
import { decodeRing, RING_KEY, type StoredRing } from './ring-store.js';

const RESYNC_FIRST_MS = 250;
const RESYNC_MAX_MS = 5000;

export interface MembershipSnapshot {
  /** The store revision both reads were made at. */
  revision: number;
  peers: Map<string, { info: PeerInfo; modRevision: number }>;
  ring: StoredRing | undefined;
}

/**
 * Read every registration and the ring at one revision. Unreadable
 * registrations are skipped (and logged): one bad value must not hide the
 * rest of the cluster.
 */
export async function readMembership(
  meta: MetadataStore,
  log: Logger = logger('membership'),
): Promise<MembershipSnapshot> {
  const result = await meta.txn({
    compare: [],
    success: [
      { type: 'get', key: NODES_PREFIX, prefix: true },
      { type: 'get', key: RING_KEY },
    ],
  });
  const [nodes, ring] = result.results;
  if (nodes?.type !== 'get' || ring?.type !== 'get')
    throw new Error('membership read: unexpected txn results');
  const peers: MembershipSnapshot['peers'] = new Map();
  for (const kv of nodes.kvs) {
    try {
      const info = decodePeerInfo(kv);
      peers.set(info.uuid, { info, modRevision: kv.modRevision });
    } catch (err) {
      log.warn({ key: kv.key, err: (err as Error).message }, 'skipping unreadable registration');
    }
  }
  const ringKv = ring.kvs[0];
  return {
    revision: result.revision,
    peers,
    ring: ringKv
      ? { description: decodeRing(ringKv.value), modRevision: ringKv.modRevision }
      : undefined,
  };
}

/** How a node stands: in the ring and alive, alive only, or in the ring with no live registration. */
export type MemberStatus = 'OK' | 'Avail' | 'DOWN';

export interface MemberRow {
  uuid: string;
  status: MemberStatus;
  /** The live registration; absent for DOWN. */
  peer?: PeerInfo;
  /** The ring weight; absent for Avail. */
  weight?: number;
}

/** Every live node and every ring member, once each: live nodes by address then uuid, then DOWN members. */
export function memberRows(
  peers: Iterable<PeerInfo>,
  ring: RingDescription | undefined,
): MemberRow[] {
  const weights = new Map((ring?.members ?? []).map((m) => [m.uuid, m.weight]));
  const live = [...peers].sort(
    (a, b) => a.address.localeCompare(b.address) || a.uuid.localeCompare(b.uuid),
  );
  const rows: MemberRow[] = live.map((peer) => {
    const weight = weights.get(peer.uuid);
    return weight === undefined
      ? { uuid: peer.uuid, status: 'Avail', peer }
      : { uuid: peer.uuid, status: 'OK', peer, weight };
  });
  const liveIds = new Set(live.map((p) => p.uuid));
  for (const m of ring?.members ?? []) {
    if (!liveIds.has(m.uuid)) rows.push({ uuid: m.uuid, status: 'DOWN', weight: m.weight });
  }
  return rows;
}

export class PeerTable extends EventEmitter {
  private peerMap = new Map<string, { info: PeerInfo; modRevision: number }>();
  private stored: StoredRing | undefined;
  private loadedAt = 0;
  private watchers: Watcher[] = [];
  private closed = false;
  private resyncTimer: NodeJS.Timeout | undefined;
  private resyncDelayMs = RESYNC_FIRST_MS;

  private constructor(
    private readonly meta: MetadataStore,
    private readonly log: Logger,
  ) {
    super();
  }

  static async open(meta: MetadataStore, options: { log?: Logger } = {}): Promise<PeerTable> {
    const table = new PeerTable(meta, options.log ?? logger('membership'));
    await table.load();
    return table;
  }

  /** The store revision of the last full load. */
  get revision(): number {
    return this.loadedAt;
  }

  peers(): PeerInfo[] {
    return [...this.peerMap.values()].map((p) => p.info);
  }

  peer(uuid: string): PeerInfo | undefined {
    return this.peerMap.get(uuid)?.info;
  }

  ring(): RingDescription | undefined {
    return this.stored?.description;
  }

  rows(): MemberRow[] {
    return memberRows(this.peers(), this.ring());
  }

  private async load(): Promise<void> {
    const snapshot = await readMembership(this.meta, this.log);
    if (this.closed) return;
    this.applySnapshot(snapshot);
    const from = snapshot.revision + 1;
    const onError = (err: Error) => this.onWatchError(err);
    const watchers: Watcher[] = [];
    try {
      watchers.push(
        await this.meta.watchPrefix(NODES_PREFIX, { fromRevision: from, onError }, (e) =>
          this.onNodeEvent(e),
        ),
      );
      watchers.push(
        await this.meta.watchPrefix(RING_KEY, { fromRevision: from, onError }, (e) =>
          this.onRingEvent(e),
        ),
      );
    } catch (err) {
      await Promise.all(watchers.map((w) => w.close()));
      throw err;
    }
    if (this.closed) {
      await Promise.all(watchers.map((w) => w.close()));
      return;
    }
    this.watchers = watchers;
  }

  /** Replace the state with `snapshot`, emitting what differs. */
  private applySnapshot(snapshot: MembershipSnapshot): void {
    const before = this.peerMap;
    this.peerMap = snapshot.peers;
    this.loadedAt = snapshot.revision;
    let changed = false;
    for (const [uuid, { info }] of snapshot.peers) {
      const old = before.get(uuid);
      if (!old) this.emit('peer-up', info);
      else if (old.modRevision !== snapshot.peers.get(uuid)!.modRevision)
        this.emit('peer-update', info, old.info);
      changed ||= !old || old.modRevision !== snapshot.peers.get(uuid)!.modRevision;
    }
    for (const [uuid, old] of before) {
      if (!snapshot.peers.has(uuid)) {
        this.emit('peer-down', uuid, old.info);
        changed = true;
      }
    }
    const previous = this.stored;
    this.stored = snapshot.ring;
    if (previous?.modRevision !== snapshot.ring?.modRevision) {
      this.emit('ring', snapshot.ring?.description, previous?.description);
      changed = true;
    }
    if (changed) this.emit('change');
  }

  private onNodeEvent(event: WatchEvent): void {
    if (this.closed) return;
    const uuid = event.key.slice(NODES_PREFIX.length);
    const old = this.peerMap.get(uuid);
    if (old && event.modRevision <= old.modRevision) return;
    if (event.type === 'delete') {
      if (!old) return;
      this.peerMap.delete(uuid);
      this.emit('peer-down', uuid, old.info);
      this.emit('change');
      return;
    }
    let info: PeerInfo;
    try {
      info = decodePeerInfo(event);
    } catch (err) {
      this.log.warn(
        { key: event.key, err: (err as Error).message },
        'ignoring unreadable registration',
      );
      return;
    }
    this.peerMap.set(uuid, { info, modRevision: event.modRevision });
    if (old) this.emit('peer-update', info, old.info);
    else this.emit('peer-up', info);
    this.emit('change');
  }

  private onRingEvent(event: WatchEvent): void {
    if (this.closed || event.key !== RING_KEY) return;
    const previous = this.stored;
    if (previous && event.modRevision <= previous.modRevision) return;
    if (event.type === 'delete') {
      this.stored = undefined;
    } else {
      try {
        this.stored = { description: decodeRing(event.value), modRevision: event.modRevision };
      } catch (err) {
        this.log.error(
          { err: (err as Error).message, revision: event.modRevision },
          'ignoring an invalid ring description',
        );
        return;
      }
    }
    this.emit('ring', this.stored?.description, previous?.description);
    this.emit('change');
  }

  private onWatchError(err: Error): void {
    if (this.closed || this.resyncTimer) return;
    this.log.warn({ err: err.message }, 'membership watch ended; reloading');
    this.scheduleResync(0);
  }

  private scheduleResync(delayMs: number): void {
    this.resyncTimer = setTimeout(() => {
      const old = this.watchers;
      this.watchers = [];
      Promise.all(old.map((w) => w.close()))
        .then(() => this.load())
        .then(
          () => {
            this.resyncTimer = undefined;
            this.resyncDelayMs = RESYNC_FIRST_MS;
          },
          (e: Error) => {
            if (this.closed) return;
            this.log.warn(
              { err: e.message, retryInMs: this.resyncDelayMs },
              'membership reload failed; will retry',
            );
            const delay = this.resyncDelayMs;
            this.resyncDelayMs = Math.min(this.resyncDelayMs * 2, RESYNC_MAX_MS);
            this.scheduleResync(delay);
          },
        );
    }, delayMs).unref();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.resyncTimer);
    const watchers = this.watchers;
    this.watchers = [];
    await Promise.all(watchers.map((w) => w.close()));
  }
}
