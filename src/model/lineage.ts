/**
 * A volume's lineage: which volume owns the blocks a version's map names.
 *
 * A map entry names a block by (generation, index); the volume is implicit.
 * For an ordinary volume every block it references is its own. A clone
 * starts as its source's map at some generation G and commits G+1, G+2, …
 * of its own: its entries of generation ≤ G are blocks of the source (or of
 * the source's own ancestors), shared copy-on-write, never copied. The
 * lineage says which: a list of ancestors, nearest first, each owning the
 * generations up to `throughGeneration` and above the next one's.
 *
 *   clone C of S@7, S itself a clone of P@3:
 *     C.ancestors = [{ S, through 7 }, { P, through 3 }]
 *     generation 9 → C, 5 → S, 2 → P
 *
 * Generations are what makes this work without per-entry volume ids: a
 * clone's first commit is above its source's generation at the time, and
 * each volume's generations only go up, so the ranges never overlap.
 */
export interface Ancestor {
  volumeId: number;
  /** The highest generation whose blocks this ancestor owns in the descendant's maps. */
  throughGeneration: number;
}

/**
 * The volume owning generation `generation`'s blocks in the maps of volume
 * `volumeId` with `ancestors` (nearest first, throughGeneration strictly
 * decreasing).
 */
export function ownerOf(
  volumeId: number,
  ancestors: readonly Ancestor[],
  generation: number,
): number {
  let owner = volumeId;
  for (const ancestor of ancestors) {
    if (generation > ancestor.throughGeneration) return owner;
    owner = ancestor.volumeId;
  }
  return owner;
}

/** Is `ancestors` well formed: ids distinct from the volume's and each other, generations strictly decreasing and positive? */
export function lineageProblem(
  volumeId: number,
  ancestors: readonly Ancestor[],
): string | undefined {
  const seen = new Set([volumeId]);
  let above = Infinity;
  for (const { volumeId: id, throughGeneration } of ancestors) {
    if (!Number.isSafeInteger(id) || id <= 0) return `ancestor id ${id} is not a volume id`;
    if (seen.has(id)) return `volume ${id} appears twice in the lineage`;
    seen.add(id);
    if (!Number.isSafeInteger(throughGeneration) || throughGeneration < 0)
      return `ancestor ${id}: generation ${throughGeneration} is not a generation`;
    if (throughGeneration >= above)
      return `ancestor ${id}: generation ${throughGeneration} is not below the nearer ancestor's ${above}`;
    above = throughGeneration;
  }
  return undefined;
}

/** The lineage of a clone of a version at `generation` of volume `sourceId` with `sourceAncestors`. */
export function cloneLineage(
  sourceId: number,
  sourceAncestors: readonly Ancestor[],
  generation: number,
): Ancestor[] {
  // Ancestors owning nothing at or below `generation` drop out: a clone of
  // S at a generation no higher than S's own start references none of S.
  const kept = sourceAncestors.filter((a) => a.throughGeneration < generation);
  if (generation === 0) return []; // nothing was ever committed: nothing to share
  const nearestBelow = sourceAncestors.filter((a) => a.throughGeneration >= generation);
  // The source's ancestors whose range reaches `generation` still own
  // the generations up to it; cap the nearest such at `generation`.
  if (nearestBelow.length > 0) {
    const owner = nearestBelow[nearestBelow.length - 1];
    return [{ volumeId: owner.volumeId, throughGeneration: generation }, ...kept];
  }
  return [{ volumeId: sourceId, throughGeneration: generation }, ...kept];
}
