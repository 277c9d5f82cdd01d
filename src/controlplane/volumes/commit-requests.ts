/**
 * Commit requests: what a snapshot or a clone of a live volume takes is the
 * volume's committed version. With the replicated intent log
 * (docs/cluster-flush.md) a writer's FLUSH is not a commit, so before such
 * an operation reads the record, it asks the writer, through the metadata
 * store, to commit what it has FLUSHed:
 *
 *   commit-requests/<volume>  { nonce, at }       put by whoever asks
 *   commit-done/<volume>      { nonce, generation } put by the writer once committed
 *
 * Every node watches the requests and answers for the volumes it writes.
 * Only a record that names intent holders (its writer logs FLUSHes) needs
 * asking; with no lock held nobody has anything uncommitted. No answer in
 * time (the writer dead, partitioned, or from before this): the operation
 * goes on with the committed version, which may lack that writer's latest
 * FLUSHes, and says so.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from '../../common/log.js';
import { readVolumeLock } from '../locks/index.js';
import type { MetadataStore, Watcher } from '../metadata/store.js';
import type { VolumeRecord } from './catalog.js';

const REQUESTS = 'commit-requests/';
const DONE = 'commit-done/';
/** How long an operation waits for the writer's commit. */
export const COMMIT_REQUEST_TIMEOUT_MS = 5_000;
const POLL_MS = 10;

export type CommitRequestOutcome = 'committed' | 'nothing to ask' | 'no answer';

/**
 * Before reading `record`'s committed version for a snapshot or a clone:
 * have its writer commit what it has FLUSHed, when it may hold some.
 */
export async function commitBeforeReading(
  meta: MetadataStore,
  record: Pick<VolumeRecord, 'name' | 'intent'>,
  log: Logger | undefined,
  timeoutMs = COMMIT_REQUEST_TIMEOUT_MS,
): Promise<CommitRequestOutcome> {
  if (!record.intent) return 'nothing to ask';
  const { name } = record;
  if (!(await readVolumeLock(meta, name))) return 'nothing to ask';
  const nonce = randomUUID();
  await meta.put(
    REQUESTS + name,
    Buffer.from(JSON.stringify({ nonce, at: new Date().toISOString() })),
  );
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const done = await meta.get(DONE + name);
    if (done && parseNonce(done.value) === nonce) return 'committed';
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  log?.warn(
    { volume: name, waitedMs: timeoutMs },
    "the volume's writer did not commit when asked: using its last committed version, which may lack its latest FLUSHes",
  );
  return 'no answer';
}

/**
 * For each request about a volume `writes(name)` says this node writes:
 * `commit(name)` (resolving with the generation committed), then the answer.
 * A failure is logged; the asker times out and goes on.
 */
export function serveCommitRequests(
  meta: MetadataStore,
  writes: (name: string) => boolean,
  commit: (name: string) => Promise<number>,
  log: Logger,
): Promise<Watcher> {
  return meta.watchPrefix(REQUESTS, {}, (event) => {
    if (event.type !== 'put') return;
    const name = event.key.slice(REQUESTS.length);
    const nonce = parseNonce(event.value);
    if (nonce === undefined || !writes(name)) return;
    commit(name)
      .then((generation) =>
        meta.put(DONE + name, Buffer.from(JSON.stringify({ nonce, generation }))),
      )
      .catch((err: unknown) =>
        log.warn({ volume: name, err: String(err) }, 'commit request not answered'),
      );
  });
}

function parseNonce(value: Buffer): string | undefined {
  try {
    const nonce = (JSON.parse(value.toString()) as { nonce?: unknown }).nonce;
    return typeof nonce === 'string' ? nonce : undefined;
  } catch {
    return undefined;
  }
}
