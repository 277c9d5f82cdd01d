/**
 * A child process for the embedded store's crash and lock tests.
 *
 *   node embedded-writer.js <dir> write   open, put a leased key, then write
 *                                         forever from 8 concurrent writers,
 *                                         printing "ack <key> <revision>" only
 *                                         after each put resolved
 *   node embedded-writer.js <dir> hold    open and wait to be killed
 *
 * Prints "ready <pid>" once the store is open. Never exits on its own: the
 * test kills it with SIGKILL, which is the point.
 */
import { openEmbeddedMetadataStore } from '../../src/controlplane/metadata/embedded/index.js';

const [dir, mode] = process.argv.slice(2);
const store = await openEmbeddedMetadataStore(dir);
if (mode === 'write') {
  const lease = await store.grantLease(60);
  await store.put('leased', Buffer.from('gone after a crash'), { lease });
}
process.stdout.write(`ready ${process.pid}\n`);
if (mode === 'write') {
  const writer = async (id: number) => {
    for (let i = 0; ; i++) {
      const key = `crash/${id}/${String(i).padStart(6, '0')}`;
      const revision = await store.put(key, Buffer.from(`value ${id} ${i}`));
      process.stdout.write(`ack ${key} ${revision}\n`);
    }
  };
  for (let id = 0; id < 8; id++) void writer(id);
} else {
  setInterval(() => undefined, 60_000);
}
