/**
 * The ring description in the metadata store: key `ring`, RingDescription as
 * JSON (see ../ring/ring.ts for the contract).
 *
 * Changed only by casRing: read, apply a mutation, write version + 1 under a
 * compare on the key's modRevision. A lost race re-reads and re-applies the
 * mutation, a bounded number of times. Mutations are set-like ("make X a
 * member", "replication is N") and return undefined when there is nothing to
 * change, so re-applying one after a write whose outcome was unknown (etcd
 * unreachable mid-call) is harmless and does not bump the version twice.
 */
import { ConflictError, NotFoundError } from '../../common/errors.js';
import type { MetadataStore } from '../metadata/store.js';
import type { RingDescription, RingMember, RingType } from '../../model/ring/ring.js';
import { UUID_PATTERN } from './peer-info.js';

export const RING_KEY = 'ring';
export const DEFAULT_REPLICATION = 2;
export const DEFAULT_RING_TYPE: RingType = 'ketama';
/** Lost compare-and-swap races tolerated before giving up with ConflictError. */
export const DEFAULT_CAS_ATTEMPTS = 5;

const RING_TYPES: readonly RingType[] = ['ketama', 'single'];

export interface StoredRing {
  description: RingDescription;
  /** The `ring` key's modRevision: the compare for the next change. */
  modRevision: number;
}

/** A change to make, given the current ring; undefined when it already holds. Never sets the version. */
export type RingMutation = (
  current: RingDescription,
) => Omit<RingDescription, 'version'> | undefined;

export interface RingChange {
  previous: RingDescription;
  ring: StoredRing;
  /** False when the mutation found nothing to do: no write, same version. */
  changed: boolean;
}

export class RingFormatError extends Error {
  override name = 'RingFormatError';
}

/** The ring was not at the version the caller based its change on. */
export class RingVersionConflictError extends ConflictError {
  override name = 'RingVersionConflictError';
  constructor(
    readonly expected: number,
    readonly actual: number,
  ) {
    super(
      `the ring is at version ${actual}, not ${expected}: it changed meanwhile; look again and retry`,
    );
  }
}

/** Throws RingFormatError unless `ring` is a well-formed description. */
export function checkRing(ring: RingDescription): void {
  const bad = (what: string) => new RingFormatError(`ring description: ${what}`);
  if (typeof ring !== 'object' || ring === null) throw bad('not an object');
  if (!Number.isSafeInteger(ring.version) || ring.version < 1)
    throw bad(`version must be a whole number ≥ 1, got ${ring.version}`);
  if (!RING_TYPES.includes(ring.type)) throw bad(`unknown type ${JSON.stringify(ring.type)}`);
  checkReplication(ring.replication);
  if (!Array.isArray(ring.members)) throw bad('members is not a list');
  const seen = new Set<string>();
  for (const m of ring.members) {
    if (typeof m?.uuid !== 'string' || !UUID_PATTERN.test(m.uuid))
      throw bad(`member uuid ${JSON.stringify(m?.uuid)} is not a uuid`);
    if (seen.has(m.uuid)) throw bad(`member ${m.uuid} appears twice`);
    seen.add(m.uuid);
    // Relative weights (../ring/ring.ts); this module writes whole byte counts.
    if (typeof m.weight !== 'number' || !Number.isFinite(m.weight) || m.weight <= 0)
      throw bad(`member ${m.uuid} has weight ${m.weight}; expected a positive number`);
  }
}

export function checkReplication(replication: number): void {
  if (!Number.isSafeInteger(replication) || replication < 1) {
    throw new RingFormatError(`replication must be a whole number ≥ 1, got ${replication}`);
  }
}

export function encodeRing(ring: RingDescription): Buffer {
  checkRing(ring);
  return Buffer.from(
    JSON.stringify({
      version: ring.version,
      type: ring.type,
      replication: ring.replication,
      members: ring.members.map(({ uuid, weight }) => ({ uuid, weight })),
    }),
  );
}

export function decodeRing(value: Buffer): RingDescription {
  let ring: RingDescription;
  try {
    ring = JSON.parse(value.toString('utf8')) as RingDescription;
  } catch {
    throw new RingFormatError('ring description is not JSON');
  }
  checkRing(ring);
  return ring;
}

export async function readRing(meta: MetadataStore): Promise<StoredRing | undefined> {
  const kv = await meta.get(RING_KEY);
  return kv ? { description: decodeRing(kv.value), modRevision: kv.modRevision } : undefined;
}

/**
 * Create version 1 (no members) unless a ring exists. Returns the ring in
 * force; `created` says whether this call wrote it.
 */
export async function initRing(
  meta: MetadataStore,
  options: { replication?: number; type?: RingType } = {},
): Promise<{ ring: StoredRing; created: boolean }> {
  const description: RingDescription = {
    version: 1,
    type: options.type ?? DEFAULT_RING_TYPE,
    replication: options.replication ?? DEFAULT_REPLICATION,
    members: [],
  };
  const result = await meta.txn({
    compare: [{ key: RING_KEY, target: 'modRevision', op: '==', value: 0 }],
    success: [{ type: 'put', key: RING_KEY, value: encodeRing(description) }],
    failure: [{ type: 'get', key: RING_KEY }],
  });
  if (result.succeeded)
    return { ring: { description, modRevision: result.revision }, created: true };
  const got = result.results[0];
  if (got?.type !== 'get' || got.kvs.length === 0)
    throw new Error('ring init: the compare failed but the ring key is absent');
  return {
    ring: { description: decodeRing(got.kvs[0].value), modRevision: got.kvs[0].modRevision },
    created: false,
  };
}

export function notInitialisedError(): NotFoundError {
  return new NotFoundError(
    'the cluster is not initialised (no ring in the metadata store): run torusctl -C ETCD init first',
  );
}

/**
 * Apply `mutate` to the current ring and store the result as version + 1, by
 * compare-and-swap on the ring key.
 *
 * `expectedVersion`: undefined applies the mutation to whatever ring is
 * current, re-reading and re-applying after a lost race (at most `attempts`
 * tries, then ConflictError). A number means "only if the ring is still at
 * this version": RingVersionConflictError otherwise, never a retry on a newer
 * ring. NotFoundError when no ring exists; RingFormatError when the mutation
 * produces an invalid ring (nothing is written).
 */
export async function casRing(
  meta: MetadataStore,
  expectedVersion: number | undefined,
  mutate: RingMutation,
  options: { attempts?: number } = {},
): Promise<RingChange> {
  const attempts = options.attempts ?? DEFAULT_CAS_ATTEMPTS;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    const current = await readRing(meta);
    if (!current) throw notInitialisedError();
    const previous = current.description;
    if (expectedVersion !== undefined && previous.version !== expectedVersion) {
      throw new RingVersionConflictError(expectedVersion, previous.version);
    }
    const change = mutate(structuredClone(previous));
    if (!change) return { previous, ring: current, changed: false };
    const next: RingDescription = { ...change, version: previous.version + 1 };
    checkRing(next);
    const result = await meta.txn({
      compare: [{ key: RING_KEY, target: 'modRevision', op: '==', value: current.modRevision }],
      success: [{ type: 'put', key: RING_KEY, value: encodeRing(next) }],
    });
    if (result.succeeded)
      return { previous, ring: { description: next, modRevision: result.revision }, changed: true };
  }
  throw new ConflictError(
    `the ring changed ${attempts} times while this change was being made; try again`,
  );
}

// ── mutations ────────────────────────────────────────────────────────────

/** Add the members not yet in the ring (existing members keep their weight). */
export function addMembers(members: readonly RingMember[]): RingMutation {
  return (ring) => {
    const present = new Set(ring.members.map((m) => m.uuid));
    const added = members.filter((m) => !present.has(m.uuid));
    if (added.length === 0) return undefined;
    return {
      ...ring,
      members: [...ring.members, ...added.map(({ uuid, weight }) => ({ uuid, weight }))],
    };
  };
}

/** Remove the given uuids where they are members. */
export function removeMembers(uuids: readonly string[]): RingMutation {
  return (ring) => {
    const gone = new Set(uuids);
    const members = ring.members.filter((m) => !gone.has(m.uuid));
    if (members.length === ring.members.length) return undefined;
    return { ...ring, members };
  };
}

export function setReplication(replication: number): RingMutation {
  checkReplication(replication);
  return (ring) => (ring.replication === replication ? undefined : { ...ring, replication });
}
