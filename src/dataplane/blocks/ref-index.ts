/**
 * RefIndex: which slot holds each block ref, as maps of numbers (volume →
 * generation → index → slot) rather than one map keyed by a string made of
 * the three.
 *
 * Why: the index holds an entry per stored block, and every store read
 * looks a ref up. Keyed by strings, an entry cost about 62 bytes and a
 * lookup built a string first (~670 ns for 491,520 entries on the VM of
 * docs/benchmarks.md); keyed by numbers, about 30 bytes and ~130 ns.
 * Indexes are integers below 2^53 (map pages' high bit included); a map of
 * numbers keeps them exactly.
 *
 * Iterating while entries come and go: an entry present throughout is seen
 * once, one added or removed meanwhile may or may not be (each Map keeps
 * that promise, and an inner map is dropped only once empty).
 */
export class RefIndex {
  private readonly volumes = new Map<number, Map<number, Map<number, number>>>();
  private count = 0;

  get size(): number {
    return this.count;
  }

  get(volumeId: number, generation: number, index: number): number | undefined {
    return this.volumes.get(volumeId)?.get(generation)?.get(index);
  }

  /** Map the ref to `slot`; returns the slot it named before, if any. */
  set(volumeId: number, generation: number, index: number, slot: number): number | undefined {
    let generations = this.volumes.get(volumeId);
    if (!generations) this.volumes.set(volumeId, (generations = new Map()));
    let indexes = generations.get(generation);
    if (!indexes) generations.set(generation, (indexes = new Map()));
    const previous = indexes.get(index);
    indexes.set(index, slot);
    if (previous === undefined) this.count++;
    return previous;
  }

  /** Forget the ref; returns the slot it named, if any. */
  delete(volumeId: number, generation: number, index: number): number | undefined {
    const generations = this.volumes.get(volumeId);
    const indexes = generations?.get(generation);
    const slot = indexes?.get(index);
    if (slot === undefined) return undefined;
    indexes!.delete(index);
    this.count--;
    if (indexes!.size === 0) {
      generations!.delete(generation);
      if (generations!.size === 0) this.volumes.delete(volumeId);
    }
    return slot;
  }

  /** Every slot the index names. */
  *slots(): IterableIterator<number> {
    for (const generations of this.volumes.values())
      for (const indexes of generations.values()) yield* indexes.values();
  }
}
