/**
 * RequestTable: a PeerClient's requests not yet answered, by id, and their deadlines.
 *
 * Contract:
 * - Ids are u32, never 0, and never one still in the table (they wrap at 2^32; in practice no
 *   request is that old). `allocateId` also serves ids that are not entered (the HELLO's).
 * - `add` enters a request with its deadline; from then until it leaves the table (`take`,
 *   expiry or `rejectAll`) it is outstanding. The table never resolves a request: the owner
 *   settles what `take` hands it.
 * - Deadlines are checked by one interval timer per table, running only while requests are
 *   outstanding, every `tickMs`: a request past its deadline leaves the table and is handed to
 *   `expired` (which rejects it); then `swept` runs, for checks of the connection's health.
 *   A deadline is therefore met within `tickMs` late, never early.
 *
 * Hot path: one object per request (its entry, made here so every entry has one shape); no
 * timer, closure or promise of its own.
 */

/** One request of a PeerClient, from `add` until it settles. */
export interface PendingRequest {
  readonly id: number;
  readonly op: number;
  /** performance.now() by which a reply must have come. */
  readonly deadline: number;
  readonly timeoutMs: number;
  /** When it was written (0 while queued for the connection). */
  sentAt: number;
  /** What to send: a ref, refs, blocks, or nothing. */
  readonly arg: unknown;
  resolve: (value: never) => void;
  reject: (err: Error) => void;
}

export class RequestTable {
  private readonly byId = new Map<number, PendingRequest>();
  private nextId = 1;
  private timer: NodeJS.Timeout | undefined;
  private nextDeadline = Infinity;

  /**
   * @param tickMs how often deadlines are checked while requests are outstanding
   * @param expired a request past its deadline, already out of the table: reject it
   * @param swept after each check with requests outstanding, at `now` (performance.now())
   */
  constructor(
    private readonly tickMs: number,
    private readonly expired: (request: PendingRequest) => void,
    private readonly swept: (now: number) => void,
  ) {}

  /** Requests outstanding (sent or queued for the connection). */
  get size(): number {
    return this.byId.size;
  }

  allocateId(): number {
    let id = this.nextId;
    while (id === 0 || this.byId.has(id)) id = (id + 1) >>> 0;
    this.nextId = (id + 1) >>> 0;
    return id;
  }

  /** Enter a new request, due `timeoutMs` after `now`. */
  add(
    op: number,
    arg: unknown,
    now: number,
    timeoutMs: number,
    resolve: (value: never) => void,
    reject: (err: Error) => void,
  ): PendingRequest {
    const request: PendingRequest = {
      id: this.allocateId(),
      op,
      deadline: now + timeoutMs,
      timeoutMs,
      sentAt: 0,
      arg,
      resolve,
      reject,
    };
    this.byId.set(request.id, request);
    if (request.deadline < this.nextDeadline) this.nextDeadline = request.deadline;
    this.timer ??= setInterval(this.sweep, this.tickMs);
    return request;
  }

  /** True while `request` is in the table (it has neither settled nor expired). */
  holds(request: PendingRequest): boolean {
    return this.byId.get(request.id) === request;
  }

  /** The request with this id, still in the table. */
  get(id: number): PendingRequest | undefined {
    return this.byId.get(id);
  }

  /** Remove a request that is about to be settled. */
  delete(request: PendingRequest): void {
    this.byId.delete(request.id);
  }

  /** Reject every request with `err` and empty the table. */
  rejectAll(err: Error): void {
    for (const request of this.byId.values()) request.reject(err);
    this.byId.clear();
    this.stopTimer();
  }

  /** Resolves once the table is empty; requests added meanwhile are waited for too. */
  async drained(): Promise<void> {
    while (this.byId.size > 0) {
      await Promise.allSettled(
        [...this.byId.values()].map(
          (request) =>
            new Promise<void>((done) => {
              const { resolve, reject } = request;
              request.resolve = (v) => (resolve(v), done());
              request.reject = (e) => (reject(e), done());
            }),
        ),
      );
    }
  }

  stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.nextDeadline = Infinity;
  }

  private readonly sweep = (): void => {
    if (this.byId.size === 0) return this.stopTimer();
    const now = performance.now();
    if (now >= this.nextDeadline) {
      let next = Infinity;
      for (const request of this.byId.values()) {
        if (request.deadline > now) {
          if (request.deadline < next) next = request.deadline;
          continue;
        }
        this.byId.delete(request.id);
        this.expired(request);
      }
      this.nextDeadline = next;
    }
    this.swept(now);
  };
}
