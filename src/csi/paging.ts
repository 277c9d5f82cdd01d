/**
 * Paging of ListVolumes and ListSnapshots. Entries are listed in order of
 * their id; a token is "the id after which the next page starts", so a
 * page is stable when entries before it come and go. Tokens are opaque to
 * the CO (base64url of the id with a version prefix); one this driver did
 * not make is ABORTED, as the spec asks, so the caller starts over.
 */
import { CsiError, GrpcStatus, invalidArgument } from './csi-error.js';

const PREFIX = 't1.';

export function encodeToken(lastId: string): string {
  return PREFIX + Buffer.from(lastId, 'utf8').toString('base64url');
}

/** The id a token continues after; ABORTED when it is not one of ours. */
export function decodeToken(token: string): string {
  const body = token.startsWith(PREFIX) ? token.slice(PREFIX.length) : undefined;
  const id =
    body !== undefined && /^[A-Za-z0-9_-]+$/.test(body)
      ? Buffer.from(body, 'base64url').toString('utf8')
      : '';
  if (id === '' || encodeToken(id) !== token)
    throw new CsiError(
      GrpcStatus.ABORTED,
      `starting_token "${token}" was not made by this driver: list again without it`,
    );
  return id;
}

export interface Page<T> {
  entries: T[];
  /** '' when this page is the last. */
  next_token: string;
}

/** One page of `items` (any order; sorted here by id) after `starting_token`, at most `max_entries` (0: all). */
export function paginate<T>(
  items: T[],
  idOf: (item: T) => string,
  maxEntries: unknown,
  startingToken: unknown,
): Page<T> {
  const max = Number(maxEntries ?? 0);
  if (!Number.isSafeInteger(max) || max < 0)
    throw invalidArgument(`max_entries must not be negative, got ${String(maxEntries)}`);
  const after =
    typeof startingToken === 'string' && startingToken !== ''
      ? decodeToken(startingToken)
      : undefined;
  const sorted = [...items].sort((a, b) => compare(idOf(a), idOf(b)));
  const rest =
    after === undefined ? sorted : sorted.filter((item) => compare(idOf(item), after) > 0);
  if (max === 0 || rest.length <= max) return { entries: rest, next_token: '' };
  const entries = rest.slice(0, max);
  return { entries, next_token: encodeToken(idOf(entries[entries.length - 1])) };
}

/** Code-unit order: the same on every node and every run (no locale). */
function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
