/**
 * Feeds the NBD server's hooks into the node's Prometheus metrics.
 *
 * Hot path: a request costs a few array increments here, not prom-client
 * calls — a labelled inc()/observe() hashes its label set on every call,
 * which at 50k requests a second is a measurable share of a core. The plain
 * counters are copied into the prom-client metrics when Prometheus scrapes.
 */
import { Counter } from 'prom-client';
import type { Errno } from '../common/errors.js';
import type { NbdMetricsHooks } from '../dataplane/nbd/server.js';
import type { NodeMetrics } from './metrics.js';

interface CommandTotals {
  ok: number;
  errors: Map<Errno, number>;
  bytes: number;
  /** Counts per latency bucket (same bounds as the histogram), cumulative at scrape. */
  buckets: Float64Array;
  sum: number;
  count: number;
}

export function nbdMetricsHooks(metrics: NodeMetrics): NbdMetricsHooks {
  const bounds = metrics.latencyBuckets;
  const totals = new Map<string, CommandTotals>();
  const totalsFor = (command: string): CommandTotals => {
    let t = totals.get(command);
    if (!t)
      totals.set(
        command,
        (t = {
          ok: 0,
          errors: new Map(),
          bytes: 0,
          buckets: new Float64Array(bounds.length + 1),
          sum: 0,
          count: 0,
        }),
      );
    return t;
  };
  // Refused and shed connections: rare, so counted straight into prom-client.
  const dropped = new Counter({
    name: 'torus_nbd_connections_dropped_total',
    help: 'NBD connections refused (refused-per-client, refused-full), handshakes shed for a newcomer (shed) or timed out (handshake-timeout)',
    labelNames: ['reason'] as const,
    registers: [metrics.registry],
  });
  metrics.onScrape(() => {
    metrics.nbdRequests.reset();
    metrics.nbdBytes.reset();
    for (const [command, t] of totals) {
      if (t.ok) metrics.nbdRequests.inc({ command, result: 'ok' }, t.ok);
      for (const [errno, n] of t.errors) metrics.nbdRequests.inc({ command, result: errno }, n);
      if (t.bytes) metrics.nbdBytes.inc({ command }, t.bytes);
      if (t.count) metrics.setLatency(command, t.buckets, t.sum, t.count);
    }
  });
  return {
    onRequest(command, bytes, seconds, errno) {
      const t = totalsFor(command);
      if (errno === undefined) t.ok++;
      else t.errors.set(errno, (t.errors.get(errno) ?? 0) + 1);
      t.bytes += bytes;
      if (seconds > 0) {
        let i = 0;
        while (i < bounds.length && seconds > bounds[i]) i++;
        t.buckets[i]++;
        t.sum += seconds;
        t.count++;
      }
    },
    onConnection(delta) {
      metrics.nbdConnections.inc(delta);
    },
    onDropped(reason) {
      dropped.inc({ reason });
    },
  };
}
