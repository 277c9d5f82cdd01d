/**
 * A cluster node's /metrics gauges of its intent holder log
 * (node/local-storage.ts registerHolderLogGauges) read the log as it is.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { logger } from '../src/common/log.js';
import { hasher } from '../src/dataplane/blocks/hash.js';
import { HolderLog, MIN_HOLDER_LOG_BYTES } from '../src/dataplane/intent-log/holder-log.js';
import { HOLDER_FRAME_BYTES } from '../src/dataplane/intent-log/holder-record.js';
import * as w from '../src/dataplane/peer/wire.js';
import { registerHolderLogGauges } from '../src/node/local-storage.js';
import { NodeMetrics } from '../src/node/metrics.js';

test(
  '/metrics shows the holder log: size, bytes in use, records held, wraps, refusals',
  { timeout: 30_000 },
  async () => {
    const hash = await hasher();
    const dir = await mkdtemp(join(tmpdir(), 'torus-holder-metrics-'));
    const holder = await HolderLog.open(dir, MIN_HOLDER_LOG_BYTES, logger('holder-metrics-test'));
    try {
      const metrics = new NodeMetrics();
      registerHolderLogGauges(metrics, holder);
      const records = [1, 2].map((seq) => {
        const bytes = Buffer.alloc(w.INTENT_RECORD_HEADER_BYTES + 4096, seq);
        w.encodeIntentHeader(bytes, 0, {
          volumeId: 7,
          flags: 0,
          token: 3,
          seq,
          offset: 0,
          length: 4096,
        });
        w.stampIntentRecord(bytes, 0, hash);
        return w.decodeIntentRecord(bytes, 0, bytes.length);
      });
      await holder.append(records);
      const text = await metrics.registry.metrics();
      const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1]);
      assert.equal(value('torus_intent_holder_log_bytes'), holder.fileBytes);
      assert.equal(
        value('torus_intent_holder_log_used_bytes'),
        2 * (HOLDER_FRAME_BYTES + w.INTENT_RECORD_HEADER_BYTES + 4096),
      );
      assert.equal(value('torus_intent_holder_log_records'), 2);
      assert.equal(value('torus_intent_holder_log_wraps_total'), 0);
      assert.equal(value('torus_intent_holder_log_full_total'), 0);
    } finally {
      await holder.close();
      await rm(dir, { recursive: true, force: true });
    }
  },
);
