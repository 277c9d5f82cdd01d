/**
 * ByteQueue: the bytes received on one connection and not yet consumed, as a
 * list of chunks. The base of each protocol's inbound reader (nbd/inbound.ts,
 * peer/frame-reader.ts), which decides how it parses and what it keeps.
 *
 * Two kinds of chunk come in. An owned chunk (a socket 'data' buffer, or
 * memory the reader made) is kept as it is and never written to, so views
 * into it stay valid. A transient chunk is a view of the connection's reused
 * read buffer (read-buffer.ts), valid only until the read that filled it
 * returns; at most one is held (`transient`), always the last chunk, and the
 * subclass copies what is left of it into memory of its own before that read
 * returns.
 *
 * Nothing here allocates: consuming moves a position, and copyOut() copies
 * into memory the caller owns. The queue never reads the socket itself: its
 * owner pushes chunks and decides when to pause.
 */
export class ByteQueue {
  protected chunks: Buffer[] = [];
  /** Read position inside chunks[0]. */
  protected head = 0;
  protected buffered = 0;
  /** The transient chunk of the read in progress, while it is held. */
  protected transient: Buffer | undefined;

  /** Bytes received, not consumed, and ready to parse. */
  get available(): number {
    return this.buffered;
  }

  /** Queue a non-empty chunk. transient: it is a view of the read buffer, reused after this read. */
  protected append(chunk: Buffer, transient: boolean): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (transient) this.transient = chunk;
  }

  /** Copy the first `bytes` (≤ available) into out without consuming them. */
  protected copyOut(out: Buffer, bytes: number): void {
    let filled = 0;
    let start = this.head;
    for (const chunk of this.chunks) {
      if (filled === bytes) break;
      filled += chunk.copy(out, filled, start, Math.min(chunk.length, start + bytes - filled));
      start = 0;
    }
  }

  /** Consume the first `bytes` (≤ available); chunks wholly consumed are let go. */
  protected skip(bytes: number): void {
    this.buffered -= bytes;
    while (bytes > 0) {
      const left = this.chunks[0].length - this.head;
      if (bytes < left) {
        this.head += bytes;
        return;
      }
      bytes -= left;
      this.chunks.shift();
      this.head = 0;
    }
  }

  /** Drop everything buffered (the connection is being closed). */
  protected clearChunks(): void {
    this.chunks = [];
    this.head = 0;
    this.buffered = 0;
    this.transient = undefined;
  }
}
