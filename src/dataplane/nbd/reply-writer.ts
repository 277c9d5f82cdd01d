/**
 * ReplyWriter: how a session's replies reach its socket.
 *
 * Replies settled in the same tick are corked together, so a burst of small
 * ones costs one syscall. Over TLS a large reply goes out uncorked, as one
 * buffer: a TLS socket joins the buffers of a gathered write into one fresh
 * allocation before encrypting it — a copy of every byte, and for corked
 * megabyte replies a large allocation each time — while a single buffer is
 * encrypted where it lies. (The session builds such replies in one buffer:
 * header and data together.)
 */
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';

/** Over TLS, replies this large are written on their own (see above). */
const TLS_ALONE_BYTES = 64 * 1024;

export class ReplyWriter {
  /** Whether the socket encrypts: replies should then be one buffer each (see above). */
  readonly encrypted: boolean;
  private corked = false;

  constructor(
    private readonly socket: Socket,
    /** Called when the socket has more queued than its high-water mark. */
    private readonly onQueued: () => void,
  ) {
    this.encrypted = socket instanceof TLSSocket;
  }

  write(buf: Buffer, written?: (err?: Error | null) => void): void {
    const socket = this.socket;
    if (this.encrypted && buf.length >= TLS_ALONE_BYTES) {
      if (this.corked) this.uncork(); // what was queued before it goes first, in order
    } else if (!this.corked) {
      this.corked = true;
      socket.cork();
      process.nextTick(this.uncork);
    }
    if (!socket.write(buf, written)) this.onQueued();
  }

  private readonly uncork = (): void => {
    if (!this.corked) return; // already uncorked for a large TLS reply
    this.corked = false;
    this.socket.uncork();
  };
}
