/**
 * Writes with a FLUSH after exactly every N, through libnbd (python3-libnbd):
 * what fio's --fsync=N says, which fio 3.33 does not do at a queue depth
 * above 1 (a write the nbd engine must queue again is uncounted and counted
 * again, so "every N" comes round more often: a FLUSH every ~4 writes in most
 * runs, every N in some, depending on the server's timing — two servers can
 * be measured on two different workloads; docs/benchmarks.md, session 30).
 *
 * The driver keeps `iodepth` commands in flight and sends a FLUSH after
 * every `flushEvery` writes, in the same queue, not waiting for the writes
 * before it (a FLUSH covers the writes completed when it arrives, as with
 * fio). Its figures are written in the shape of fio's JSON — one job, write
 * iops, bw_bytes and completion-latency p99, the FLUSHes as fio's "sync" —
 * so the bench reads both the same way (fio.ts parseFioJson).
 */
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { runTool } from './tool-run.js';

/** The driver; its one argument is the JSON of DriverParameters. */
const DRIVER = String.raw`
import json, random, sys, time
import nbd

p = json.loads(sys.argv[1])
h = nbd.NBD()
h.connect_uri(p["uri"])
size, depth, every = p["blockSize"], p["iodepth"], p["flushEvery"]
blocks = p["regionBytes"] // size
sequential = p["rw"] == "write"
rng = random.Random(1)
data = bytearray(rng.randbytes(size))
measured_from = time.monotonic() + p["rampSeconds"]
ends = measured_from + p["runtimeSeconds"]
latencies = {"write": [], "flush": []}
failures = []

def completion(kind, started):
    def done(err):
        if err:
            failures.append("%s failed: errno %d" % (kind, err))
        else:
            finished = time.monotonic()
            if started >= measured_from and finished <= ends:
                latencies[kind].append(finished - started)
        return 1
    return done

writes = 0
while time.monotonic() < ends and not failures:
    while h.aio_in_flight() < depth:
        now = time.monotonic()
        block = writes % blocks if sequential else rng.randrange(blocks)
        h.aio_pwrite(data, block * size, completion=completion("write", now))
        writes += 1
        if writes % every == 0:
            h.aio_flush(completion=completion("flush", now))
    h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
if failures:
    sys.exit(failures[0])

def percentiles(values):
    values = sorted(values)
    at = lambda q: int(values[min(len(values) - 1, int(q * len(values)))] * 1e9) if values else 0
    return {"50.000000": at(0.50), "99.000000": at(0.99)}

measured = latencies["write"]
seconds = p["runtimeSeconds"]
print(json.dumps({"jobs": [{
    "error": 0,
    "read": {"iops": 0, "bw_bytes": 0},
    "write": {"iops": len(measured) / seconds, "bw_bytes": len(measured) * size / seconds,
              "clat_ns": {"percentile": percentiles(measured)}},
    "sync": {"total_ios": len(latencies["flush"]),
             "lat_ns": {"N": len(latencies["flush"]), "percentile": percentiles(latencies["flush"])}},
}]}))
`;

export interface DriverParameters {
  uri: string;
  rw: 'write' | 'randwrite';
  blockSize: number;
  iodepth: number;
  flushEvery: number;
  regionBytes: number;
  runtimeSeconds: number;
  rampSeconds: number;
}

/** A python3 that imports libnbd's module (Debian's before one earlier in PATH), or undefined. */
export function libnbdPython(): string | undefined {
  return ['/usr/bin/python3', 'python3'].find(
    (python) => spawnSync(python, ['-c', 'import nbd'], { stdio: 'ignore' }).status === 0,
  );
}

/**
 * Run the driver to completion (killed past `timeoutMs`) and write its
 * fio-shaped JSON to `outputFile`; throws with its output on failure.
 */
export async function runFlushCadence(
  parameters: DriverParameters,
  outputFile: string,
  timeoutMs: number,
): Promise<void> {
  const python = libnbdPython();
  if (!python) throw new Error('python3 cannot import nbd: apt-get install python3-libnbd');
  const json = await runTool(python, ['-c', DRIVER, JSON.stringify(parameters)], timeoutMs);
  writeFileSync(outputFile, json);
}
