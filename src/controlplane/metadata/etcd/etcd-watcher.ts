/**
 * A prefix watch on its own etcd watch stream, resumed after a break.
 *
 * Ordering contract: events reach the callback in revision order, each once.
 * `nextRevision` is one past the last delivered event (or, for a watch that
 * started "from now", one past the revision etcd reported on creation); a
 * broken stream is re-created with start_revision = nextRevision, so nothing
 * is skipped or repeated. etcd never splits one response's events (we do not
 * ask for fragments), so a txn's events arrive together.
 *
 * If etcd compacted the revisions needed to resume, the watch ends and
 * onError gets MetadataCompactedError: the caller must reload and re-watch.
 */
import type { IDuplexStream, IWatchRequest, IWatchResponse } from 'etcd3';
import { MetadataCompactedError, MetadataUnavailableError } from '../errors.js';
import type { WatchEvent, Watcher } from '../store.js';
import { CallTimedOutError, toMetadataError } from './convert.js';
import { closeStream } from './etcd-lease.js';
import type { EtcdMetadataStore } from './etcd-store.js';
import { ownedCopy } from '../../../common/owned-copy.js';

type WatchStream = IDuplexStream<IWatchRequest, IWatchResponse>;

const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 2000;

export class EtcdWatcher implements Watcher {
  private stream: WatchStream | undefined;
  private nextRevision: number | undefined;
  private closed = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryMs = RETRY_MIN_MS;

  constructor(
    private readonly store: EtcdMetadataStore,
    private readonly key: Buffer,
    private readonly rangeEnd: Buffer,
    fromRevision: number | undefined,
    private readonly onEvent: (event: WatchEvent) => void,
    private readonly onError: ((err: Error) => void) | undefined,
    private readonly forget: () => void,
  ) {
    this.nextRevision = fromRevision;
  }

  /** First connection: resolves once etcd confirmed the watch, or rejects (nothing retried). */
  start(): Promise<void> {
    return this.connect();
  }

  /**
   * Open a stream and create the watch on it; resolves when etcd answers
   * "created". Afterwards a break schedules a reconnect.
   */
  private async connect(): Promise<void> {
    let stream: WatchStream;
    try {
      stream = await this.store.client.watchClient.watch();
    } catch (err) {
      throw toMetadataError(err, 'watch');
    }
    if (this.closed) {
      closeStream(stream);
      return;
    }
    this.stream = stream;
    let created = false;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          fail(new CallTimedOutError(`watch not confirmed within ${this.store.callTimeoutMs} ms`)),
        this.store.callTimeoutMs,
      );
      const fail = (err: Error) => {
        clearTimeout(timer);
        if (stream === this.stream) this.dropStream();
        reject(toMetadataError(err, 'watch'));
      };
      stream.on('data', (res) => {
        if (stream !== this.stream) return;
        if (res.canceled) {
          const err = this.cancellation(res);
          if (!created) return fail(err);
          return this.end(err);
        }
        if (res.created) {
          created = true;
          clearTimeout(timer);
          this.nextRevision ??= Number(res.header.revision) + 1;
          this.retryMs = RETRY_MIN_MS;
          resolve();
        }
        this.deliver(res);
      });
      const broken = (err: Error) => {
        if (stream !== this.stream) return;
        if (!created) return fail(err);
        this.dropStream();
        this.store.log.debug(
          { err, nextRevision: this.nextRevision },
          'watch stream broke; resuming',
        );
        this.reconnectLater();
      };
      stream.on('error', broken);
      stream.on('end', () => broken(new Error('watch stream ended')));
      stream.write({
        create_request: {
          key: this.key,
          range_end: this.rangeEnd,
          ...(this.nextRevision !== undefined ? { start_revision: this.nextRevision } : {}),
        },
      });
    });
  }

  private cancellation(res: IWatchResponse): Error {
    const compacted = Number(res.compact_revision);
    if (compacted > 0) return new MetadataCompactedError(this.nextRevision ?? 0, compacted);
    return new MetadataUnavailableError(
      `etcd cancelled the watch: ${res.cancel_reason || 'no reason given'}`,
    );
  }

  private deliver(res: IWatchResponse): void {
    // Fixed per response: one txn's events share a revision and all must pass.
    const resumeFrom = this.nextRevision;
    for (const ev of res.events ?? []) {
      const modRevision = Number(ev.kv.mod_revision);
      if (resumeFrom !== undefined && modRevision < resumeFrom) continue; // delivered before a reconnect
      const type = String(ev.type).toLowerCase() === 'delete' ? 'delete' : 'put';
      const event: WatchEvent = {
        type,
        key: this.store.keyOf(ev.kv.key),
        value: type === 'put' ? ownedCopy(ev.kv.value) : Buffer.alloc(0), // not a view of the whole response
        modRevision,
      };
      try {
        this.onEvent(event);
      } catch (err) {
        this.store.log.error({ err, key: event.key }, 'watch callback threw; the watch goes on');
      }
      if (this.closed) return;
      this.nextRevision = modRevision + 1;
    }
  }

  private reconnectLater(): void {
    if (this.closed || this.retryTimer) return;
    const delay = this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (this.closed) return;
      this.connect().catch((err: Error) => {
        if (err instanceof MetadataCompactedError) return this.end(err);
        this.reconnectLater();
      });
    }, delay);
  }

  /** The watch ends on its own: tell the owner. */
  private end(err: Error): void {
    if (this.closed) return;
    void this.close();
    if (this.onError) this.onError(err);
    else this.store.log.error({ err }, 'watch ended');
  }

  private dropStream(): void {
    const stream = this.stream;
    this.stream = undefined;
    if (stream) closeStream(stream);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.dropStream();
    this.forget();
  }
}
