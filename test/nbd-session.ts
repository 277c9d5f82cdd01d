/**
 * One long-lived NBD session driven step by step from a test: a python3
 * libnbd process that connects, then takes commands (write, flush, read,
 * close) one at a time, each bounded by a timeout, and answers each with
 * ok or the error (errno) or "timeout". For tests that need a client to
 * hold a connection — and with it a volume's write lock — across events
 * such as a partition, and to see exactly which request failed.
 *
 * libnbd's strict mode is off, so a write to a read-only export is sent
 * anyway and the server's own answer (EPERM) comes back.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SYSTEM_PYTHON, toolEnv } from './tools.js';

const SESSION = String.raw`
import json, sys, time
import nbd

uri = sys.argv[1]
connect_timeout = float(sys.argv[2])

class Timeout(Exception):
    pass

def wait(h, cookie, seconds):
    end = time.monotonic() + seconds
    while not h.aio_command_completed(cookie):
        left = end - time.monotonic()
        if left <= 0:
            raise Timeout()
        h.poll(int(min(left, 0.5) * 1000) + 1)

def say(**kw):
    print(json.dumps(kw), flush=True)

h = nbd.NBD()
h.set_full_info(True)
h.set_strict_mode(0)
try:
    h.aio_connect_uri(uri)
    end = time.monotonic() + connect_timeout
    while not h.aio_is_ready():
        if h.aio_is_dead() or h.aio_is_closed():
            raise nbd.Error("connection died during the handshake", 0)
        if time.monotonic() > end:
            raise Timeout()
        h.poll(200)
except Timeout:
    say(ok=False, timeout=True, err="handshake timed out")
    sys.exit(1)
except nbd.Error as e:
    say(ok=False, err=str(e), errno=e.errno)
    sys.exit(1)
try:
    description = h.get_export_description()
except nbd.Error:
    description = ""
say(ok=True, readOnly=h.is_read_only(), description=description, size=h.get_size())

STEP = 1 << 20
for line in sys.stdin:
    cmd = json.loads(line)
    op = cmd["op"]
    t = cmd.get("timeout", 30)
    try:
        if op == "write":
            data = open(cmd["file"], "rb").read()
            buffers = [nbd.Buffer.from_bytearray(bytearray(data[i:i + STEP])) for i in range(0, len(data), STEP)]
            cookies = [h.aio_pwrite(b, cmd["offset"] + i * STEP) for i, b in enumerate(buffers)]
            for c in cookies:
                wait(h, c, t)
        elif op == "flush":
            wait(h, h.aio_flush(), t)
        elif op == "read":
            buf = nbd.Buffer(cmd["length"])
            wait(h, h.aio_pread(buf, cmd["offset"]), t)
            open(cmd["file"], "wb").write(buf.to_bytearray())
        elif op == "close":
            h.shutdown()
            say(ok=True)
            break
        say(ok=True)
    except Timeout:
        say(ok=False, timeout=True, err="no reply within %s s" % t)
    except nbd.Error as e:
        say(ok=False, err=str(e), errno=e.errno)
`;

export interface SessionReply {
  ok: boolean;
  err?: string;
  errno?: string;
  timeout?: boolean;
}

export class NbdSession {
  private buffered = '';
  private waiting: ((line: string) => void)[] = [];
  private lines: string[] = [];
  private stderr = '';
  private exited = false;
  private constructor(
    private readonly child: ChildProcess,
    private readonly dir: string,
    readonly uri: string,
  ) {
    child.stdout!.on('data', (d: Buffer) => {
      this.buffered += d.toString();
      let at: number;
      while ((at = this.buffered.indexOf('\n')) >= 0) {
        const line = this.buffered.slice(0, at);
        this.buffered = this.buffered.slice(at + 1);
        const waiter = this.waiting.shift();
        if (waiter) waiter(line);
        else this.lines.push(line);
      }
    });
    child.stderr!.on(
      'data',
      (d: Buffer) => (this.stderr = (this.stderr + d.toString()).slice(-4000)),
    );
    child.once('exit', () => {
      this.exited = true;
      for (const waiter of this.waiting.splice(0))
        waiter(JSON.stringify({ ok: false, err: `session process exited: ${this.stderr}` }));
    });
    child.stdin!.on('error', () => undefined);
  }

  readOnly = false;
  description = '';
  size = 0;

  /** Connect (the handshake bounded by connectTimeoutS); rejects with the reason when it fails. */
  static async open(uri: string, connectTimeoutS = 20): Promise<NbdSession> {
    const dir = await mkdtemp(join(tmpdir(), 'nbd-session-'));
    const child = spawn(SYSTEM_PYTHON, ['-c', SESSION, uri, String(connectTimeoutS)], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, ...toolEnv },
    });
    const session = new NbdSession(child, dir, uri);
    const hello = JSON.parse(
      await session.nextLine((connectTimeoutS + 10) * 1000),
    ) as SessionReply & { readOnly: boolean; description: string; size: number };
    if (!hello.ok) {
      await session.kill();
      throw new Error(`NBD session to ${uri} failed: ${hello.err ?? 'no reason'}`);
    }
    session.readOnly = hello.readOnly;
    session.description = hello.description;
    session.size = hello.size;
    return session;
  }

  private nextLine(timeoutMs: number): Promise<string> {
    const line = this.lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    if (this.exited)
      return Promise.resolve(
        JSON.stringify({ ok: false, err: `session process exited: ${this.stderr}` }),
      );
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiting = this.waiting.filter((w) => w !== done);
        resolve(
          JSON.stringify({
            ok: false,
            timeout: true,
            err: `the session process did not answer within ${timeoutMs} ms`,
          }),
        );
      }, timeoutMs);
      const done = (l: string) => {
        clearTimeout(timer);
        resolve(l);
      };
      this.waiting.push(done);
    });
  }

  private async command(cmd: Record<string, unknown>, timeoutS: number): Promise<SessionReply> {
    if (this.exited) return { ok: false, err: `session process exited: ${this.stderr}` };
    this.child.stdin!.write(JSON.stringify({ ...cmd, timeout: timeoutS }) + '\n');
    return JSON.parse(await this.nextLine((timeoutS + 30) * 1000)) as SessionReply;
  }

  async write(offset: number, data: Buffer, timeoutS = 30): Promise<SessionReply> {
    const file = join(this.dir, `w-${randomBytes(4).toString('hex')}.bin`);
    await writeFile(file, data);
    try {
      return await this.command({ op: 'write', offset, file }, timeoutS);
    } finally {
      await rm(file, { force: true });
    }
  }

  flush(timeoutS = 30): Promise<SessionReply> {
    return this.command({ op: 'flush' }, timeoutS);
  }

  async read(offset: number, length: number, timeoutS = 60): Promise<Buffer> {
    const file = join(this.dir, `r-${randomBytes(4).toString('hex')}.bin`);
    const reply = await this.command({ op: 'read', offset, length, file }, timeoutS);
    if (!reply.ok)
      throw new Error(
        `read of ${length} bytes at ${offset} through ${this.uri} failed: ${reply.err}`,
      );
    try {
      return await readFile(file);
    } finally {
      await rm(file, { force: true });
    }
  }

  /** NBD_CMD_DISC and exit. */
  async close(): Promise<void> {
    if (!this.exited) await this.command({ op: 'close' }, 10);
    await this.kill();
  }

  /** Gone at once (SIGKILL), no goodbye; the temporary directory removed. Idempotent. */
  async kill(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const gone = new Promise((resolve) => this.child.once('exit', resolve));
      this.child.kill('SIGKILL');
      await gone;
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}
