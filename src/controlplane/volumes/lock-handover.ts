/**
 * Lock handover: a node that finds a volume's write lock held by another
 * asks for it, and the holder lets go at once if the volume only lingers
 * there (its last client gone, --lock-linger not yet over). That is the
 * case of a client that moved — a pod rescheduled to another machine —
 * which would otherwise get the volume read-only until the linger ends.
 *
 * The request is one key, `lock-handover/<volume>` = { node, at }, put by
 * the asking node; every node watches the prefix and acts only on volumes
 * whose lock it holds (node/on-demand-hosting.ts decides whether the volume
 * is idle). Best effort both ways: a lost request or watch event costs the
 * linger, nothing else; the lock itself still decides who writes.
 */
import type { Logger } from '../../common/log.js';
import type { MetadataStore, Watcher } from '../metadata/store.js';

const HANDOVER = 'lock-handover/';

/** Ask the holder of `name`'s lock to let go if it is idle (no answer: watch the lock). */
export function requestLockHandover(
  meta: MetadataStore,
  name: string,
  node: string,
  log: Logger,
): void {
  const request = { node, at: new Date().toISOString() };
  meta
    .put(HANDOVER + name, Buffer.from(JSON.stringify(request)))
    .catch((err: Error) =>
      log.debug({ volume: name, err: err.message }, 'lock handover request not sent'),
    );
}

/** Call `onRequest(name)` for each request another node makes for a lock `holds(name)` says is ours. */
export function watchLockHandovers(
  meta: MetadataStore,
  self: string,
  holds: (name: string) => boolean,
  onRequest: (name: string) => void,
): Promise<Watcher> {
  return meta.watchPrefix(HANDOVER, {}, (event) => {
    if (event.type !== 'put') return;
    const name = event.key.slice(HANDOVER.length);
    let requester: unknown;
    try {
      requester = (JSON.parse(event.value.toString()) as { node?: unknown }).node;
    } catch {
      return;
    }
    if (requester !== self && holds(name)) onRequest(name);
  });
}
