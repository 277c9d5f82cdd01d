/**
 * A peer node in its own process, for tests that need to freeze one
 * (SIGSTOP) and for the benchmark (server and client on separate cores).
 *
 *   node dist/test/support/peer-child.js [CLUSTER_ID] [NODE_ID]
 *
 * Serves a MemoryPeerBackend over TBP and gRPC on 127.0.0.1, ports chosen by
 * the kernel, and prints one JSON line {"tbpPort":…,"grpcPort":…} on stdout
 * once both listen. SIGTERM or SIGINT closes it (draining) and exits 0.
 */
import { MemoryPeerBackend } from './memory-peer-backend.js';
import { PeerServer } from '../../src/dataplane/peer/server.js';

const [clusterId = 'test-cluster', nodeId = `child-${process.pid}`] = process.argv.slice(2);

const backend = new MemoryPeerBackend({ uuid: nodeId, capacityBytes: 8 * 1024 ** 3 });
const server = new PeerServer(backend, { clusterId });
const tbp = await server.listen('127.0.0.1', 0);
const grpcPort = await server.listenGrpc('127.0.0.1', 0);
process.stdout.write(`${JSON.stringify({ tbpPort: tbp.port, grpcPort })}\n`);

const stop = () => {
  void server.close({ drainMs: 1000 }).then(() => process.exit(0));
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
