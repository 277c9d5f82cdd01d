/**
 * A conformance suite that drives real NBD clients (libnbd's nbdinfo, nbdcopy
 * and python bindings, qemu-io, fio) and a hostile raw-socket client against
 * any server, so the protocol layer and the whole product are held to the
 * same bar.
 *
 * What `start` must provide: `uri` (nbd://HOST:PORT/NAME) naming a writable
 * export of at least 128 MiB whose contents the suite may overwrite, with
 * base:allocation; optionally `unixUri` (nbd+unix:///NAME?socket=PATH) for the
 * same export; `stop` tears it all down. The suite uses disjoint regions of the
 * export so its tests do not depend on each other's order:
 *   [0, 64M) nbdcopy · [64M, 80M) libnbd edge cases · [80M, 96M) qemu-io ·
 *   [96M, 112M) fio · [112M, 113M) hostile-client witness · the last 4 KiB.
 *
 * Every test is bounded (a test timeout, and child processes killed before
 * it), and skips with the Debian package to install when a client is missing.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Inbound } from '../src/dataplane/nbd/inbound.js';
import * as w from '../src/dataplane/nbd/wire.js';

export interface NbdTarget {
  uri: string;
  unixUri?: string;
  stop(): Promise<void>;
}

const MiB = 1024 * 1024;
export const SUITE_MIN_EXPORT_SIZE = 128 * MiB;

// ------------------------------------------------------------ client tools

const PACKAGE_OF: Record<string, string> = {
  nbdinfo: 'libnbd-bin',
  nbdcopy: 'libnbd-bin',
  'qemu-io': 'qemu-utils',
  fio: 'fio',
};

const onPath = new Map<string, boolean>();
function have(tool: string): boolean {
  let found = onPath.get(tool);
  if (found === undefined) {
    found =
      spawnSync('sh', ['-c', `command -v '${tool}'`], { stdio: 'ignore', timeout: 10_000 })
        .status === 0;
    onPath.set(tool, found);
  }
  return found;
}

/** A skip message naming the Debian package to install, or false when the tool is there. */
function needs(tool: string): string | false {
  return have(tool) ? false : `${tool} not found: apt-get install ${PACKAGE_OF[tool] ?? tool}`;
}

/**
 * The python3 that can `import nbd`. A version manager's python3 often
 * shadows the system one that carries the Debian bindings, so try that first.
 */
let pythonWithNbd: string | null | undefined;
function nbdPython(): string | null {
  if (pythonWithNbd === undefined) {
    pythonWithNbd = null;
    for (const candidate of ['/usr/bin/python3', 'python3']) {
      if (
        spawnSync(candidate, ['-c', 'import nbd'], { stdio: 'ignore', timeout: 20_000 }).status ===
        0
      ) {
        pythonWithNbd = candidate;
        break;
      }
    }
  }
  return pythonWithNbd;
}
const needsPython = (): string | false =>
  nbdPython() ? false : 'python3 cannot import nbd: apt-get install python3-libnbd';

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a client to completion; SIGKILLed after timeoutMs (the failure then says so). */
function run(
  command: string,
  args: string[],
  timeoutMs: number,
  input?: string,
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      stderr += `\n[killed after ${timeoutMs} ms]`;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });
}

async function runOk(
  command: string,
  args: string[],
  timeoutMs: number,
  input?: string,
): Promise<string> {
  const r = await run(command, args, timeoutMs, input);
  assert.equal(
    r.code,
    0,
    `${command} ${args.join(' ')} exited ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`,
  );
  return r.stdout;
}

async function sha256OfPrefix(path: string, bytes: number): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { start: 0, end: bytes - 1 }))
    hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** The export name and where to connect, from nbd:// or nbd+unix:// URIs. */
function parseUri(uri: string): {
  name: string;
  tcp?: { host: string; port: number };
  path?: string;
} {
  const url = new URL(uri);
  const name = decodeURIComponent(url.pathname.replace(/^\//, ''));
  if (url.protocol === 'nbd+unix:') return { name, path: url.searchParams.get('socket') ?? '' };
  return {
    name,
    tcp: { host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port || 10809) },
  };
}

// ------------------------------------------------------- raw socket client

/**
 * A deliberately minimal NBD client over a raw socket (simple replies only),
 * able to send anything at all — which is the point.
 */
export class RawClient {
  private readonly inbound: Inbound;
  private closedFlag = false;
  private readonly closedPromise: Promise<void>;

  private constructor(readonly socket: Socket) {
    this.inbound = new Inbound(socket);
    socket.on('data', (chunk: Buffer) => this.inbound.push(chunk));
    socket.on('error', () => undefined);
    this.closedPromise = new Promise((resolve) =>
      socket.once('close', () => {
        this.closedFlag = true;
        this.inbound.fail(new Error('server closed the connection'));
        resolve();
      }),
    );
  }

  static open(uri: string): Promise<RawClient> {
    const where = parseUri(uri);
    return new Promise((resolve, reject) => {
      const socket = where.path
        ? connect({ path: where.path })
        : connect({ host: where.tcp!.host, port: where.tcp!.port });
      socket.once('connect', () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  /** Connect and complete NBD_OPT_GO for the URI's export; returns the export size. */
  static async ready(uri: string): Promise<{ client: RawClient; size: number }> {
    const client = await RawClient.open(uri);
    await client.greeting();
    const name = Buffer.from(parseUri(uri).name);
    const data = Buffer.alloc(4 + name.length + 2);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    client.option(w.NBD_OPT_GO, data);
    let size = -1;
    for (;;) {
      const reply = await client.optionReply();
      if (reply.type === w.NBD_REP_INFO && reply.data.readUInt16BE(0) === w.NBD_INFO_EXPORT)
        size = w.readU64(reply.data, 2);
      if (reply.type === w.NBD_REP_ACK) break;
      assert.ok(reply.type === w.NBD_REP_INFO, `NBD_OPT_GO answered ${w.replyName(reply.type)}`);
    }
    return { client, size };
  }

  async recv(bytes: number, timeoutMs = 5000): Promise<Buffer> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>(
      (_, reject) =>
        (timer = setTimeout(
          () => reject(new Error(`no ${bytes}-byte answer within ${timeoutMs} ms`)),
          timeoutMs,
        )),
    );
    try {
      await Promise.race([this.inbound.need(bytes), timeout]);
    } finally {
      clearTimeout(timer);
    }
    return this.inbound.take(bytes);
  }

  send(buf: Buffer): void {
    this.socket.write(buf);
  }

  /** Read the greeting and answer FIXED_NEWSTYLE|NO_ZEROES. */
  async greeting(
    clientFlags = w.NBD_FLAG_C_FIXED_NEWSTYLE | w.NBD_FLAG_C_NO_ZEROES,
  ): Promise<void> {
    const greeting = await this.recv(w.SERVER_GREETING_SIZE);
    assert.equal(greeting.toString('latin1', 0, 16), 'NBDMAGICIHAVEOPT');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(clientFlags);
    this.send(flags);
  }

  option(option: number, data: Buffer = Buffer.alloc(0), declaredLength = data.length): void {
    const header = Buffer.alloc(w.OPTION_HEADER_SIZE);
    header.writeBigUInt64BE(w.NBD_OPTS_MAGIC, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(declaredLength >>> 0, 12);
    this.send(Buffer.concat([header, data]));
  }

  async optionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const header = await this.recv(w.OPTION_REPLY_HEADER_SIZE);
    assert.equal(header.readBigUInt64BE(0), w.NBD_REP_MAGIC, 'option reply magic');
    const length = header.readUInt32BE(16);
    return {
      option: header.readUInt32BE(8),
      type: header.readUInt32BE(12),
      data: await this.recv(length),
    };
  }

  request(
    type: number,
    offset: number,
    length: number,
    cookie: number,
    flags = 0,
    payload?: Buffer,
  ): void {
    const header = Buffer.alloc(w.REQUEST_HEADER_SIZE);
    w.encodeRequest(header, 0, flags, type, 0, cookie, offset, length);
    this.send(payload ? Buffer.concat([header, payload]) : header);
  }

  /** A simple reply (and READ data of dataLength when it succeeded). */
  async reply(dataLength = 0): Promise<{ error: number; cookie: number; data: Buffer }> {
    const header = await this.recv(w.SIMPLE_REPLY_SIZE);
    assert.equal(header.readUInt32BE(0), w.NBD_SIMPLE_REPLY_MAGIC, 'simple reply magic');
    const error = header.readUInt32BE(4);
    const data = error === 0 && dataLength > 0 ? await this.recv(dataLength) : Buffer.alloc(0);
    return { error, cookie: header.readUInt32BE(12), data };
  }

  /** True if the server closes the connection within timeoutMs. */
  async closedWithin(timeoutMs: number): Promise<boolean> {
    if (this.closedFlag) return true;
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<false>(
      (resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)),
    );
    const result = await Promise.race([this.closedPromise.then(() => true as const), expired]);
    clearTimeout(timer);
    return result;
  }

  close(): void {
    this.socket.destroy();
  }
}

// --------------------------------------------------------- libnbd script

/**
 * Edge cases through libnbd's python bindings. Strict mode is off so libnbd
 * sends what it would normally refuse client-side, and the errno the server
 * answers is what gets checked. Each check prints "ok NAME".
 */
const LIBNBD_EDGE_CASES = String.raw`
import errno, sys, nbd

uri = sys.argv[1]
MiB = 1024 * 1024
BASE = 64 * MiB

def handle():
    h = nbd.NBD()
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    h.set_strict_mode(0)
    return h

def expect_errno(name, expected, fn):
    try:
        fn()
    except nbd.Error as e:
        assert e.errnum in expected, "%s: errno %s (%s), expected %s" % (name, e.errno, e.string, expected)
        return
    raise AssertionError("%s: succeeded, expected errno %s" % (name, expected))

def ok(name):
    print("ok", name, flush=True)

h = handle()
size = h.get_size()
assert size >= 128 * MiB, "export is %d bytes; the suite needs 128 MiB" % size
assert h.get_structured_replies_negotiated(), "structured replies not negotiated"
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation not offered"
pattern = bytes((i * 7 + 3) % 251 for i in range(256 * 1024))

# Past the end: reads and trims are EINVAL, writes ENOSPC (payload skipped), and the stream stays in step.
expect_errno("read past end", (errno.EINVAL,), lambda: h.pread(8192, size - 4096))
expect_errno("write past end", (errno.ENOSPC,), lambda: h.pwrite(b"\xee" * 8192, size - 4096))
expect_errno("zero past end", (errno.ENOSPC, errno.EINVAL), lambda: h.zero(8192, size - 4096))
expect_errno("trim past end", (errno.EINVAL,), lambda: h.trim(8192, size - 4096))
expect_errno("offset past 2^63", (errno.EINVAL,), lambda: h.pread(512, 2**63 + 4096))
h.pwrite(b"\x5a" * 4096, size - 4096)
assert h.pread(4096, size - 4096) == b"\x5a" * 4096
ok("bounds")

# Zero-length requests: the spec leaves the answer open but forbids hanging up.
for name, fn in (("read", lambda: h.pread(0, BASE)), ("write", lambda: h.pwrite(b"", BASE)),
                 ("trim", lambda: h.trim(0, BASE)), ("zero", lambda: h.zero(0, BASE))):
    try:
        fn()
    except nbd.Error as e:
        assert e.errnum == errno.EINVAL, "zero-length %s: errno %s" % (name, e.errno)
assert h.pread(512, BASE) is not None
ok("zero-length")

# Flags a command does not take, and a read above the advertised maximum payload.
expect_errno("read with NO_HOLE", (errno.EINVAL,), lambda: h.pread(512, BASE, nbd.CMD_FLAG_NO_HOLE))
maximum = h.get_block_size(nbd.SIZE_MAXIMUM)
if 0 < maximum < 64 * MiB:
    expect_errno("read over maximum payload", (errno.EINVAL, errno.EOVERFLOW), lambda: h.pread(maximum + 4096, 0))
    expect_errno("write over maximum payload", (errno.EINVAL, errno.EOVERFLOW, errno.ENOMEM), lambda: h.pwrite(b"\x00" * (maximum + 4096), 0))
assert h.pread(512, BASE) is not None
ok("bad-flags-and-sizes")

# Unaligned I/O straddling sector and block boundaries.
h.pwrite(b"\x00" * (256 * 1024), BASE)
h.pwrite(pattern[:70001], BASE + 12345)
got = h.pread(100000, BASE)
assert got[:12345] == b"\x00" * 12345
assert got[12345:12345 + 70001] == pattern[:70001]
assert got[12345 + 70001:] == b"\x00" * (100000 - 12345 - 70001)
ok("unaligned")

# FUA write, flush, cache.
h.pwrite(pattern, BASE + MiB, nbd.CMD_FLAG_FUA)
assert h.pread(len(pattern), BASE + MiB) == pattern
h.flush()
h.cache(MiB, BASE + MiB)
ok("fua-flush-cache")

# Trim and write-zeroes read back as zeros; the rest of the data survives.
R = BASE + 2 * MiB
h.pwrite(pattern, R)
h.trim(64 * 1024, R)
h.zero(4096, R + 100 * 1024)
h.zero(4096, R + 120 * 1024, nbd.CMD_FLAG_NO_HOLE)
try:
    h.zero(4096, R + 140 * 1024, nbd.CMD_FLAG_FAST_ZERO)
    fast = True
except nbd.Error as e:
    assert e.errnum in (errno.ENOTSUP, errno.EOPNOTSUPP), "fast zero: errno %s" % e.errno
    fast = False
got = h.pread(len(pattern), R)
assert got[:64 * 1024] == b"\x00" * (64 * 1024), "trimmed range is not zero"
assert got[64 * 1024:100 * 1024] == pattern[64 * 1024:100 * 1024]
assert got[100 * 1024:104 * 1024] == b"\x00" * 4096, "zeroed range is not zero"
assert got[120 * 1024:124 * 1024] == b"\x00" * 4096, "NO_HOLE zeroed range is not zero"
if fast:
    assert got[140 * 1024:144 * 1024] == b"\x00" * 4096, "FAST_ZERO range is not zero"
assert got[144 * 1024:] == pattern[144 * 1024:]
ok("trim-and-zero")

# Structured read: the chunks cover the request exactly and carry the data.
seen = []
def chunk(buf, offset, status, err):
    seen.append((offset, len(buf), status, bytes(buf)))
    return 0
data = h.pread_structured(len(pattern), BASE + MiB, chunk)
assert data == pattern
assert sum(n for _, n, _, _ in seen) == len(pattern), seen[:4]
for offset, n, status, buf in seen:
    assert status in (nbd.READ_DATA, nbd.READ_HOLE)
    if status == nbd.READ_DATA:
        start = offset - (BASE + MiB)
        assert buf == pattern[start:start + n]
ok("structured-read")

# Block status: data where written, holes that read as zeros where trimmed.
B = BASE + 8 * MiB
h.trim(2 * MiB, B)
h.pwrite(b"\x77" * (256 * 1024), B)
extents = []
def extent(context, offset, entries, err):
    if context == nbd.CONTEXT_BASE_ALLOCATION:
        extents.extend(zip(entries[0::2], entries[1::2]))
    return 0
h.block_status(2 * MiB, B, extent)
assert extents, "no extents"
at = B
flags_at = []
for length, flags in extents:
    assert length > 0
    flags_at.append((at, length, flags))
    at += length
def flags_of(pos):
    for start, length, flags in flags_at:
        if start <= pos < start + length:
            return flags
    return None
assert flags_of(B) is not None and flags_of(B) & nbd.STATE_ZERO == 0, "written data reported as zero: %r" % flags_at
last = B + 2 * MiB - 4096
if flags_of(last) is None:
    extents.clear()
    h.block_status(4096, last, extent)
    flags_at = [(last, extents[0][0], extents[0][1])]
assert flags_of(last) == nbd.STATE_HOLE | nbd.STATE_ZERO, "trimmed range not a zero hole: %r" % flags_at
extents.clear()
h.block_status(2 * MiB, B, extent, nbd.CMD_FLAG_REQ_ONE)
assert len(extents) == 1 and 0 < extents[0][0] <= 2 * MiB, "REQ_ONE answered %r" % extents
ok("block-status")

# Multi-conn: write on one connection, flush on another, read on a third.
if h.can_multi_conn():
    a, b, c = handle(), handle(), handle()
    blob = bytes(reversed(pattern))
    a.pwrite(blob, BASE + 12 * MiB)
    b.flush()
    assert c.pread(len(blob), BASE + 12 * MiB) == blob
    for x in (a, b, c):
        x.shutdown()
    ok("multi-conn")
else:
    print("skip multi-conn: server does not advertise CAN_MULTI_CONN", flush=True)

h.shutdown()
print("done", flush=True)
`;

// ----------------------------------------------------------------- suite

export function nbdClientSuite(label: string, start: () => Promise<NbdTarget>): void {
  describe(label, { timeout: 180_000 }, () => {
    let target: NbdTarget;
    let work: string;

    before(async () => {
      work = await mkdtemp(join(tmpdir(), 'nbd-clients-'));
      target = await start();
    });
    after(async () => {
      await target?.stop();
      if (work) await rm(work, { recursive: true, force: true });
    });

    it(
      'nbdinfo --json reports size, flags, block sizes and base:allocation',
      { skip: needs('nbdinfo'), timeout: 30_000 },
      async () => {
        const info = JSON.parse(await runOk('nbdinfo', ['--json', target.uri], 20_000));
        assert.equal(info.protocol, 'newstyle-fixed');
        assert.equal(info.structured, true);
        const [exp] = info.exports;
        assert.ok(exp['export-size'] >= SUITE_MIN_EXPORT_SIZE, `export-size ${exp['export-size']}`);
        assert.equal(exp.is_read_only, false);
        for (const flag of [
          'can_flush',
          'can_fua',
          'can_trim',
          'can_zero',
          'can_fast_zero',
          'can_cache',
        ])
          assert.equal(exp[flag], true, flag);
        assert.equal(typeof exp.can_multi_conn, 'boolean');
        assert.ok(exp.contexts.includes('base:allocation'), `contexts ${exp.contexts}`);
        const {
          block_size_minimum: min,
          block_size_preferred: preferred,
          block_size_maximum: max,
        } = exp;
        const powerOfTwo = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
        assert.ok(powerOfTwo(min) && min <= 65536, `minimum block size ${min}`);
        assert.ok(
          powerOfTwo(preferred) && preferred >= Math.max(min, 512),
          `preferred block size ${preferred}`,
        );
        assert.ok(max >= preferred, `maximum payload ${max}`);
      },
    );

    it('nbdinfo --list shows the export', { skip: needs('nbdinfo'), timeout: 30_000 }, async () => {
      const { name } = parseUri(target.uri);
      const listing = JSON.parse(await runOk('nbdinfo', ['--list', '--json', target.uri], 20_000));
      const names = listing.exports.map((e: { 'export-name': string }) => e['export-name']);
      assert.ok(names.includes(name), `exports ${JSON.stringify(names)} lack ${name}`);
    });

    it('nbdinfo over the unix socket', { skip: needs('nbdinfo'), timeout: 30_000 }, async (t) => {
      if (!target.unixUri) return t.skip('no unix socket URI given');
      const info = JSON.parse(await runOk('nbdinfo', ['--json', target.unixUri], 20_000));
      assert.ok(info.exports[0]['export-size'] >= SUITE_MIN_EXPORT_SIZE);
    });

    it(
      'nbdcopy of 64 MiB in and back out keeps every byte',
      { skip: needs('nbdcopy'), timeout: 90_000 },
      async () => {
        const input = join(work, 'in.bin');
        const output = join(work, 'out.bin');
        await writeFile(input, randomBytes(64 * MiB));
        await runOk('nbdcopy', ['--flush', input, target.uri], 60_000);
        await runOk('nbdcopy', [target.uri, output], 60_000);
        assert.equal(await sha256OfPrefix(output, 64 * MiB), await sha256OfPrefix(input, 64 * MiB));
        await rm(output, { force: true });
      },
    );

    it(
      'libnbd edge cases: bounds, zero length, unaligned, trim/zero, structured reads, block status, FUA, multi-conn',
      { skip: needsPython(), timeout: 60_000 },
      async () => {
        const r = await run(nbdPython()!, ['-c', LIBNBD_EDGE_CASES, target.uri], 50_000);
        assert.equal(
          r.code,
          0,
          `libnbd script failed\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`,
        );
        assert.match(r.stdout, /^done$/m);
      },
    );

    it(
      'qemu-io pattern writes and reads verify',
      { skip: needs('qemu-io'), timeout: 30_000 },
      async () => {
        // qemu-io takes plain byte offsets (with k/M suffixes), no arithmetic.
        const at = (mib: number, bytes = 0) => String(mib * MiB + bytes);
        const commands = [
          `write -P 0xa5 ${at(80)} 4M`,
          `write -P 0x3c ${at(81)} 64k`,
          `write -P 0x11 ${at(82, 513)} 1000`,
          `aio_write -P 0x77 ${at(84)} 1M`,
          'aio_flush',
          `read -P 0xa5 ${at(80)} 1M`,
          `read -P 0x3c ${at(81)} 64k`,
          `read -P 0xa5 ${at(81, 65536)} 960k`,
          `read -P 0x11 ${at(82, 513)} 1000`,
          `read -P 0xa5 ${at(82, 1513)} 3000`,
          `read -P 0x77 ${at(84)} 1M`,
          `write -z ${at(83)} 64k`,
          `read -P 0 ${at(83)} 64k`,
          `discard ${at(83, 65536)} 64k`,
          `read -P 0 ${at(83, 65536)} 64k`,
          'flush',
        ];
        const out = await runOk(
          'qemu-io',
          ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), target.uri],
          25_000,
        );
        assert.doesNotMatch(out, /failed|error/i, out);
      },
    );

    it(
      'fio random writes over the nbd engine verify',
      { skip: needs('fio'), timeout: 60_000 },
      async (t) => {
        const engines = await run('fio', ['--enghelp'], 10_000);
        if (!/\bnbd\b/.test(engines.stdout))
          return t.skip('this fio has no nbd ioengine (Debian fio has it)');
        const out = await runOk(
          'fio',
          [
            '--name=nbd-verify',
            '--ioengine=nbd',
            `--uri=${target.uri}`,
            '--rw=randwrite',
            '--bs=4k',
            '--offset=96M',
            '--size=16M',
            '--iodepth=16',
            '--verify=crc32c',
            '--do_verify=1',
            '--verify_fatal=1',
            // fio otherwise leaves a *-verify.state file in the working directory.
            '--verify_state_save=0',
            '--output-format=json',
          ],
          50_000,
        );
        const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
        assert.equal(job.error, 0);
        assert.ok(job.write.io_bytes >= 16 * MiB, `wrote ${job.write.io_bytes}`);
        assert.ok(job.read.io_bytes >= 16 * MiB, `verified ${job.read.io_bytes}`);
      },
    );

    it('hostile raw clients lose only their own connection', { timeout: 60_000 }, async () => {
      const WITNESS = 112 * MiB;
      const { client: witness, size } = await RawClient.ready(target.uri);
      const witnessData = randomBytes(64 * 1024);
      witness.request(w.NBD_CMD_WRITE, WITNESS, witnessData.length, 1, 0, witnessData);
      assert.equal((await witness.reply()).error, 0);

      // Garbage where an option header belongs.
      let c = await RawClient.open(target.uri);
      await c.greeting();
      c.send(Buffer.from('this is not an NBD option header'));
      assert.ok(await c.closedWithin(5000), 'garbage option magic: connection left open');

      // Unknown client flags must be refused.
      c = await RawClient.open(target.uri);
      await c.greeting(0x80);
      assert.ok(await c.closedWithin(5000), 'unknown client flags: connection left open');

      // Oversized option: refused with TOO_BIG, its payload skipped, haggling goes on.
      c = await RawClient.open(target.uri);
      await c.greeting();
      c.option(w.NBD_OPT_GO, Buffer.alloc(200 * 1024, 0x41));
      const tooBig = await c.optionReply();
      assert.ok(tooBig.type & 0x80000000, `oversized option answered ${w.replyName(tooBig.type)}`);
      c.option(w.NBD_OPT_LIST);
      let reply = await c.optionReply();
      while (reply.type === w.NBD_REP_SERVER) reply = await c.optionReply();
      assert.equal(reply.type, w.NBD_REP_ACK, 'NBD_OPT_LIST after the oversized option');
      c.option(w.NBD_OPT_ABORT);
      c.close();

      // Absurd option length: the server hangs up rather than wait for 4 GiB.
      c = await RawClient.open(target.uri);
      await c.greeting();
      c.option(w.NBD_OPT_INFO, Buffer.alloc(0), 0xffffffff);
      assert.ok(await c.closedWithin(5000), 'absurd option length: connection left open');

      // Unknown option and STARTTLS: errors, and the connection carries on.
      c = await RawClient.open(target.uri);
      await c.greeting();
      c.option(0x4242);
      assert.equal((await c.optionReply()).type, w.NBD_REP_ERR_UNSUP);
      c.option(w.NBD_OPT_STARTTLS);
      assert.ok(
        (await c.optionReply()).type & 0x80000000,
        'STARTTLS accepted by a server without TLS',
      );
      c.close();

      // Transmission: a bad request gets an errno and the stream stays in step.
      let t = (await RawClient.ready(target.uri)).client;
      t.request(0x77, 0, 512, 10);
      assert.equal((await t.reply()).error, w.NBD_EINVAL, 'unknown command');
      t.request(w.NBD_CMD_WRITE, size - 512, 4096, 11, 0, Buffer.alloc(4096, 0xee));
      assert.equal((await t.reply()).error, w.NBD_ENOSPC, 'write past the end');
      t.request(w.NBD_CMD_READ, WITNESS, 512, 12);
      const check = await t.reply(512);
      assert.equal(check.error, 0);
      assert.equal(check.cookie, 12);
      assert.deepEqual(check.data, witnessData.subarray(0, 512));
      // ...then garbage request magic drops it.
      t.send(Buffer.alloc(w.REQUEST_HEADER_SIZE, 0x55));
      assert.ok(await t.closedWithin(5000), 'bad request magic: connection left open');

      // A WRITE claiming 4 GiB of payload: hang up, or refuse it; never wait for it.
      t = (await RawClient.ready(target.uri)).client;
      t.request(w.NBD_CMD_WRITE, 0, 0xffffffff, 13);
      const closed = await t.closedWithin(3000);
      if (!closed) assert.notEqual((await t.reply()).error, 0, 'a 4 GiB WRITE was accepted');
      t.close();

      // A truncated header, then the client vanishes.
      t = (await RawClient.ready(target.uri)).client;
      t.send(Buffer.alloc(10, 0x25));
      t.socket.end();
      assert.ok(await t.closedWithin(7000), 'truncated header: connection left open');

      // Half a handshake, then silence; and a slammed door mid-greeting.
      const silent = await RawClient.open(target.uri);
      const slammed = await RawClient.open(target.uri);
      slammed.close();

      // The witness connection was undisturbed throughout, and its data is intact.
      witness.request(w.NBD_CMD_READ, WITNESS, witnessData.length, 2);
      const back = await witness.reply(witnessData.length);
      assert.equal(back.error, 0);
      assert.ok(back.data.equals(witnessData), 'witness data changed');
      witness.request(w.NBD_CMD_DISC, 0, 0, 3);
      assert.ok(await witness.closedWithin(5000), 'NBD_CMD_DISC did not close the connection');
      silent.close();

      // And a normal client still gets in.
      if (have('nbdinfo')) {
        const info = JSON.parse(await runOk('nbdinfo', ['--json', target.uri], 20_000));
        assert.equal(info.exports[0]['export-size'], size);
      }
    });
  });
}
