/**
 * Outbound: how frames leave a socket, for both ends of a connection.
 *
 * Small frames (a GET request, a PUT's OK, a reply head) are encoded straight
 * into a slab that only ever grows forward: everything encoded in one tick
 * goes to the socket as one view of the slab, and bytes once handed to the
 * socket are never written again (the socket may still hold them). When the
 * slab is used up a fresh one is taken and the old one is left to the socket
 * and the GC. So a small frame costs no allocation of its own, and a burst of
 * them costs one write.
 *
 * Large buffers (block data, big ref lists) are written as they are, in
 * order with the slab's bytes; the socket is corked for the tick, so the
 * whole burst leaves in one writev.
 *
 * Claim, encode, commit: an encoder that throws halfway leaves nothing
 * behind, because only commit() makes claimed bytes part of the stream.
 */
import type { Socket } from 'node:net';

/** Small frames larger than this are not worth a slab (they get their own buffer). */
export const SLAB_SIZE = 64 * 1024;

export class Outbound {
  /** The current slab; encode into it at the offset claim() returned. */
  slab: Buffer = Buffer.allocUnsafeSlow(SLAB_SIZE);
  /** Start of the bytes committed but not yet handed to the socket. */
  private start = 0;
  /** End of the committed bytes. */
  private end = 0;
  private corked = false;

  constructor(private readonly socket: Socket) {}

  /** Room for `size` (≤ SLAB_SIZE) bytes; returns where in `slab` to encode them. */
  claim(size: number): number {
    if (this.end + size > this.slab.length) {
      this.handOver();
      this.slab = Buffer.allocUnsafeSlow(SLAB_SIZE);
      this.start = this.end = 0;
    }
    this.begin();
    return this.end;
  }

  /** Make the `size` bytes just encoded at claim()'s offset part of the stream. */
  commit(size: number): void {
    this.end += size;
  }

  /**
   * Send `buf` as it is, after everything committed so far. The caller must
   * not change it until the socket has taken it (or is gone): `taken`, when
   * given, is called then — written, failed, or never sent.
   */
  write(buf: Uint8Array, taken?: () => void): void {
    if (this.socket.destroyed) {
      taken?.();
      return;
    }
    this.begin();
    this.handOver();
    if (taken) this.socket.write(buf, taken);
    else this.socket.write(buf);
  }

  /** A whole encoded frame: copied into the slab when small (SLAB_SIZE / 4 at most), else written as it is. */
  writeFrame(frame: Buffer): void {
    if (frame.length <= SLAB_SIZE / 4) {
      const at = this.claim(frame.length);
      frame.copy(this.slab, at);
      this.commit(frame.length);
    } else {
      this.write(frame);
    }
  }

  /** Hand everything committed to the socket now and uncork (before end(), or to cut latency). */
  flush(): void {
    this.handOver();
    if (this.corked) {
      this.corked = false;
      this.socket.uncork();
    }
  }

  private begin(): void {
    if (this.corked) return;
    this.corked = true;
    this.socket.cork();
    process.nextTick(this.flushTick);
  }

  private readonly flushTick = (): void => {
    if (this.corked) this.flush();
  };

  private handOver(): void {
    if (this.end === this.start) return;
    if (!this.socket.destroyed) this.socket.write(this.slab.subarray(this.start, this.end));
    this.start = this.end;
  }
}
