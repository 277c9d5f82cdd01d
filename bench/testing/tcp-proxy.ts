/**
 * A stand-in node server for testing the profiler without torus: it relays
 * every connection on 127.0.0.1:LISTEN_PORT to 127.0.0.1:TARGET_PORT (an
 * nbdkit, say), so fio can drive real NBD traffic through a node process.
 *
 *   node dist/bench/testing/tcp-proxy.js LISTEN_PORT TARGET_PORT
 */
import { createConnection, createServer } from 'node:net';

const [listenPort, targetPort] = process.argv.slice(2).map(Number);
if (!Number.isInteger(listenPort) || !Number.isInteger(targetPort)) {
  process.stderr.write('usage: tcp-proxy LISTEN_PORT TARGET_PORT\n');
  process.exit(2);
}

const server = createServer((client) => {
  const upstream = createConnection({ host: '127.0.0.1', port: targetPort });
  client.pipe(upstream).pipe(client);
  // One side failing ends the relay; the other side sees a close, as it would from a real server.
  client.on('error', () => upstream.destroy());
  upstream.on('error', () => client.destroy());
});
server.listen(listenPort, '127.0.0.1', () =>
  process.stdout.write(`relaying 127.0.0.1:${listenPort} to 127.0.0.1:${targetPort}\n`),
);
