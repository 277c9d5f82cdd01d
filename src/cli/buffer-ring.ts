/**
 * BufferRing: pieces of one buffer handed out in order and given back in
 * the same order, as a dump's pieces are (read, then hashed and written,
 * oldest first). Pieces are sized to what they hold, so a volume of 1 MiB
 * runs has four times as many in flight as one of 4 MiB chunks in the same
 * memory. Every piece starts on a multiple of `alignment` (O_DIRECT wants
 * the memory aligned, direct-file.ts).
 */
export class BufferRing {
  /** Pieces handed out and not yet given back, oldest first: [start, end) in the buffer. */
  private readonly held: { start: number; end: number }[] = [];

  constructor(
    readonly buffer: Buffer,
    private readonly alignment: number,
  ) {
    if (buffer.byteOffset % alignment !== 0 || buffer.length % alignment !== 0)
      throw new RangeError(`BufferRing: the buffer is not aligned to ${alignment} bytes`);
  }

  /** Pieces handed out and not given back. */
  get count(): number {
    return this.held.length;
  }

  /** A piece of `length` bytes, or undefined when it does not fit until older pieces are given back. */
  take(length: number): Buffer | undefined {
    if (length <= 0 || length > this.buffer.length)
      throw new RangeError(
        `BufferRing: ${length} bytes asked of a ${this.buffer.length}-byte ring`,
      );
    const start = this.placeFor(length);
    if (start === undefined) return undefined;
    const end = Math.ceil((start + length) / this.alignment) * this.alignment;
    this.held.push({ start, end });
    return this.buffer.subarray(start, start + length);
  }

  /** Give back the oldest piece. */
  giveBack(): void {
    if (this.held.shift() === undefined) throw new Error('BufferRing: nothing to give back');
  }

  /** Where a piece of `length` starts: after the newest piece, or at 0 when the end has no room. */
  private placeFor(length: number): number | undefined {
    if (this.held.length === 0) return 0;
    const oldest = this.held[0].start;
    const next = this.held[this.held.length - 1].end;
    if (next > oldest) {
      // Free: [next, end of buffer) and [0, oldest).
      if (next + length <= this.buffer.length) return next;
      return length <= oldest ? 0 : undefined;
    }
    // Wrapped: free is [next, oldest) (next === oldest: full).
    return next + length <= oldest ? next : undefined;
  }
}
