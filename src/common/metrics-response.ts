/** Answering a Prometheus scrape: one function for every /metrics endpoint (torusd, the CSI plugin). */
import type { ServerResponse } from 'node:http';
import type { Registry } from 'prom-client';

/** Write `registry`'s exposition text to `res` (500 with the reason if collecting fails). */
export function respondWithMetrics(registry: Registry, res: ServerResponse): void {
  registry.metrics().then(
    (text) => {
      res.writeHead(200, { 'content-type': registry.contentType });
      res.end(text);
    },
    (err: Error) => {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(`metrics failed: ${err.message}\n`);
    },
  );
}
