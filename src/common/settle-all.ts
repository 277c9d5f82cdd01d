/**
 * settleAll: wait for every promise, then reject with the first rejection's
 * reason (in array order), or resolve.
 *
 * For work that writes into, or reads from, a buffer the caller lends: an
 * NBD READ's reply buffer, a WRITE's payload. The session gives that buffer
 * back to its pool as soon as the returned promise settles, so no part of
 * the work may still touch it then. Promise.all rejects at the first
 * failure while the rest still run: a block loaded later would be copied
 * into a buffer already serving another request (or a WRITE's later block
 * copied from one), which is how a failed read could have corrupted
 * someone else's reply.
 */
export async function settleAll(pending: readonly Promise<unknown>[]): Promise<void> {
  const results = await Promise.allSettled(pending);
  for (const result of results) if (result.status === 'rejected') throw result.reason;
}
