/**
 * Hostile connections leave nothing behind: after a thousand fuzzed cases
 * (garbage, lying options, bad requests, abandoned writes, idle sockets:
 * test/support/nbd-fuzz.ts) against NbdServer over MemoryExport in this
 * process, every per-connection table is empty again — the open
 * connections, the admission counts, the sessions the export saw opened.
 * Memory that grows with hostile input would first show here.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { pino } from 'pino';
import { NbdServer } from '../src/dataplane/nbd/server.js';
import { MemoryExport, MemoryExportProvider } from './support/memory-export.js';
import { Rng, fuzzRound } from './support/nbd-fuzz.js';

const MiB = 1024 * 1024;
const quiet = pino({ level: 'silent' });
const CASES = 1000;

describe('hostile NBD connections leave no per-connection state', { timeout: 120_000 }, () => {
  test(`${CASES} fuzzed cases, then every table is empty`, async () => {
    const exp = new MemoryExport({ name: 'fuzz', size: 64 * MiB });
    const server = new NbdServer(new MemoryExportProvider([exp]), { log: quiet });
    try {
      const { port } = await server.listenTcp('127.0.0.1', 0);
      const target = { host: '127.0.0.1', port, exportName: 'fuzz', exportBytes: 64 * MiB };
      await fuzzRound(target, new Rng(12), CASES, 64);
      // Every case has destroyed its socket; the server sees each close within moments.
      const empty = () =>
        server.connectionCount === 0 &&
        server.admitted.handshaking === 0 &&
        server.admitted.established === 0 &&
        exp.openSessions === 0;
      for (let i = 0; i < 100 && !empty(); i++) await new Promise((r) => setTimeout(r, 100));
      assert.equal(server.connectionCount, 0, 'open connections');
      assert.deepEqual(server.admitted, { handshaking: 0, established: 0 }, 'admission counts');
      assert.equal(exp.openSessions, 0, 'sessions still open on the export');
    } finally {
      await server.close({ drainMs: 1000 });
    }
  });
});
