/**
 * How many copies of a block a volume may ask for: the ring names at most
 * this many distinct nodes per block (dataplane/replication/placement.ts).
 */
import { UsageError } from '../common/errors.js';

export const MAX_REPLICATION = 8;

/** A volume's own replication factor: only in a cluster, 1 to MAX_REPLICATION. */
export function checkReplication(replication: number | undefined, cluster: boolean): void {
  if (replication === undefined) return;
  if (!cluster)
    throw new UsageError('--replication needs a cluster (-C/--etcd): a single node keeps one copy');
  if (!Number.isSafeInteger(replication) || replication < 1 || replication > MAX_REPLICATION) {
    throw new UsageError(
      `replication must be a whole number from 1 to ${MAX_REPLICATION}, got ${replication}`,
    );
  }
}
