/**
 * ServedConnection: what every server-side protocol session does with its
 * socket, whatever the protocol — backpressure, draining, ending, and the
 * one moment it is finished. nbd/session.ts and peer/session.ts extend it
 * and supply the parsing (pump), what closing stops (stopReading) and what
 * finishing releases (finish).
 *
 * Contract:
 * - Backpressure: while maxInflightRequests or maxInflightBytes are being
 *   served, or more than maxQueuedReplyBytes of replies wait in the socket,
 *   the socket is paused (readingBlocked() says so to the pump, which stops);
 *   the pump resumes it (resumeReading()) once it gets through a pass, which
 *   happens as requests settle or the socket drains.
 * - A subclass counts a request from its start (begun(cost)) to its
 *   settling (ended(cost), then settled()); it calls noteQueued() after
 *   queueing a reply on the socket. The counts never go below zero
 *   (asserted): a request ended twice would let the pump read past the limits.
 * - Phases: 'hello' (protocols with an in-band greeting, before it),
 *   'serving', 'shutting-down' (answer new requests with a refusal, end once
 *   idle), 'draining' (read nothing more, end once idle), 'closed'.
 * - finish() is called once the socket has closed and nothing is in flight;
 *   it may be called more than once and must act once, then resolve
 *   `finished` through resolveFinished().
 *
 * Everything here is per connection or per event: nothing is allocated per
 * request, and the pump's checks are the fields it used to read itself.
 */
import type { Socket } from 'node:net';
import { assert } from '../../common/assert.js';

export interface ConnectionLimits {
  /** Requests being served at once before we stop reading. */
  maxInflightRequests: number;
  /** Request payload bytes being served at once before we stop reading. */
  maxInflightBytes: number;
  /** Reply bytes queued in the socket before we stop reading. */
  maxQueuedReplyBytes: number;
}

/**
 * A protocol's default limits: its own request count, and the byte budgets
 * both servers use (64 MiB of payloads being served, 16 MiB of replies
 * waiting in the socket) — enough for a queue of 1 MiB requests.
 */
export function connectionLimits(maxInflightRequests: number): ConnectionLimits {
  return {
    maxInflightRequests,
    maxInflightBytes: 64 * 1024 * 1024,
    maxQueuedReplyBytes: 16 * 1024 * 1024,
  };
}

export type ConnectionPhase = 'hello' | 'serving' | 'shutting-down' | 'draining' | 'closed';

/** How long a client may keep its side open after we have ended ours. */
const CLOSE_GRACE_MS = 5000;

/** End our side (queued replies still go out) and destroy the socket if the other side never closes its own. */
export function endGracefully(socket: Socket): void {
  socket.end();
  setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref();
}

export abstract class ServedConnection {
  protected inflight = 0;
  protected inflightBytes = 0;
  /** Replies over maxQueuedReplyBytes wait in the socket: read nothing until it drains. */
  protected writeBlocked = false;
  protected socketClosed = false;
  private readPaused = false;
  protected resolveFinished!: () => void;
  /** Resolves once the socket is closed and the session has finished (see finish() of the subclass). */
  readonly finished = new Promise<void>((resolve) => (this.resolveFinished = resolve));

  constructor(
    protected readonly socket: Socket,
    protected readonly limits: ConnectionLimits,
    protected phase: ConnectionPhase,
  ) {}

  get inflightRequests(): number {
    return this.inflight;
  }

  /** Decode and start every complete request buffered, until a limit says stop. */
  protected abstract readonly pump: () => void;
  /** The other side half-closed. */
  protected abstract readonly onEnd: () => void;
  /** The socket closed: drop or stop whatever parses received bytes. */
  protected abstract stopReading(): void;
  /** The socket is closed and nothing is in flight: release what the session holds, then resolveFinished(). */
  protected abstract finish(): void;

  /** Listen to the socket and start reading it; false when it is already gone (finish has been arranged). */
  protected attach(): boolean {
    this.socket.on('end', this.onEnd);
    this.socket.on('close', this.onClose);
    this.socket.on('drain', this.onDrain);
    if (this.socket.destroyed) {
      this.onClose();
      return false;
    }
    // The listener accepts paused (pauseOnConnect), so nothing is read before this.
    this.socket.resume();
    return true;
  }

  /** Shutting down: new requests are refused; end once in-flight ones are answered. */
  shutdown(): void {
    if (this.phase !== 'serving') return;
    this.phase = 'shutting-down';
    this.endIfIdle();
  }

  /** True (and the socket paused) while a limit says the pump must stop. */
  protected readingBlocked(): boolean {
    const limits = this.limits;
    if (
      this.inflight < limits.maxInflightRequests &&
      this.inflightBytes < limits.maxInflightBytes &&
      !this.writeBlocked
    )
      return false;
    if (!this.readPaused) {
      this.readPaused = true;
      this.socket.pause();
    }
    return true;
  }

  /** The pump got through: read again if a limit had paused the socket. */
  protected resumeReading(): void {
    if (this.readPaused && this.phase !== 'closed') {
      this.readPaused = false;
      this.socket.resume();
    }
  }

  /** A reply was queued: stop reading while too much waits in the socket. */
  protected noteQueued(): void {
    if (this.socket.writableLength >= this.limits.maxQueuedReplyBytes) this.writeBlocked = true;
  }

  private readonly onDrain = (): void => {
    if (!this.writeBlocked) return;
    this.writeBlocked = false;
    this.pump();
  };

  /** A request starts: it counts against the limits until ended(). */
  protected begun(cost: number): void {
    this.inflight++;
    this.inflightBytes += cost;
  }

  /** A request started with begun(cost) is over (call settled() after it has replied). */
  protected ended(cost: number): void {
    this.inflight--;
    this.inflightBytes -= cost;
    assert(
      this.inflight >= 0 && this.inflightBytes >= 0,
      'a request ended that was never begun (in-flight count below zero)',
    );
  }

  /** A request has settled: read on, end if that was the last one of a drain, finish if the socket is gone. */
  protected settled(): void {
    if (this.phase === 'serving' || this.phase === 'shutting-down') this.pump();
    this.endIfIdle();
    if (this.socketClosed && this.inflight === 0) this.finish();
  }

  /** Replies the subclass still holds go to the socket (before it is ended). */
  protected flushReplies(): void {}

  protected endIfIdle(): void {
    if (this.inflight > 0 || this.socketClosed) return;
    if (this.phase === 'draining' || this.phase === 'shutting-down') {
      this.phase = 'closed';
      this.flushReplies();
      endGracefully(this.socket);
    }
  }

  private readonly onClose = (): void => {
    if (this.socketClosed) return;
    this.socketClosed = true;
    this.phase = 'closed';
    this.stopReading();
    if (this.inflight === 0) this.finish();
  };
}
