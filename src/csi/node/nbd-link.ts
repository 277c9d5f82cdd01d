/**
 * The volume file's connection to its NBD export: one NbdClient at a time,
 * replaced when it is lost (the storage node restarted) or when the volume
 * grew (NBD has no resize notice: only a new handshake learns the new size).
 *
 * Contract:
 * - A request that fails because the connection is gone is retried on a new
 *   one for up to `reconnectForMs`; only then does it fail (EIO).
 * - Never a silent loss: when a connection is lost with writes it acknowledged
 *   and no flush since, the next flush fails with EIO (once), so the
 *   filesystem above learns that acknowledged data may be gone — the server
 *   only makes writes durable at a flush.
 * - `refresh()` connects anew, switches every later request to the new
 *   connection, and flushes and closes the old one after its requests settle.
 */
import { IoError } from '../../common/errors.js';
import { NbdClient, type NbdAddress } from '../../dataplane/nbd-client/client.js';
import { NbdConnectionError } from '../../dataplane/nbd-client/errors.js';
import type { Logger } from '../../common/log.js';
import { NBD_HANDSHAKE_TIMEOUT_MS } from './nbd-address.js';

interface Connection {
  client: NbdClient;
  /** Writes acknowledged on this connection, and how many of them a flush covered. */
  acked: number;
  flushed: number;
}

export class NbdLink {
  private current: Connection;
  private replacing: Promise<Connection> | undefined;
  private lostWrites = false;
  private closed = false;

  private constructor(
    private readonly address: NbdAddress,
    readonly exportName: string,
    client: NbdClient,
    private readonly log: Logger,
    private readonly reconnectForMs: number,
  ) {
    this.current = { client, acked: 0, flushed: 0 };
  }

  /** Connect; rejects with NotFoundError when the server has no such export. */
  static async open(
    address: NbdAddress,
    exportName: string,
    log: Logger,
    reconnectForMs = 60_000,
  ): Promise<NbdLink> {
    const client = await NbdClient.connect(address, exportName);
    return new NbdLink(address, exportName, client, log, reconnectForMs);
  }

  get size(): number {
    return this.current.client.size;
  }

  get readOnly(): boolean {
    return this.current.client.readOnly;
  }

  /** False while the connection is lost and not yet replaced. */
  get connected(): boolean {
    return this.replacing === undefined;
  }

  read(buffer: Buffer, offset: number): Promise<void> {
    return this.withConnection((c) => c.client.read(buffer, offset));
  }

  write(buffer: Buffer, offset: number): Promise<void> {
    return this.withConnection(async (c) => {
      await c.client.write(buffer, offset);
      c.acked++;
    });
  }

  trim(offset: number, length: number): Promise<void> {
    return this.withConnection(async (c) => {
      await c.client.trim(offset, length);
      c.acked++;
    });
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.withConnection(async (c) => {
      await c.client.writeZeroes(offset, length);
      c.acked++;
    });
  }

  async flush(): Promise<void> {
    if (this.lostWrites) {
      this.lostWrites = false;
      throw new IoError(
        'EIO',
        `the connection to ${this.exportName} was lost with unflushed writes: they may be gone`,
      );
    }
    await this.withConnection(async (c) => {
      const covered = c.acked;
      await c.client.flush();
      c.flushed = Math.max(c.flushed, covered);
    });
  }

  /** Connect anew (learning the export's size now) and move to that connection. */
  async refresh(): Promise<number> {
    const client = await NbdClient.connect(this.address, this.exportName);
    const old = this.current;
    this.current = { client, acked: 0, flushed: 0 };
    // The old connection's acknowledged writes reach the same export; its
    // flush makes them durable before it is let go.
    try {
      await old.client.flush();
      await old.client.close();
    } catch (err) {
      if (old.acked > old.flushed) this.lostWrites = true;
      this.log.warn({ err: String(err) }, 'the replaced NBD connection failed to flush');
      old.client.destroy();
    }
    return client.size;
  }

  async close(): Promise<void> {
    this.closed = true;
    const c = this.current;
    try {
      await c.client.flush();
    } finally {
      await c.client.close().catch(() => c.client.destroy());
    }
  }

  private async withConnection(call: (c: Connection) => Promise<void>): Promise<void> {
    const deadline = Date.now() + this.reconnectForMs;
    for (;;) {
      const c = this.replacing ? await this.replacing : this.current;
      try {
        await call(c);
        return;
      } catch (err) {
        if (!(err instanceof NbdConnectionError) || this.closed || Date.now() > deadline) throw err;
        await this.replace(c, deadline);
      }
    }
  }

  /** Replace a lost connection (once, however many requests saw it fail). */
  private replace(lost: Connection, deadline: number): Promise<Connection> {
    if (this.current !== lost) return Promise.resolve(this.current);
    this.replacing ??= (async () => {
      if (lost.acked > lost.flushed) this.lostWrites = true;
      lost.client.destroy();
      this.log.warn({ export: this.exportName }, 'NBD connection lost; reconnecting');
      for (;;) {
        try {
          const client = await NbdClient.connect(this.address, this.exportName, {
            handshakeTimeoutMs: NBD_HANDSHAKE_TIMEOUT_MS,
          });
          this.current = { client, acked: 0, flushed: 0 };
          this.log.info({ export: this.exportName }, 'NBD connection restored');
          return this.current;
        } catch (err) {
          if (Date.now() > deadline) throw new IoError('EIO', `cannot reconnect: ${String(err)}`);
          await new Promise((done) => setTimeout(done, 1000));
        }
      }
    })().finally(() => (this.replacing = undefined));
    return this.replacing;
  }
}
