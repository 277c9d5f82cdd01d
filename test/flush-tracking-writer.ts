/**
 * A libnbd writer that knows, block by block, what a volume may hold: it
 * streams writes with periodic FLUSHes through NBD for a while, surviving
 * errors, stalls and lost connections, then checks every 4 KiB unit of its
 * region against what the FLUSHes acknowledged.
 *
 * Every unit it writes is self-describing: 16 bytes (sequence number, unit
 * index) and then a fill derived from both, so a unit read back names the
 * write it came from and cannot be confused with another unit's or a torn
 * one. For each unit the writer keeps the set of sequence numbers it may
 * legitimately hold (0 = never written, zeros):
 *
 *   - a FLUSH that succeeds makes every write completed before it on that
 *     connection definite: the unit's set becomes {last write that
 *     succeeded} plus any failed (uncertain) writes after it;
 *   - a write that failed, timed out or whose connection died is uncertain:
 *     it may or may not have landed, so it joins the set;
 *   - writes not yet covered by a successful FLUSH are pending, and on a new
 *     connection they become uncertain (a client that lost its connection
 *     cannot know), so they join the set too. Connections are dropped when
 *     a request stalls, and (if asked) after FLUSHes kept failing.
 *
 * Anything outside the set — another write's bytes, a torn unit, stale data
 * older than an acknowledged FLUSH, zeros where a FLUSH acknowledged data —
 * is corruption.
 *
 * Output: one JSON line per event on stdout ({"ev": "flush", "t": epoch
 * seconds, "ok": bool, "err": ...}, "connect", "stall", ...), then a final
 * {"ev": "summary", ...}. The content is checked even when the final FLUSH
 * failed (then its pending writes count as uncertain). Exit 0 when every
 * unit checked out and the final FLUSH succeeded.
 */
import { run, SYSTEM_PYTHON, type RunResult } from './tools.js';

export interface WriterEvent {
  ev:
    | 'connect'
    | 'connect-failed'
    | 'flush'
    | 'write-failed'
    | 'stall'
    | 'dead'
    | 'read-only'
    | 'reconnect'
    | 'final'
    | 'summary';
  t: number;
  ok?: boolean;
  err?: string;
  [key: string]: unknown;
}

export interface WriterSummary extends WriterEvent {
  ev: 'summary';
  writes: number;
  failedWrites: number;
  flushesOk: number;
  flushesFailed: number;
  stalls: number;
  connects: number;
  finalFlushOk: boolean;
  /** Units checked and units whose content was not allowed, through each reader URI. */
  verified: { uri: string; units: number; bad: string[] }[];
}

export const FLUSH_TRACKING_WRITER = String.raw`
import hashlib, json, random, struct, sys, time
import nbd

args = json.loads(sys.argv[1])
write_uri = args["uri"]
read_uris = args["readUris"]
region = args["regionBytes"]
duration = args["seconds"]
final_seconds = args["finalFlushSeconds"]
op_timeout = args["opTimeoutSeconds"]
pause = args["pauseSeconds"]
reconnect_after = args.get("reconnectAfterFailedFlushes", 0)
rng = random.Random(args["seed"])

UNIT = 4096
UNITS = region // UNIT
MAX_UNITS = 64  # 256 KiB per write at most

def emit(ev, **kw):
    kw["ev"] = ev
    kw["t"] = time.time()
    print(json.dumps(kw), flush=True)

def unit_bytes(seq, unit):
    head = struct.pack("<QQ", seq, unit)
    fill = hashlib.sha256(head).digest() * 128
    return head + fill[: UNIT - 16]

class Timeout(Exception):
    pass

def wait(h, cookie, seconds):
    end = time.monotonic() + seconds
    while not h.aio_command_completed(cookie):  # raises nbd.Error if the command failed
        left = end - time.monotonic()
        if left <= 0:
            raise Timeout("no reply within %s s" % seconds)
        h.poll(int(min(left, 0.5) * 1000) + 1)

def connect(uri, seconds, need_write):
    h = nbd.NBD()
    h.set_full_info(True)
    h.aio_connect_uri(uri)
    end = time.monotonic() + seconds
    while not h.aio_is_ready():
        if h.aio_is_dead() or h.aio_is_closed():
            raise nbd.Error("connection died during the handshake", 0)
        left = end - time.monotonic()
        if left <= 0:
            raise Timeout("handshake took more than %s s" % seconds)
        h.poll(int(min(left, 0.5) * 1000) + 1)
    if need_write and h.is_read_only():
        try:
            why = h.get_export_description()
        except nbd.Error:
            why = ""
        raise ReadOnly(why)
    return h

class ReadOnly(Exception):
    pass

# Per unit: the sequence numbers it may hold, and the writes since the last good FLUSH.
allowed = [{0} for _ in range(UNITS)]
pending = {}  # unit -> [(seq, ok)]
seq = 0
stats = {"writes": 0, "failedWrites": 0, "flushesOk": 0, "flushesFailed": 0, "stalls": 0, "connects": 0}

def settle_flushed():
    for unit, writes in pending.items():
        last_ok = max((i for i, (_, ok) in enumerate(writes) if ok), default=None)
        if last_ok is None:
            allowed[unit] |= {s for s, _ in writes}
        else:
            allowed[unit] = {writes[last_ok][0]} | {s for s, ok in writes[last_ok + 1:] if not ok}
    pending.clear()

def settle_lost():
    # The connection is gone: its unflushed writes may or may not have landed.
    for unit, writes in pending.items():
        allowed[unit] |= {s for s, _ in writes}
    pending.clear()

h = None

def drop():
    global h
    if h is not None:
        settle_lost()
        try:
            h.aio_disconnect(0)
        except nbd.Error:
            pass
        h = None

def ensure_connected():
    global h
    if h is not None and (h.aio_is_dead() or h.aio_is_closed()):
        emit("dead")
        drop()
    if h is None:
        try:
            h = connect(write_uri, op_timeout, True)
            stats["connects"] += 1
            emit("connect")
        except ReadOnly as e:
            emit("read-only", err=str(e))
            h = None
        except (nbd.Error, Timeout) as e:
            emit("connect-failed", err=str(e))
            h = None
    return h is not None

failed_in_a_row = 0

def do_flush():
    global failed_in_a_row
    try:
        wait(h, h.aio_flush(), op_timeout)
        stats["flushesOk"] += 1
        failed_in_a_row = 0
        settle_flushed()
        emit("flush", ok=True)
        return True
    except Timeout as e:
        stats["flushesFailed"] += 1
        stats["stalls"] += 1
        emit("stall", op="flush", err=str(e))
        drop()
    except nbd.Error as e:
        stats["flushesFailed"] += 1
        failed_in_a_row += 1
        emit("flush", ok=False, err=str(e))
        if reconnect_after and failed_in_a_row >= reconnect_after:
            # As a client told to reconnect when its writes keep failing would.
            emit("reconnect", err="%d FLUSHes failed in a row" % failed_in_a_row)
            failed_in_a_row = 0
            drop()
    return False

started = time.monotonic()
while time.monotonic() - started < duration:
    if not ensure_connected():
        time.sleep(0.5)
        continue
    for _ in range(8):
        count = rng.randint(1, MAX_UNITS)
        first = rng.randrange(0, UNITS - count + 1)
        seq += 1
        data = b"".join(unit_bytes(seq, u) for u in range(first, first + count))
        buf = nbd.Buffer.from_bytearray(bytearray(data))
        stats["writes"] += 1
        ok = False
        stalled = False
        try:
            wait(h, h.aio_pwrite(buf, first * UNIT), op_timeout)
            ok = True
        except Timeout as e:
            stats["stalls"] += 1
            stalled = True
            emit("stall", op="write", err=str(e))
        except nbd.Error as e:
            emit("write-failed", err=str(e))
        for u in range(first, first + count):
            pending.setdefault(u, []).append((seq, ok))
        if not ok:
            stats["failedWrites"] += 1
            if stalled:
                drop()  # a wedged connection: abandon it, its unflushed writes become uncertain
            break
    if h is not None:
        do_flush()
    time.sleep(pause)

# Final FLUSH: must succeed within final_seconds (reconnecting as needed).
final_ok = False
end = time.monotonic() + final_seconds
while time.monotonic() < end:
    if ensure_connected() and do_flush():
        final_ok = True
        break
    time.sleep(0.5)
emit("final", ok=final_ok)
if not final_ok:
    settle_lost()  # never acknowledged: whatever is pending may or may not have landed
if h is not None:
    try:
        h.shutdown()
    except nbd.Error:
        pass
    h = None

def check(uri):
    bad = []
    r = None
    end = time.monotonic() + final_seconds
    while True:
        try:
            r = connect(uri, op_timeout, False)
            break
        except (nbd.Error, Timeout) as e:
            if time.monotonic() > end:
                return {"uri": uri, "units": 0, "bad": ["could not connect: %s" % e]}
            time.sleep(0.5)
    step = 1 << 20
    for off in range(0, region, step):
        buf = nbd.Buffer(step)
        wait(r, r.aio_pread(buf, off), 60)
        got = buf.to_bytearray()
        for i in range(0, step, UNIT):
            unit = (off + i) // UNIT
            b = bytes(got[i:i + UNIT])
            if b == bytes(UNIT):
                s = 0
            else:
                s, u = struct.unpack("<QQ", b[:16])
                if u != unit or b != unit_bytes(s, u):
                    bad.append("unit %d: bytes of no write to it (header seq %d unit %d)" % (unit, s, u))
                    continue
            if s not in allowed[unit]:
                bad.append("unit %d: holds write %d, allowed %s" % (unit, s, sorted(allowed[unit])[-4:]))
    try:
        r.shutdown()
    except nbd.Error:
        pass
    return {"uri": uri, "units": UNITS, "bad": bad[:40], "badCount": len(bad)}

verified = [check(u) for u in read_uris]
emit("summary", finalFlushOk=final_ok, verified=verified, **stats)
sys.exit(0 if final_ok and all(v["units"] and not v["bad"] for v in verified) else 1)
`;

export interface WriterOptions {
  /** Write through this URI. */
  uri: string;
  /** Check the content through each of these at the end (after the writer disconnected). */
  readUris: string[];
  regionBytes: number;
  /** How long to stream writes. */
  seconds: number;
  /** How long the final FLUSH (and each reader's connect) may keep failing. */
  finalFlushSeconds: number;
  /** One request or handshake without a reply this long counts as a stall: the connection is dropped. */
  opTimeoutSeconds: number;
  /** Between rounds of 8 writes + FLUSH. */
  pauseSeconds: number;
  /** Disconnect and connect again after this many FLUSHes failed in a row (0: never, as the kernel client). */
  reconnectAfterFailedFlushes?: number;
  seed: number;
}

export interface WriterRun {
  result: RunResult;
  events: WriterEvent[];
  summary: WriterSummary | undefined;
}

/** Run the writer to completion (bounded by its own timings plus a margin). */
export async function runFlushTrackingWriter(options: WriterOptions): Promise<WriterRun> {
  const limitMs =
    (options.seconds +
      options.finalFlushSeconds * (1 + options.readUris.length) +
      options.opTimeoutSeconds * 4 +
      60) *
    1000;
  const result = await run(SYSTEM_PYTHON, ['-c', FLUSH_TRACKING_WRITER, JSON.stringify(options)], {
    timeoutMs: limitMs,
  });
  const events: WriterEvent[] = [];
  for (const line of result.stdout.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      events.push(JSON.parse(line) as WriterEvent);
    } catch {
      // a line cut short by a kill
    }
  }
  const summary = events.find((e) => e.ev === 'summary') as WriterSummary | undefined;
  return { result, events, summary };
}
