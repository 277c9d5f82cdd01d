/**
 * What this machine gives TLS at all, for the TLS bench's ceiling lines:
 *
 * - `aesGcmMegabytesPerSecond(bits)`: one core's AES-GCM rate on 16 KiB
 *   records (`openssl speed -evp aes-N-gcm`), the cipher alone.
 * - `nodeStreamMibPerSecond(pki, seconds, tls)`: one stream of 1 MiB writes
 *   from this process to a child Node process that only counts what it
 *   receives, over TLS (the NBD server's certificate, the server's cipher
 *   order from tls-config.ts) or clear TCP. No NBD, no storage: the ratio of
 *   the two is the most a Node server can keep of its clear-text throughput
 *   over TLS on these cores, with OpenSSL on both ends.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect as netConnect, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import type { TestPki } from '../test/tls-pki.js';
import { runOk } from '../test/tools.js';

/** Kilobytes (1000 B) per second for 16 KiB blocks, as openssl prints them, in MB/s. */
export async function aesGcmMegabytesPerSecond(bits: 128 | 256): Promise<number> {
  const out = await runOk('openssl', [
    'speed',
    '-evp',
    `aes-${bits}-gcm`,
    '-seconds',
    '1',
    '-bytes',
    '16384',
  ]);
  const line = new RegExp(`aes-${bits}-gcm\\s+([\\d.]+)k`, 'i').exec(out);
  if (!line) throw new Error(`openssl speed printed no aes-${bits}-gcm figure:\n${out}`);
  return Number(line[1]) / 1000;
}

/**
 * The sink: a TLS (or TCP) server on an ephemeral port that prints the port,
 * counts bytes until the client ends, prints the count and exits. It loads
 * the compiled tls-config.js so it serves with the NBD server's settings.
 */
const SINK = `
const net = require('node:net');
const tls = require('node:tls');
const useTls = process.env.SINK_TLS === '1';
import(process.env.SINK_TLS_CONFIG).then(({ loadServerTls }) => {
  const options = useTls ? loadServerTls('on', { certificates: process.env.SINK_CERTS }).socketOptions : undefined;
  const server = net.createServer((plain) => {
    const socket = useTls ? new tls.TLSSocket(plain, options) : plain;
    let bytes = 0;
    socket.on('data', (chunk) => (bytes += chunk.length));
    socket.on('end', () => {
      process.stdout.write('bytes ' + bytes + '\\n');
      socket.end();
      server.close();
    });
  });
  server.listen(0, '127.0.0.1', () => process.stdout.write('port ' + server.address().port + '\\n'));
});
`;

export async function nodeStreamMibPerSecond(
  pki: TestPki,
  seconds: number,
  tls: boolean,
): Promise<number> {
  const tlsConfig = new URL('../src/dataplane/nbd/tls-config.js', import.meta.url).href;
  const sink = spawn(process.execPath, ['-e', SINK], {
    env: {
      ...process.env,
      SINK_TLS: tls ? '1' : '0',
      SINK_CERTS: pki.server,
      SINK_TLS_CONFIG: tlsConfig,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let printed = '';
  const said = (pattern: RegExp) =>
    new Promise<string>((found, fail) => {
      const check = () => {
        const m = pattern.exec(printed);
        if (m) found(m[1]);
      };
      sink.stdout!.on('data', (d: Buffer) => {
        printed += d.toString();
        check();
      });
      sink.once('exit', (code) => fail(new Error(`the TLS sink exited (${code}): ${printed}`)));
      check();
    });
  try {
    const port = Number(await said(/port (\d+)/));
    const socket: Socket = tls
      ? tlsConnect({ port, host: '127.0.0.1', ca: readFileSync(join(pki.client, 'ca-cert.pem')) })
      : netConnect({ port, host: '127.0.0.1' });
    await new Promise<void>((ok, fail) =>
      socket.once(tls ? 'secureConnect' : 'connect', ok).once('error', fail),
    );
    const chunk = Buffer.alloc(1024 * 1024, 0x5a);
    const until = Date.now() + seconds * 1000;
    const started = Date.now();
    while (Date.now() < until) {
      if (!socket.write(chunk)) await new Promise((drained) => socket.once('drain', drained));
    }
    const counted = said(/bytes (\d+)/);
    socket.end();
    const bytes = Number(await counted);
    socket.destroy();
    return bytes / (1024 * 1024) / ((Date.now() - started) / 1000);
  } finally {
    sink.kill();
  }
}
