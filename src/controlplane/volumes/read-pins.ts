/**
 * Read pins: a node serving a volume read-only keeps the version it opened
 * (it does not follow the writer's commits under its clients' feet), and
 * says so in the metadata store, so cluster GC keeps that version's blocks
 * until the node lets go.
 *
 * A pin is one key, `pins/volumes/<name>/<node>.<random>`, attached to a
 * lease of its own (kept alive; revoked on release), holding the pinned
 * version: volume id, generation, map root, size and block size — all GC
 * needs to load that version's map.
 *
 * Why it is safe (a hazard-pointer protocol): the reader puts its pin, then
 * reads the volume record again; it serves the version only if the record
 * still names it, and otherwise moves the pin to the newer version and
 * checks again. GC lists the catalog first and the pins after. If a GC run
 * frees a block only version G references, its catalog listing saw a commit
 * after G, so that commit came before its pin listing; a reader that
 * checked "G is current" after putting its pin did so before that commit,
 * so its pin was in place before GC listed pins, and GC saw it.
 *
 * A pin whose lease is lost (the store unreachable for its TTL) is put again
 * under a new lease; in the gap a GC run may free blocks of the pinned
 * version that newer versions do not reference, and the reader's reads of
 * them then fail with EIO — never with other data, since every block is
 * checked against its hash.
 */
import { randomBytes } from 'node:crypto';
import { ConflictError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import type { Lease, MetadataStore } from '../metadata/store.js';
import { sameMapRoot, type MapRoot } from '../../model/map-root.js';
import type { VersionedRecord, VolumeCatalog, VolumeRecord } from './catalog.js';

const PINS = 'pins/volumes/';

/** A version of a volume a node serves read-only, as GC reads it back. */
export interface PinnedVersion {
  /** The node serving it. */
  node: string;
  volume: string;
  id: number;
  generation: number;
  root: MapRoot | null;
  size: number;
  blockSize: number;
  /** The height of the tree `root` tops, when the record says (VolumeRecord.mapHeight). */
  mapHeight?: number;
  /** When the node pinned it (ISO 8601). */
  since: string;
}

/** How often a reader re-reads the record when the writer commits between its pin and its check. */
const MAX_PIN_ATTEMPTS = 10;
/** Back-off between attempts to put a pin again after its lease was lost. */
const REPIN_DELAY_MS = 1000;

function pinValue(node: string, record: VolumeRecord, since: string): Buffer {
  const pinned: PinnedVersion = {
    node,
    volume: record.name,
    id: record.id,
    generation: record.generation,
    root: record.root,
    size: record.size,
    blockSize: record.blockSize,
    ...(record.mapHeight !== undefined ? { mapHeight: record.mapHeight } : {}),
    since,
  };
  return Buffer.from(JSON.stringify(pinned));
}

function sameVersion(a: VolumeRecord, b: VolumeRecord): boolean {
  return a.id === b.id && a.generation === b.generation && sameMapRoot(a.root, b.root);
}

/** Every read pin of the cluster. List them after the catalog (see the module comment). */
export async function listReadPins(meta: MetadataStore): Promise<PinnedVersion[]> {
  const pins: PinnedVersion[] = [];
  for (const kv of await meta.getPrefix(PINS)) {
    try {
      const pin = JSON.parse(kv.value.toString()) as PinnedVersion;
      if (
        Number.isSafeInteger(pin.id) &&
        Number.isSafeInteger(pin.generation) &&
        Number.isSafeInteger(pin.size) &&
        Number.isSafeInteger(pin.blockSize)
      )
        pins.push(pin);
    } catch {
      // A damaged pin protects nothing; GC goes on with the others.
    }
  }
  return pins;
}

/** The pins of one volume, by name. */
export async function readPinsOf(meta: MetadataStore, name: string): Promise<PinnedVersion[]> {
  return (await listReadPins(meta)).filter((pin) => pin.volume === name);
}

/**
 * Refuse (ConflictError naming the nodes) to go on while some node serves
 * volume `name` read-only: for `volume delete`, whose data would vanish from
 * under those clients. A check, not a guarantee: a client connecting in the
 * same instant finds the volume gone a moment later.
 */
export async function assertNoReaders(meta: MetadataStore, name: string): Promise<void> {
  const pins = await readPinsOf(meta, name);
  if (pins.length === 0) return;
  const nodes = [
    ...new Set(
      pins.map((pin) => `node ${pin.node} (version ${pin.generation}, since ${pin.since})`),
    ),
  ];
  throw new ConflictError(
    `volume "${name}" is being read on ${nodes.join(', ')}; disconnect those clients first (a node keeps a volume --lock-linger seconds after its last client)`,
  );
}

/**
 * Pin the committed version of volume `name` for `node`: put the pin, check
 * the record still names that version, else move the pin and check again.
 * Resolves with the pin and the record of the version pinned, which is the
 * one to open. NotFoundError when there is no such volume.
 */
export async function pinCurrentVersion(
  meta: MetadataStore,
  catalog: VolumeCatalog,
  name: string,
  node: string,
  options: { ttlSeconds: number; log: Logger },
): Promise<{ pin: ReadPin; versioned: VersionedRecord }> {
  let versioned = await catalog.get(name);
  const lease = await meta.grantLease(options.ttlSeconds);
  const key = `${PINS}${name}/${node}.${randomBytes(6).toString('hex')}`;
  const since = new Date().toISOString();
  try {
    for (let attempt = 0; attempt < MAX_PIN_ATTEMPTS; attempt++) {
      await meta.put(key, pinValue(node, versioned.record, since), { lease });
      const now = await catalog.get(name);
      if (sameVersion(now.record, versioned.record)) {
        const value = (at: string) => pinValue(node, now.record, at);
        const about = { volume: name, generation: now.record.generation };
        return { pin: new ReadPin(meta, key, value, about, lease, options), versioned: now };
      }
      versioned = now;
    }
  } catch (err) {
    await lease.revoke().catch(() => undefined);
    throw err;
  }
  await lease.revoke().catch(() => undefined);
  throw new ConflictError(
    `volume "${name}" got a new version ${MAX_PIN_ATTEMPTS} times while being opened read-only; try again`,
  );
}

/**
 * A held pin — one key under a lease of its own, put again under a new lease
 * if that one is lost; release() when the node stops serving the version.
 * Volume pins (pinCurrentVersion) and snapshot pins (snapshot-pins.ts) both.
 */
export class ReadPin {
  private released = false;
  private timer: NodeJS.Timeout | undefined;

  /** @internal use pinCurrentVersion or pinSnapshot */
  constructor(
    private readonly meta: MetadataStore,
    readonly key: string,
    /** The pin's value, stamped with when it was put. */
    private readonly value: (since: string) => Buffer,
    /** What the pin holds, for logs. */
    private readonly about: Record<string, string | number>,
    private lease: Lease,
    private readonly options: { ttlSeconds: number; log: Logger },
  ) {
    this.watch(lease);
  }

  /** Whether the pin is in the store now (false between a lost lease and its replacement). */
  get held(): boolean {
    return !this.released && this.lease.state === 'alive';
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    if (this.timer) clearTimeout(this.timer);
    await this.lease.revoke().catch(() => undefined); // its key goes with it
  }

  private watch(lease: Lease): void {
    lease.once('lost', (err: Error) => {
      if (this.released) return;
      this.options.log.warn(
        { ...this.about, err: err.message },
        'read pin lost with its lease; putting it back (GC may free blocks of this version meanwhile)',
      );
      this.repin();
    });
  }

  private repin(): void {
    this.timer = setTimeout(async () => {
      this.timer = undefined;
      if (this.released) return;
      let lease: Lease | undefined;
      try {
        lease = await this.meta.grantLease(this.options.ttlSeconds);
        if (!this.released)
          await this.meta.put(this.key, this.value(new Date().toISOString()), { lease });
        if (this.released) {
          await lease.revoke().catch(() => undefined);
          return;
        }
        this.lease = lease;
        this.watch(lease);
        this.options.log.info(this.about, 'read pin put back');
      } catch {
        await lease?.revoke().catch(() => undefined);
        this.repin();
      }
    }, REPIN_DELAY_MS);
    this.timer.unref();
  }
}
