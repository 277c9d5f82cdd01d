import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, TLSSocket } from 'node:tls';
import { makeTestPki, type TestPki } from '../../../test/tls-pki.js';
import { missing } from '../../../test/tools.js';
import { loadServerTls } from './tls-config.js';

describe(
  'the server picks the TLS 1.3 suite',
  { skip: missing('openssl'), timeout: 60_000 },
  () => {
    let work: string;
    let pki: TestPki;
    let server: Server;

    before(async () => {
      work = await mkdtemp(join(tmpdir(), 'torus-tls-config-'));
      pki = await makeTestPki(work);
      const { socketOptions } = loadServerTls('on', { certificates: pki.server })!;
      server = createServer((plain) => {
        const socket = new TLSSocket(plain, socketOptions);
        socket.on('error', () => undefined);
        socket.on('end', () => socket.end());
      });
      await new Promise<void>((ready) => server.listen(0, '127.0.0.1', ready));
    });
    after(async () => {
      server.close();
      await rm(work, { recursive: true, force: true });
    });

    async function negotiated(ciphers?: string): Promise<string> {
      const client = tlsConnect({
        port: (server.address() as { port: number }).port,
        host: '127.0.0.1',
        // Not loadClientTls: its secure context would override `ciphers`. Identity is not the point here.
        rejectUnauthorized: false,
        ciphers,
      });
      await new Promise<void>((ok, fail) => client.once('secureConnect', ok).once('error', fail));
      const name = client.getCipher().name;
      client.destroy();
      return name;
    }

    it('AES-128-GCM for a client that offers AES-256-GCM first (Node and GnuTLS defaults)', async () => {
      assert.equal(
        await negotiated('TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256'),
        'TLS_AES_128_GCM_SHA256',
      );
      assert.equal(await negotiated(), 'TLS_AES_128_GCM_SHA256');
    });

    it('ChaCha20 for a client that puts it first (one without AES instructions)', async () => {
      assert.equal(
        await negotiated('TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256'),
        'TLS_CHACHA20_POLY1305_SHA256',
      );
    });
  },
);
