/**
 * A broken invariant met while serving a request (InvariantError, see
 * src/common/assert.ts) fails that request with EIO and nothing else: the
 * session goes on and the next request is served.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pino } from 'pino';
import { assert as invariant } from '../src/common/assert.js';
import { MemoryExport, MemoryExportProvider } from './support/memory-export.js';
import { NbdServer } from '../src/dataplane/nbd/server.js';
import { NBD_CMD_FLUSH, NBD_CMD_READ, NBD_EIO } from '../src/dataplane/nbd/wire.js';
import { RawClient } from './nbd-clients.js';

test(
  'an InvariantError thrown by the export is answered with EIO; the session goes on',
  { timeout: 30_000 },
  async () => {
    const exp = new MemoryExport({ name: 'inv', size: 1024 * 1024 });
    let broken = true;
    const flush = exp.flush.bind(exp);
    exp.flush = async () => {
      invariant(!broken, 'a cache slot was freed twice');
      return flush();
    };
    const server = new NbdServer(new MemoryExportProvider([exp]), {
      log: pino({ level: 'silent' }),
    });
    const { port } = await server.listenTcp('127.0.0.1', 0);
    try {
      const { client } = await RawClient.ready(`nbd://127.0.0.1:${port}/inv`);
      client.request(NBD_CMD_FLUSH, 0, 0, 1);
      assert.deepEqual(await client.reply(), { error: NBD_EIO, cookie: 1, data: Buffer.alloc(0) });
      broken = false;
      client.request(NBD_CMD_FLUSH, 0, 0, 2);
      assert.deepEqual(await client.reply(), { error: 0, cookie: 2, data: Buffer.alloc(0) });
      client.request(NBD_CMD_READ, 0, 4096, 3);
      assert.deepEqual(await client.reply(4096), { error: 0, cookie: 3, data: Buffer.alloc(4096) });
      client.close();
    } finally {
      await server.close({ drainMs: 2000 });
    }
  },
);
