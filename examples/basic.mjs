// Torus as a library: create a volume on a single node in a temporary data
// directory, write and read it through a handle, snapshot it, read the
// snapshot, clean up. Run from the project (after `npm run build`):
//   node examples/basic.mjs
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Torus } from 'torus';

const dataDir = await mkdtemp(join(tmpdir(), 'torus-example-'));
// No torusd runs on this directory: the node runs in this process.
const torus = await Torus.open({ dataDir, capacity: 256 * 1024 * 1024 });
try {
  await torus.createVolume('demo', 64 * 1024 * 1024);
  const volume = await torus.openVolume('demo');
  await volume.write(Buffer.from('hello, block storage'), 1000);
  await volume.flush(); // durable: a committed version, what a snapshot keeps
  await torus.createSnapshot('demo', 'first');
  await volume.write(Buffer.from('HELLO'), 1000); // the volume moves on…

  const now = Buffer.alloc(20);
  await volume.read(now, 1000);
  const snapshot = await torus.openVolume('demo@first'); // …its snapshot does not
  const then = Buffer.alloc(20);
  await snapshot.read(then, 1000);
  console.log(`volume:   ${now}`);
  console.log(`snapshot: ${then}`);
  console.log(await torus.listVolumes());
} finally {
  await torus.close(); // closes the handles (flushing them) and the node
  await rm(dataDir, { recursive: true, force: true });
}
