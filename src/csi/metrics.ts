/**
 * The plugin's Prometheus metrics (--metrics HOST:PORT): every CSI call
 * counted by method and status, and timed. Served at /metrics beside the
 * gRPC socket; nothing else is exposed there.
 */
import { createServer, type Server } from 'node:http';
import { Counter, Histogram, Registry } from 'prom-client';
import { respondWithMetrics } from '../common/metrics-response.js';

export class CsiMetrics {
  readonly registry = new Registry();
  private readonly calls = new Counter({
    name: 'torus_csi_calls_total',
    help: 'CSI calls answered, by method and gRPC status',
    labelNames: ['method', 'status'],
    registers: [this.registry],
  });
  private readonly seconds = new Histogram({
    name: 'torus_csi_call_seconds',
    help: 'Time to answer a CSI call, by method',
    labelNames: ['method'],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });

  record(method: string, status: string, seconds: number): void {
    this.calls.inc({ method, status });
    this.seconds.observe({ method }, seconds);
  }

  /** Serve /metrics on host:port until the returned server is closed. */
  async serve(host: string, port: number): Promise<Server> {
    const server = createServer((req, res) => {
      if (req.method !== 'GET' || (req.url ?? '/').split('?')[0] !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('not found: try /metrics\n');
        return;
      }
      respondWithMetrics(this.registry, res);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    return server;
  }
}
