/**
 * ConnectionAdmission: which accepted sockets a server keeps, so that
 * clients that never finish their handshake, or one client opening
 * thousands of connections, cannot lock the others out.
 *
 * A connection is first *handshaking* (cheap for a hostile client to hold:
 * open a socket and say nothing), then *established* (it has finished the
 * handshake and may sit idle for hours, as kernel NBD clients do, and is
 * never displaced). The invariants, held after every call:
 *
 *   established + handshaking ≤ maxConnections
 *   handshaking ≤ maxHandshakes
 *   per client address: established + handshaking ≤ maxPerClient
 *   per client address: handshaking ≤ handshakeShare (a quarter of maxHandshakes)
 *
 * A new socket from client C:
 *   1. C already has maxPerClient established, or all maxConnections are
 *      established: refused at once (nothing can be shed to make room).
 *   2. C is at its per-client cap or its handshake share: C's own oldest
 *      handshake is shed. One address cycling sockets only ever displaces
 *      its own, so it cannot shed another client's handshake in progress.
 *   3. The handshake cap or the total is still full: the oldest handshake of
 *      anyone is shed. An idle socket's place goes to the newcomer; a real
 *      client's handshake takes milliseconds and is through before its turn.
 * Since every handshake already has its place inside every cap, finishing it
 * (established()) never exceeds one: no connection is refused after its
 * handshake succeeded.
 *
 * Refusals and sheds are logged at most once a second per reason
 * (rate-limited-log.ts) and reported to onOutcome (metrics).
 */
import { assert } from '../../common/assert.js';
import type { Logger } from '../../common/log.js';
import { RateLimitedLog } from './rate-limited-log.js';

export interface AdmissionLimits {
  /** Connections in all, handshaking or established. */
  maxConnections: number;
  /** Of those, connections still in their handshake; more shed the oldest. */
  maxHandshakes: number;
  /** Connections from one client address (every unix-socket client is one address). */
  maxPerClient: number;
}

export const DEFAULT_ADMISSION_LIMITS: AdmissionLimits = {
  maxConnections: 1024,
  maxHandshakes: 256,
  maxPerClient: 128,
};

/** What happened to a socket besides plain admission: refused, or a handshake shed to make room. */
export type AdmissionOutcome = 'refused-per-client' | 'refused-full' | 'shed';

/** The address a socket counts under: its remote IP; unix-socket clients have none and share one. */
export function clientAddressOf(remoteAddress: string | undefined): string {
  return remoteAddress ?? 'unix';
}

/** Handshakes one address may hold at once: a quarter of the handshake cap, at least one. */
export function handshakeShare(limits: AdmissionLimits): number {
  return Math.max(1, Math.ceil(limits.maxHandshakes / 4));
}

/** Throws RangeError unless every limit is a positive integer. */
export function checkAdmissionLimits(limits: AdmissionLimits): void {
  for (const [name, value] of Object.entries(limits))
    if (!Number.isSafeInteger(value) || value < 1)
      throw new RangeError(`${name} must be a positive integer, not ${value}`);
}

type TicketState = 'handshaking' | 'established' | 'released';

/** One admitted connection's place. */
export class AdmissionTicket {
  state: TicketState = 'handshaking';
  constructor(
    readonly client: string,
    /** Close the connection: its handshake was shed to make room. */
    readonly onShed: () => void,
  ) {}
}

interface ClientCounts {
  /** Oldest first (a Set iterates in insertion order). */
  handshaking: Set<AdmissionTicket>;
  established: number;
}

export class ConnectionAdmission {
  /** Every handshaking connection, oldest first. */
  private readonly handshaking = new Set<AdmissionTicket>();
  private established = 0;
  private readonly clients = new Map<string, ClientCounts>();
  private readonly share: number;
  private readonly notices: RateLimitedLog;

  constructor(
    readonly limits: AdmissionLimits,
    log: Logger,
    /** How log lines name a connection ('NBD connection'). */
    private readonly connectionName: string,
    private readonly onOutcome?: (outcome: AdmissionOutcome) => void,
  ) {
    checkAdmissionLimits(limits);
    this.share = handshakeShare(limits);
    this.notices = new RateLimitedLog(log);
  }

  get handshakingCount(): number {
    return this.handshaking.size;
  }

  get establishedCount(): number {
    return this.established;
  }

  /** A new connection from `client`: its ticket, or undefined when refused (the caller closes it). */
  admit(client: string, onShed: () => void): AdmissionTicket | undefined {
    const { maxConnections, maxHandshakes, maxPerClient } = this.limits;
    const counts = this.clients.get(client);
    if (counts && counts.established >= maxPerClient) {
      this.refuse(
        'refused-per-client',
        `refusing ${this.connectionName}: its client is at the per-client cap (raise the cap or close some of its connections)`,
        { client, established: counts.established, maxPerClient },
      );
      return undefined;
    }
    if (this.established >= maxConnections) {
      this.refuse(
        'refused-full',
        `refusing ${this.connectionName}: every connection place is taken by an established connection (raise the connection cap)`,
        { client, established: this.established, maxConnections },
      );
      return undefined;
    }
    if (
      counts &&
      (counts.established + counts.handshaking.size >= maxPerClient ||
        counts.handshaking.size >= this.share)
    )
      this.shed(first(counts.handshaking), 'its own oldest');
    if (
      this.handshaking.size >= maxHandshakes ||
      this.established + this.handshaking.size >= maxConnections
    )
      this.shed(first(this.handshaking), 'the oldest');

    const ticket = new AdmissionTicket(client, onShed);
    this.handshaking.add(ticket);
    let mine = this.clients.get(client);
    if (!mine) this.clients.set(client, (mine = { handshaking: new Set(), established: 0 }));
    mine.handshaking.add(ticket);
    this.checkInvariants(mine);
    return ticket;
  }

  /** The connection finished its handshake: it keeps its place for as long as it stays open. */
  establish(ticket: AdmissionTicket): void {
    if (ticket.state !== 'handshaking') return;
    const counts = this.clients.get(ticket.client)!;
    this.handshaking.delete(ticket);
    counts.handshaking.delete(ticket);
    counts.established++;
    this.established++;
    ticket.state = 'established';
    this.checkInvariants(counts);
  }

  /** The connection closed (or is closing); a second call is a no-op. */
  release(ticket: AdmissionTicket): void {
    if (ticket.state === 'released') return;
    const counts = this.clients.get(ticket.client)!;
    if (ticket.state === 'handshaking') {
      this.handshaking.delete(ticket);
      counts.handshaking.delete(ticket);
    } else {
      counts.established--;
      this.established--;
    }
    ticket.state = 'released';
    if (counts.established === 0 && counts.handshaking.size === 0)
      this.clients.delete(ticket.client);
  }

  /** Log what the rate limit still holds back. */
  dispose(): void {
    this.notices.dispose();
  }

  private shed(ticket: AdmissionTicket | undefined, whose: string): void {
    assert(ticket !== undefined, 'a cap is full of handshakes but there is none to shed');
    this.release(ticket);
    this.onOutcome?.('shed');
    this.notices.note(
      'info',
      `shedding ${whose} unfinished ${this.connectionName} handshake to admit a new one`,
      {
        client: ticket.client,
        handshaking: this.handshaking.size,
        maxHandshakes: this.limits.maxHandshakes,
      },
    );
    ticket.onShed();
  }

  private refuse(
    outcome: AdmissionOutcome,
    message: string,
    fields: Record<string, unknown>,
  ): void {
    this.onOutcome?.(outcome);
    this.notices.note('warn', message, fields);
  }

  private checkInvariants(counts: ClientCounts): void {
    const { maxConnections, maxHandshakes, maxPerClient } = this.limits;
    assert(
      this.established + this.handshaking.size <= maxConnections,
      'more connections admitted than maxConnections',
    );
    assert(this.handshaking.size <= maxHandshakes, 'more handshakes admitted than maxHandshakes');
    assert(
      counts.established + counts.handshaking.size <= maxPerClient,
      'more connections admitted from one client than maxPerClient',
    );
  }
}

function first<T>(set: Set<T>): T | undefined {
  for (const item of set) return item;
  return undefined;
}
