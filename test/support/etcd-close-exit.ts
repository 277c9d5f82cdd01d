/**
 * A child process for the etcd close() test: uses a lease with keepalive and
 * a watch, closes the store, and then simply returns. If anything (a timer,
 * a stream, a channel) were left behind, the process would not exit and the
 * test, which waits for the exit, would fail.
 *
 *   node etcd-close-exit.js <endpoint> <prefix>
 */
import { openEtcdMetadataStore } from '../../src/controlplane/metadata/etcd/index.js';

const [endpoint, prefix] = process.argv.slice(2);
const store = await openEtcdMetadataStore({ endpoints: endpoint, prefix, callTimeoutMs: 2000 });
const lease = await store.grantLease(5);
await store.put('leased', Buffer.from('x'), { lease });
await store.watchPrefix('', {}, () => undefined);
await new Promise((resolve) => setTimeout(resolve, 500)); // let keepalives run
await store.close();
process.stdout.write(`closed ${lease.state}\n`);
