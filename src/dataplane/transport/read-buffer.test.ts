import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, TLSSocket } from 'node:tls';
import { makeTestPki, type TestPki } from '../../../test/tls-pki.js';
import { missing } from '../../../test/tools.js';
import { loadClientTls, loadServerTls } from '../nbd/tls-config.js';
import { READ_BUFFER_BYTES, readTlsIntoBuffer } from './read-buffer.js';

/**
 * readTlsIntoBuffer reaches into net.Socket's private `onread` fields: these
 * tests are what notices when a Node release moves them (the NBD server then
 * falls back to 'data' events, correct but slower).
 */
describe(
  'readTlsIntoBuffer (a TLSSocket wrapping an accepted socket)',
  {
    skip: missing('openssl'),
    timeout: 60_000,
  },
  () => {
    let work: string;
    let pki: TestPki;
    let server: Server;
    let accepted: (socket: Socket) => void;

    before(async () => {
      work = await mkdtemp(join(tmpdir(), 'torus-read-buffer-'));
      pki = await makeTestPki(work);
      server = createServer({ pauseOnConnect: true }, (socket) => accepted(socket));
      await new Promise<void>((ready) => server.listen(0, '127.0.0.1', ready));
    });
    after(async () => {
      server.close();
      await rm(work, { recursive: true, force: true });
    });

    /** A client sends `payload` in `writeBytes` pieces and ends; the server side reads it through readTlsIntoBuffer. */
    async function transfer(payload: Buffer, writeBytes: number, pauseEvery?: number) {
      const serverSide = new Promise<{ views: Buffer[]; received: Buffer; adopted: boolean }>(
        (done, fail) => {
          accepted = (plain) => {
            const socket = new TLSSocket(
              plain,
              loadServerTls('on', { certificates: pki.server })!.socketOptions,
            );
            const views: Buffer[] = [];
            const copies: Buffer[] = [];
            let sincePause = 0;
            const adopted = readTlsIntoBuffer(socket, (view) => {
              views.push(view);
              copies.push(Buffer.from(view));
              sincePause += view.length;
              if (pauseEvery !== undefined && sincePause >= pauseEvery) {
                sincePause = 0;
                socket.pause();
                setTimeout(() => socket.resume(), 5);
              }
            });
            socket.on('data', () => fail(new Error("a 'data' event after readTlsIntoBuffer")));
            socket.on('end', () => {
              socket.end();
              done({ views, received: Buffer.concat(copies), adopted });
            });
            socket.on('error', fail);
            plain.resume();
            socket.resume();
          };
        },
      );
      const client = tlsConnect({
        port: (server.address() as { port: number }).port,
        host: '127.0.0.1',
        ...loadClientTls({ certificates: pki.client }).connectOptions,
      });
      await new Promise<void>((ok, fail) => client.once('secureConnect', ok).once('error', fail));
      for (let at = 0; at < payload.length; at += writeBytes)
        client.write(payload.subarray(at, at + writeBytes));
      client.end();
      client.resume();
      return serverSide;
    }

    it('delivers every byte in order, each record into the same reused buffer', async () => {
      const payload = randomBytes(8 * 1024 * 1024 + 123);
      const { views, received, adopted } = await transfer(payload, 1024 * 1024);
      assert.equal(adopted, true, 'this Node no longer lets a TLSSocket read into our buffer');
      assert.ok(received.equals(payload), 'bytes differ from what was sent');
      const buffers = new Set(views.map((view) => view.buffer));
      assert.equal(buffers.size, 1, `${buffers.size} read buffers were used; expected one, reused`);
      for (const view of views) assert.ok(view.length > 0 && view.length <= READ_BUFFER_BYTES);
    });

    it('pause() stops and resume() restarts reading; end still arrives', async () => {
      const payload = randomBytes(2 * 1024 * 1024);
      const { received } = await transfer(payload, 4096, 256 * 1024);
      assert.ok(received.equals(payload), 'bytes differ from what was sent');
    });
  },
);
