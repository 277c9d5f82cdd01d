/**
 * Where a cluster volume's replicated intent log stands, as its committed
 * record says (the record's `intent`; docs/cluster-flush.md). A writer
 * holding the volume's lock at epoch E appends each FLUSH's records, numbered
 * 1, 2, … under E, to every holder; each commit it lands says which of them
 * the version holds. The state is written in the same compare-and-swap as
 * the version, so it is never ahead of or behind the data.
 */
export interface IntentState {
  /** The lock epoch whose records `holders` keep. Records under a lower epoch are in this version… */
  epoch: number;
  /** …and so are those under `epoch` numbered below this. */
  seq: number;
  /** The nodes (uuids) holding epoch `epoch`'s records. */
  holders: string[];
}

/** Whether the version whose record says `state` holds record (token, seq). No state: none is held. */
export function heldByVersion(state: IntentState | undefined, token: number, seq: number): boolean {
  if (!state) return false;
  return token < state.epoch || (token === state.epoch && seq < state.seq);
}

/** The same state: same epoch, bound and holders (in order). */
export function sameIntentState(a: IntentState | undefined, b: IntentState | undefined): boolean {
  if (!a || !b) return !a && !b;
  return (
    a.epoch === b.epoch &&
    a.seq === b.seq &&
    a.holders.length === b.holders.length &&
    a.holders.every((h, i) => h === b.holders[i])
  );
}
