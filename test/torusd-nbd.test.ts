/**
 * The real-client NBD conformance suite (test/nbd-clients.ts) against the
 * product: a torusd process serving a copy-on-write volume from its store,
 * over TCP and its unix socket.
 */
import { makeDataDir, removeDir, startTorusd } from './torusd-process.js';
import { nbdClientSuite } from './nbd-clients.js';

nbdClientSuite('torusd', async () => {
  const dir = await makeDataDir('nbd');
  const node = await startTorusd({
    dataDir: dir,
    size: '1GiB',
    args: ['--ensure-volume', 'suite=256MiB'],
  });
  return {
    uri: node.uri('suite'),
    unixUri: node.unixUri('suite'),
    async stop() {
      await node.stop('SIGTERM');
      await removeDir(dir);
    },
  };
});
