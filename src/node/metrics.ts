/**
 * Prometheus metrics of a storage node (prom-client), served at /metrics.
 * Names follow Prometheus conventions: torus_ prefix, base units, _total for
 * counters.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export class NodeMetrics {
  readonly registry = new Registry();
  private readonly scrapeHooks: (() => void)[] = [];
  /** Registered first, so its collect() runs the scrape hooks before any other metric is read. */
  readonly nbdRequests = new Counter({
    name: 'torus_nbd_requests_total',
    help: 'NBD requests served, by command and result',
    labelNames: ['command', 'result'] as const,
    registers: [this.registry],
    collect: () => {
      for (const hook of this.scrapeHooks) hook();
    },
  });
  readonly nbdBytes = new Counter({
    name: 'torus_nbd_bytes_total',
    help: 'Payload bytes moved by NBD reads and writes',
    labelNames: ['command'] as const,
    registers: [this.registry],
  });
  readonly latencyBuckets = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2,
  ];
  /** Latency per command, filled at scrape time from counts kept off the hot path. */
  private latency = new Map<string, { buckets: Float64Array; sum: number; count: number }>();
  readonly nbdConnections = new Gauge({
    name: 'torus_nbd_connections',
    help: 'Open NBD connections',
    registers: [this.registry],
  });
  readonly checksumErrors = new Counter({
    name: 'torus_checksum_errors_total',
    help: 'Blocks whose stored checksum did not match; never served as data',
    labelNames: ['volume'] as const,
    registers: [this.registry],
  });
  readonly flushSeconds = new Histogram({
    name: 'torus_flush_seconds',
    help: 'Time to commit a volume version (write, sync, metadata commit)',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5],
    registers: [this.registry],
  });
  readonly flushedBlocks = new Counter({
    name: 'torus_flushed_blocks_total',
    help: 'Blocks written to the local store by flushes',
    registers: [this.registry],
  });
  readonly spillSeconds = new Histogram({
    name: 'torus_spill_seconds',
    help: 'Time to spill a round of dirty blocks to the store under cache pressure (writers wait for room meanwhile once the cache is full of dirty blocks)',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly spilledBlocks = new Counter({
    name: 'torus_spilled_blocks_total',
    help: 'Dirty blocks spilled to the store for the next version under cache pressure',
    registers: [this.registry],
  });
  readonly foldedBlocks = new Counter({
    name: 'torus_folded_blocks_total',
    help: 'Blocks rewritten whole by folds once their volume was quiet: patches (each frees the patch and, with its last patch, its base) and whole blocks in short gaps between them',
    registers: [this.registry],
  });

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'torus_process_' });
    // prom-client calls get() with the metric as `this`; the collector reads the node's counters.
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    // A histogram assembled from buckets counted elsewhere: prom-client has no
    // setter for bucket counts, so this collector renders them itself.
    this.registry.registerMetric({
      name: 'torus_nbd_request_seconds',
      help: 'NBD request latency from decode to reply',
      type: 'histogram',
      aggregator: 'sum',
      async get() {
        const values: {
          labels: Record<string, string | number>;
          value: number;
          metricName: string;
        }[] = [];
        for (const [command, h] of self.latency) {
          let cumulative = 0;
          self.latencyBuckets.forEach((le, i) => {
            cumulative += h.buckets[i];
            values.push({
              labels: { command, le },
              value: cumulative,
              metricName: 'torus_nbd_request_seconds_bucket',
            });
          });
          values.push({
            labels: { command, le: '+Inf' },
            value: h.count,
            metricName: 'torus_nbd_request_seconds_bucket',
          });
          values.push({
            labels: { command },
            value: h.sum,
            metricName: 'torus_nbd_request_seconds_sum',
          });
          values.push({
            labels: { command },
            value: h.count,
            metricName: 'torus_nbd_request_seconds_count',
          });
        }
        return {
          name: 'torus_nbd_request_seconds',
          help: 'NBD request latency from decode to reply',
          type: 'histogram',
          aggregator: 'sum',
          values,
        };
      },
      reset() {},
    } as never);
  }

  /** Run before every scrape, to copy hot-path counts into metrics. */
  onScrape(hook: () => void): void {
    this.scrapeHooks.push(hook);
  }

  setLatency(command: string, buckets: Float64Array, sum: number, count: number): void {
    this.latency.set(command, { buckets, sum, count });
  }

  /** Gauges read at scrape time from whoever owns the numbers. */
  gauge(name: string, help: string, read: () => number): void {
    new Gauge({
      name,
      help,
      registers: [this.registry],
      collect() {
        this.set(read());
      },
    });
  }
}
