/**
 * A child process for the threaded store's close() test: a lease with
 * keepalive and a watch on the control-plane thread, then close(), then it
 * simply returns. If the worker, its port or a timer were left behind the
 * process would not exit, and the test, which waits for the exit, fails.
 *
 *   node threaded-close-exit.js <endpoint> <prefix>
 */
import { openThreadedMetadataStore } from '../../src/controlplane/thread/threaded-store.js';

const [endpoint, prefix] = process.argv.slice(2);
const store = await openThreadedMetadataStore({ endpoints: endpoint, prefix, callTimeoutMs: 2000 });
const lease = await store.grantLease(5);
await store.put('leased', Buffer.from('x'), { lease });
let events = 0;
// Only this key: the revoke in close() may deliver the delete of 'leased' before the watch ends.
await store.watchPrefix('watched', {}, () => events++);
await store.put('watched', Buffer.from('y'));
await new Promise((resolve) => setTimeout(resolve, 500)); // let keepalives run
await store.close();
process.stdout.write(`closed ${lease.state} events ${events}\n`);
