/**
 * The attachment keeper (`torusblk csi-keeper`): a small process that starts
 * volume file helpers for the node plugin and answers whether they run, over
 * a unix socket (keeper-wire.ts). It exists for containers: there the plugin
 * is its container's first process, and when it dies the kernel ends every
 * process of its pid namespace — the helpers with it, and every mount on the
 * FUSE path fails with EIO. Helpers the keeper starts belong to the keeper's
 * container, which a crash or upgrade of the plugin leaves alone.
 *
 * Contract: the keeper holds no state a restart would lose (a helper is
 * named by its pid and directory, both in the plugin's attachment record);
 * a helper started for a plugin that hung up before hearing the answer is
 * unmounted again (it would be attached to nothing); a helper whose volume
 * file is unmounted exits by itself, as when the plugin starts it. The
 * keeper and the plugin must see the state directory at the same path, with
 * mounts propagating between them (the helper mounts its FUSE file there).
 */
import { chmod, rm } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Logger } from '../../common/log.js';
import { prepareSocketPath } from '../endpoint.js';
import { runCommand } from './command.js';
import { helperAlive, killHelper, spawnHelper } from './helper-launcher.js';
import {
  KeeperProtocolError,
  MAX_KEEPER_LINE_BYTES,
  parseKeeperRequest,
  type KeeperReply,
  type KeeperRequest,
} from './keeper-wire.js';

export interface KeeperOptions {
  socketPath: string;
  /** The plugin's --state-dir: helpers are started only for directories under `<stateDir>/fuse/`. */
  stateDir: string;
  log: Logger;
}

export interface Keeper {
  /** Helpers this keeper started that still run. */
  running(): number;
  /** Stop answering and remove the socket; the helpers are left running. */
  close(): Promise<void>;
}

export async function startKeeper(options: KeeperOptions): Promise<Keeper> {
  const { socketPath, log } = options;
  const helpersRoot = join(options.stateDir, 'fuse');
  const started = new Map<number, string>();

  async function handle(request: KeeperRequest, hungUp: () => boolean): Promise<KeeperReply> {
    if (request.op === 'alive') return { alive: helperAlive(request.pid, request.dir) };
    if (request.op === 'kill') {
      const killed = killHelper(request.pid, request.dir);
      if (killed) log.warn({ pid: request.pid, dir: request.dir }, 'volume file helper killed');
      return { killed };
    }
    const { pid, report } = await spawnHelper(request.args);
    if (!report.ready) {
      log.warn({ export: request.args.export, report }, 'volume file helper failed to start');
      return { pid, report };
    }
    started.set(pid, request.args.dir);
    log.info({ export: request.args.export, pid }, 'volume file helper started');
    if (hungUp()) {
      // Nobody will record this attachment: unmounting the file ends the helper.
      log.warn({ export: request.args.export, pid }, 'the plugin hung up; stopping the helper');
      await runCommand('umount', [join(request.args.dir, 'mnt')], 30_000);
    }
    return { pid, report };
  }

  function serve(socket: Socket): void {
    let text = '';
    let closed = false;
    socket.setEncoding('utf8');
    socket.on('error', () => undefined);
    socket.on('close', () => (closed = true));
    const answer = (reply: KeeperReply) => {
      if (!closed) socket.end(JSON.stringify(reply) + '\n');
    };
    socket.on('data', (chunk: string) => {
      if (text.includes('\n')) return; // one request per connection
      text += chunk;
      if (text.length > MAX_KEEPER_LINE_BYTES && !text.includes('\n')) {
        answer({ error: `request longer than ${MAX_KEEPER_LINE_BYTES} bytes` });
        return;
      }
      if (!text.includes('\n')) return;
      let request: KeeperRequest;
      try {
        request = parseKeeperRequest(text.slice(0, text.indexOf('\n')), helpersRoot);
      } catch (err) {
        if (!(err instanceof KeeperProtocolError)) throw err;
        log.warn({ err: err.message }, 'keeper request refused');
        answer({ error: err.message });
        return;
      }
      handle(request, () => closed).then(answer, (err: Error) => {
        log.error({ op: request.op, err: String(err) }, 'keeper request failed');
        answer({ error: String(err) });
      });
    });
  }

  await prepareSocketPath(socketPath);
  const server = createServer(serve);
  await new Promise<void>((done, fail) => {
    server.once('error', fail);
    server.listen(socketPath, () => done());
  });
  // Whoever reaches the socket starts root processes that mount: root only.
  await chmod(socketPath, 0o600);
  log.info({ socket: socketPath, helpersRoot }, 'attachment keeper listening');

  const running = () => {
    for (const [pid, dir] of started) if (!helperAlive(pid, dir)) started.delete(pid);
    return started.size;
  };
  return {
    running,
    close: async () => {
      await new Promise<void>((done) => server.close(() => done()));
      await rm(socketPath, { force: true });
    },
  };
}
