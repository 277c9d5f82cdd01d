/** Reading a running node's /metrics (torusd `--port`) in tests. */

/**
 * The value of one series on a node's metrics port — its name with labels
 * exactly as /metrics prints them, e.g. `torus_store_patches` or
 * `torus_nbd_connections_dropped_total{reason="shed"}` — or undefined when
 * the node does not print it (a labelled counter not yet counted).
 */
export async function scrapeMetric(port: number, series: string): Promise<number | undefined> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/** scrapeMetric for a series the node must print: throws, naming it, when absent. */
export async function metricValue(port: number, series: string): Promise<number> {
  const value = await scrapeMetric(port, series);
  if (value === undefined) throw new Error(`${series} is not in /metrics on port ${port}`);
  return value;
}
