/**
 * NBD over TLS against a real torusd: X.509 (with and without client
 * certificates) and PSK, through libnbd's tools, qemu, fio and our own
 * NbdClient; FORCEDTLS semantics at the option level with a raw client; bad
 * TLS files refused at start-up. The PKI is made with openssl per run.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm, writeFile, mkdir, cp } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { NbdClient } from '../src/dataplane/nbd-client/client.js';
import { NbdConnectionError } from '../src/dataplane/nbd-client/errors.js';
import { loadClientTls } from '../src/dataplane/nbd/tls-config.js';
import { encodeOption, decodeOptionReplyHeader } from '../src/dataplane/nbd/client-wire.js';
import {
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_LIST,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_SERVER,
  OPTION_REPLY_HEADER_SIZE,
  SERVER_GREETING_SIZE,
} from '../src/dataplane/nbd/wire.js';
import { makeTestPki, type TestPki } from './tls-pki.js';
import { missing, run, runOk } from './tools.js';
import {
  makeDataDir,
  removeDir,
  runCli,
  startTorusd,
  type TorusdProcess,
} from './torusd-process.js';

const skipAll = missing('openssl', 'nbdinfo');
const TIMEOUT = 120_000;

/** Bytes off a socket in exact amounts; the raw client below reads option replies with it. */
class RawReader {
  private buf = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  closed = false;
  constructor(socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    socket.on('error', () => undefined);
  }
  async take(n: number): Promise<Buffer | undefined> {
    while (this.buf.length < n) {
      if (this.closed) return undefined;
      await new Promise<void>((r) => (this.wake = r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
}

/** Greeting and client flags done; send an option and get its first reply type (undefined: connection closed). */
async function rawSession(port: number) {
  let socket: Socket = connect({ host: '127.0.0.1', port });
  let reader = new RawReader(socket);
  await reader.take(SERVER_GREETING_SIZE);
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  socket.write(flags);
  const option = async (opt: number, data?: Buffer): Promise<number | undefined> => {
    socket.write(encodeOption(opt, data));
    const header = await reader.take(OPTION_REPLY_HEADER_SIZE);
    if (!header) return undefined;
    const { reply, length } = decodeOptionReplyHeader(header);
    if (length > 0) await reader.take(length);
    return reply;
  };
  return {
    option,
    /** Upgrade after an acknowledged STARTTLS (the CA from `dir`). */
    async startTls(dir: string) {
      const secure = tlsConnect({
        socket,
        ...loadClientTls({ certificates: dir }).connectOptions,
        host: '127.0.0.1',
      });
      await new Promise<void>((ok, fail) => secure.once('secureConnect', ok).once('error', fail));
      socket = secure;
      reader = new RawReader(secure);
    },
    get closed() {
      return reader.closed;
    },
    async waitClosed() {
      return (await reader.take(1)) === undefined;
    },
    close: () => socket.destroy(),
  };
}

describe('NBD over TLS (torusd)', { skip: skipAll, timeout: 5 * TIMEOUT }, () => {
  let work: string;
  let pki: TestPki;
  const nodes: TorusdProcess[] = [];
  const dirs: string[] = [];

  async function serve(tlsArgs: string[]): Promise<TorusdProcess> {
    const dir = await makeDataDir('tls');
    dirs.push(dir);
    const node = await startTorusd({
      dataDir: dir,
      size: '256MiB',
      args: ['--ensure-volume', 'default=64MiB', '--nbd-unix', '', ...tlsArgs],
    });
    nodes.push(node);
    return node;
  }

  before(async () => {
    work = await mkdtemp(join(tmpdir(), 'torus-tls-'));
    pki = await makeTestPki(work);
  });
  after(async () => {
    for (const node of nodes) await node.stop('SIGTERM');
    for (const dir of dirs) await removeDir(dir);
    await rm(work, { recursive: true, force: true });
  });

  describe('--tls require with certificates', { timeout: TIMEOUT }, () => {
    let node: TorusdProcess;
    let uri: string;
    before(async () => {
      node = await serve(['--tls', 'require', '--tls-certificates', pki.server]);
      uri = `nbds://127.0.0.1:${node.port}/default?tls-certificates=${pki.caOnly}`;
    });

    it('nbdinfo connects over TLS', async () => {
      const out = await runOk('nbdinfo', [uri]);
      assert.match(out, /with TLS/);
      assert.match(out, /export-size: 67108864/);
    });

    it('a clear-text client reaches no export', async () => {
      const r = await run('nbdinfo', [node.uri('default')]);
      assert.notEqual(r.code, 0);
      const list = await run('nbdinfo', ['--list', node.uri('')]);
      assert.doesNotMatch(list.stdout, /export="default"/);
    });

    it('every option but STARTTLS and ABORT gets TLS_REQD; EXPORT_NAME in clear closes', async () => {
      const s = await rawSession(node.port);
      try {
        assert.equal(await s.option(NBD_OPT_LIST), NBD_REP_ERR_TLS_REQD);
        assert.equal(await s.option(NBD_OPT_STRUCTURED_REPLY), NBD_REP_ERR_TLS_REQD);
        assert.equal(await s.option(NBD_OPT_STARTTLS, Buffer.from('x')), NBD_REP_ERR_INVALID);
        assert.equal(await s.option(NBD_OPT_EXPORT_NAME, Buffer.from('default')), undefined);
      } finally {
        s.close();
      }
    });

    it('after TLS, options work and a second STARTTLS is INVALID', async () => {
      const s = await rawSession(node.port);
      try {
        assert.equal(await s.option(NBD_OPT_STARTTLS), NBD_REP_ACK);
        await s.startTls(pki.caOnly);
        assert.equal(await s.option(NBD_OPT_LIST), NBD_REP_SERVER);
        s.close();
      } finally {
        s.close();
      }
      const again = await rawSession(node.port);
      try {
        assert.equal(await again.option(NBD_OPT_STARTTLS), NBD_REP_ACK);
        await again.startTls(pki.caOnly);
        assert.equal(await again.option(NBD_OPT_STARTTLS), NBD_REP_ERR_INVALID);
      } finally {
        again.close();
      }
    });

    it('nbdcopy round-trips 8 MiB over TLS', { skip: missing('nbdcopy') }, async () => {
      const src = join(work, 'in.bin');
      const back = join(work, 'back.bin');
      const data = randomBytes(8 * 1024 * 1024);
      await writeFile(src, data);
      await runOk('nbdcopy', [src, uri]);
      await runOk('nbdcopy', [uri, back]);
      const copied = await readFile(back);
      assert.ok(copied.subarray(0, data.length).equals(data));
    });

    it(
      'qemu-img and qemu-io with tls-creds-x509',
      { skip: missing('qemu-img', 'qemu-io') },
      async () => {
        const creds = `tls-creds-x509,id=tls0,endpoint=client,dir=${pki.client}`;
        const image = `driver=nbd,host=127.0.0.1,port=${node.port},export=default,tls-creds=tls0`;
        const info = await runOk('qemu-img', ['info', '--object', creds, '--image-opts', image]);
        assert.match(info, /virtual size: 64 MiB/);
        const io = await runOk('qemu-io', [
          '--object',
          creds,
          '--image-opts',
          image,
          '-c',
          'write -P 0x5a 40M 64k',
          '-c',
          'read -P 0x5a 40M 64k',
        ]);
        assert.doesNotMatch(io, /Pattern verification failed/);
      },
    );

    it('fio --ioengine=nbd with an nbds:// uri', { skip: fioSkip() }, async () => {
      // fio's engine forbids ?tls-certificates= (local files in a URI); libnbd
      // then reads $HOME/.pki/libnbd, which it ignores for root: run as nobody.
      const home = join(work, 'fio-home');
      await mkdir(join(home, '.pki'), { recursive: true });
      await cp(pki.client, join(home, '.pki', 'libnbd'), { recursive: true });
      await chmod(work, 0o755);
      await runOk('chmod', ['-R', 'a+rX', work]);
      const fio = [
        'fio',
        '--name=tls',
        '--ioengine=nbd',
        `--uri=nbds://127.0.0.1:${node.port}/default`,
        '--rw=randrw',
        '--bs=4k',
        '--size=4M',
        '--io_size=4M',
        '--verify=crc32c',
        '--iodepth=8',
      ];
      const asUser =
        process.getuid?.() === 0
          ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']
          : [];
      const [cmd, ...args] = [...asUser, 'env', `HOME=${home}`, ...fio];
      const out = await runOk(cmd, args, { timeoutMs: 60_000 });
      assert.match(out, /IOPS=/);
      assert.doesNotMatch(out, /verify: bad/);
    });

    it('NbdClient reads and writes over TLS', async () => {
      const client = await NbdClient.connect({ host: '127.0.0.1', port: node.port }, 'default', {
        tls: loadClientTls({ certificates: pki.caOnly }),
      });
      try {
        const data = randomBytes(1024 * 1024);
        await client.write(data, 8 * 1024 * 1024);
        const back = Buffer.alloc(data.length);
        await client.read(back, 8 * 1024 * 1024);
        assert.ok(back.equals(data));
      } finally {
        await client.close();
      }
    });

    it('NbdClient without TLS is refused at GO', async () => {
      await assert.rejects(
        NbdClient.connect({ host: '127.0.0.1', port: node.port }, 'default'),
        /TLS/,
      );
    });
  });

  describe('--tls on --tls-verify-peer', { timeout: TIMEOUT }, () => {
    let node: TorusdProcess;
    const url = (dir: string) => `nbds://127.0.0.1:${node.port}/default?tls-certificates=${dir}`;
    before(async () => {
      node = await serve(['--tls', 'on', '--tls-certificates', pki.server, '--tls-verify-peer']);
    });

    it('a client certificate signed by the CA is accepted', async () => {
      assert.match(await runOk('nbdinfo', [url(pki.client)]), /with TLS/);
    });

    it('no client certificate, or one from another CA, is refused', async () => {
      assert.notEqual((await run('nbdinfo', [url(pki.caOnly)])).code, 0);
      await assert.rejects(
        NbdClient.connect({ host: '127.0.0.1', port: node.port }, 'default', {
          tls: loadClientTls({ certificates: pki.foreign }),
        }),
        NbdConnectionError,
      );
    });

    it('clear text still works in on mode', async () => {
      assert.match(await runOk('nbdinfo', [node.uri('default')]), /without TLS/);
    });
  });

  describe('--tls require --tls-psk', { timeout: TIMEOUT }, () => {
    let node: TorusdProcess;
    const url = (file: string) =>
      `nbds://alice@127.0.0.1:${node.port}/default?tls-psk-file=${file}`;
    before(async () => {
      node = await serve(['--tls', 'require', '--tls-psk', pki.psk]);
    });

    it('the right key works (nbdinfo, NbdClient)', async () => {
      assert.match(await runOk('nbdinfo', [url(pki.psk)]), /with TLS/);
      const client = await NbdClient.connect({ host: '127.0.0.1', port: node.port }, 'default', {
        tls: loadClientTls({ psk: pki.psk }),
      });
      await client.close();
    });

    it('a wrong key is refused', async () => {
      assert.notEqual((await run('nbdinfo', [url(pki.wrongPsk)])).code, 0);
      await assert.rejects(
        NbdClient.connect({ host: '127.0.0.1', port: node.port }, 'default', {
          tls: loadClientTls({ psk: pki.wrongPsk }),
        }),
        NbdConnectionError,
      );
    });
  });

  it('bad or missing TLS files exit 2 naming the file', { timeout: TIMEOUT }, async () => {
    const dir = await makeDataDir('tls-bad');
    dirs.push(dir);
    const missingDir = join(work, 'nowhere');
    let r = await runCli('torusd', [
      '--data-dir',
      dir,
      '--size',
      '64MiB',
      '--tls',
      'require',
      '--tls-certificates',
      missingDir,
    ]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /nowhere\/server-cert\.pem/);
    const badPsk = join(work, 'bad.psk');
    await writeFile(badPsk, 'alice:nothex\n');
    r = await runCli('torusd', [
      '--data-dir',
      dir,
      '--size',
      '64MiB',
      '--tls',
      'on',
      '--tls-psk',
      badPsk,
    ]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /bad\.psk line 1/);
    r = await runCli('torusd', ['--data-dir', dir, '--size', '64MiB', '--tls', 'maybe']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--tls: expected off, on or require/);
  });
});

function fioSkip(): string | undefined {
  const tool = missing('fio');
  if (tool) return tool;
  if (process.getuid?.() === 0 && missing('setpriv'))
    return 'setpriv missing (libnbd ignores $HOME for root)';
  return undefined;
}
