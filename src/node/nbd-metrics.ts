/** Feeds the NBD server's hooks into the node's Prometheus metrics. */
import type { NbdMetricsHooks } from '../dataplane/nbd/server.js';
import type { NodeMetrics } from './metrics.js';

export function nbdMetricsHooks(metrics: NodeMetrics): NbdMetricsHooks {
  return {
    onRequest(command, bytes, seconds, errno) {
      metrics.nbdRequests.inc({ command, result: errno ?? 'ok' });
      if (bytes > 0) metrics.nbdBytes.inc({ command }, bytes);
      if (seconds > 0) metrics.nbdLatency.observe({ command }, seconds);
    },
    onConnection(delta) {
      metrics.nbdConnections.inc(delta);
    },
  };
}
