/**
 * RequestSlots: the request table of one NBD connection — which requests are
 * in flight, which wait to be admitted, and how each one settles.
 *
 * Contract:
 * - Slots are made once per connection and reused: a request takes a free
 *   slot when admitted and gives it back when it settles. A slot carries the
 *   request (command, range, where READ data goes) and what its reply said
 *   (error code and message, BLOCK_STATUS extents); `reply-receiver.ts` fills
 *   the latter and calls `settle` on the reply's last chunk.
 * - Admission: at most one request per slot and `maxInFlightBytes` of
 *   READ/WRITE payload at once (a request larger than that still goes, alone).
 *   A request that does not fit waits; waiters are admitted in call order, a
 *   later one never overtaking an earlier one.
 * - Cookies: a request's cookie is (slot generation, slot index). The
 *   generation changes each time the slot is released, so `find` answers
 *   undefined for a reply to a request not in flight (stale or forged).
 * - Once `fail(err)` ran, every request in flight, waiting, or submitted
 *   later rejects with `err`.
 * - Nothing is allocated per admitted request: the caller's promise
 *   callbacks are kept in the slot; only a request that must wait gets a
 *   queue entry.
 */
import { assert, invariantBroken } from '../../common/assert.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  REQUEST_HEADER_SIZE,
} from '../nbd/wire.js';
import type { NbdExtent } from './client.js';
import { NbdRequestError } from './errors.js';

export type Settled = NbdExtent[] | undefined;

/** One request in flight. Slots are made once per connection and reused. */
export class Slot {
  /** The encoded request header, sent from here (made once, rewritten per request). */
  readonly header = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  generation = 0;
  busy = false;
  command = 0;
  offset = 0;
  length = 0;
  /** Payload bytes counted against maxInFlightBytes. */
  payload = 0;
  /** READ: where the data goes. */
  dest: Buffer | undefined;
  /** BLOCK_STATUS: the extents so far. */
  extents: NbdExtent[] | undefined;
  /** First error chunk's code (0: none) and message. */
  error = 0;
  message = '';
  resolve: ((value: Settled) => void) | undefined;
  reject: ((err: Error) => void) | undefined;
  constructor(readonly index: number) {}
}

/**
 * Puts an admitted request on the wire: `slot` holds its command, range and
 * cookie; `flags` are its command flags, `buffer` a WRITE's payload.
 */
export type SendRequest = (slot: Slot, flags: number, buffer: Buffer | undefined) => void;

/** A request not admitted yet: what it takes to start it later. */
interface Waiting {
  command: number;
  flags: number;
  offset: number;
  length: number;
  buffer: Buffer | undefined;
  payload: number;
  resolve: (value: Settled) => void;
  reject: (err: Error) => void;
}

export class RequestSlots {
  private readonly slots: Slot[];
  private readonly free: Slot[];
  private readonly waiting: Waiting[] = [];
  private inFlightBytes = 0;
  private failed: Error | undefined;
  private idle: (() => void) | undefined;

  constructor(
    count: number,
    private readonly maxInFlightBytes: number,
    private readonly send: SendRequest,
  ) {
    assert(
      Number.isSafeInteger(count) && count >= 1 && maxInFlightBytes >= 1,
      () => `request table of ${count} slots, ${maxInFlightBytes} bytes in flight`,
    );
    this.slots = Array.from({ length: count }, (_, i) => new Slot(i));
    this.free = [...this.slots].reverse();
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.slots.length - this.free.length;
  }

  /** Nothing in flight and nothing waiting. */
  get idleNow(): boolean {
    return this.inFlight === 0 && this.waiting.length === 0;
  }

  /** Why the connection became unusable, once `fail` ran. */
  get failure(): Error | undefined {
    return this.failed;
  }

  /**
   * Admit a request now if it fits and nobody waits, else queue it; either
   * way it settles through `resolve`/`reject`. Not to be called after `fail`.
   */
  submit(
    command: number,
    flags: number,
    offset: number,
    length: number,
    buffer: Buffer | undefined,
    resolve: (value: Settled) => void,
    reject: (err: Error) => void,
  ): void {
    assert(this.failed === undefined, 'a request submitted to a failed connection');
    const payload = command === NBD_CMD_READ || command === NBD_CMD_WRITE ? length : 0;
    if (this.waiting.length === 0 && this.admits(payload))
      this.start(command, flags, offset, length, buffer, payload, resolve, reject);
    else this.waiting.push({ command, flags, offset, length, buffer, payload, resolve, reject });
  }

  /**
   * The request in flight under cookie (generation, index), or undefined
   * when none is (a reply to it would break the protocol).
   */
  find(generation: number, index: number): Slot | undefined {
    const slot = this.slots[index];
    return slot !== undefined && slot.busy && slot.generation === generation ? slot : undefined;
  }

  /** The slot's reply is complete: settle its request, free the slot, admit who waits. */
  settle(slot: Slot): void {
    assert(slot.busy, 'settling a slot that is not in flight');
    const { resolve, reject, error, extents } = slot;
    const failure =
      error === 0
        ? undefined
        : new NbdRequestError(error, slot.command, slot.offset, slot.length, slot.message);
    this.release(slot);
    if (failure) reject!(failure);
    else resolve!(extents);
    this.admitWaiting();
    if (this.idle && this.idleNow) this.wake();
  }

  /** Resolves once nothing is in flight or waiting (or the table failed). One waiter at a time. */
  whenIdle(): Promise<void> {
    assert(this.idle === undefined, 'two waiters for an idle request table');
    return new Promise<void>((done) => (this.idle = done));
  }

  /** The connection is unusable: reject everything in flight and waiting, and everything after. */
  fail(err: Error): void {
    if (this.failed) return;
    this.failed = err;
    for (const slot of this.slots) {
      if (!slot.busy) continue;
      const reject = slot.reject!;
      this.release(slot);
      reject(err);
    }
    for (const waiter of this.waiting.splice(0)) waiter.reject(err);
    if (this.idle) this.wake();
  }

  private start(
    command: number,
    flags: number,
    offset: number,
    length: number,
    buffer: Buffer | undefined,
    payload: number,
    resolve: (value: Settled) => void,
    reject: (err: Error) => void,
  ): void {
    const slot = this.free.pop()!;
    assert(!slot.busy, 'a free slot in flight');
    slot.busy = true;
    slot.command = command;
    slot.offset = offset;
    slot.length = length;
    slot.payload = payload;
    slot.dest = command === NBD_CMD_READ ? buffer : undefined;
    slot.extents = command === NBD_CMD_BLOCK_STATUS ? [] : undefined;
    slot.error = 0;
    slot.message = '';
    slot.resolve = resolve;
    slot.reject = reject;
    this.inFlightBytes += payload;
    this.send(slot, flags, buffer);
  }

  private admits(payload: number): boolean {
    if (this.free.length === 0) return false;
    return this.inFlightBytes === 0 || this.inFlightBytes + payload <= this.maxInFlightBytes;
  }

  private admitWaiting(): void {
    while (this.waiting.length > 0) {
      // In call order: a waiter never overtakes another.
      const next = this.waiting[0];
      if (!this.admits(next.payload)) return;
      this.waiting.shift();
      if (this.failed) next.reject(this.failed);
      else
        this.start(
          next.command,
          next.flags,
          next.offset,
          next.length,
          next.buffer,
          next.payload,
          next.resolve,
          next.reject,
        );
    }
  }

  private release(slot: Slot): void {
    this.inFlightBytes -= slot.payload;
    if (this.inFlightBytes < 0) invariantBroken(`${this.inFlightBytes} payload bytes in flight`);
    slot.busy = false;
    slot.generation = (slot.generation + 1) >>> 0;
    slot.dest = undefined;
    slot.extents = undefined;
    slot.resolve = undefined;
    slot.reject = undefined;
    this.free.push(slot);
  }

  private wake(): void {
    const idle = this.idle!;
    this.idle = undefined;
    idle();
  }
}
