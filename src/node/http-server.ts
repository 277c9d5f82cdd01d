/**
 * The node's public HTTP endpoint (--host/--port): /metrics for Prometheus
 * and /healthz for liveness probes. Read-only; administration is on the
 * unix socket (admin-api.ts).
 */
import { createServer, type Server } from 'node:http';
import { respondWithMetrics } from '../common/metrics-response.js';
import type { NodeMetrics } from './metrics.js';

export async function startHttpServer(
  host: string,
  port: number,
  metrics: NodeMetrics,
  healthy: () => { ok: boolean; detail: unknown },
): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method === 'GET' && path === '/metrics') {
      respondWithMetrics(metrics.registry, res);
      return;
    }
    if (req.method === 'GET' && path === '/healthz') {
      const { ok, detail } = healthy();
      res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ ok, ...((detail as object) ?? {}) }));
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found: try /metrics or /healthz\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}
