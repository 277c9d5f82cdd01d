/**
 * The node plugin's side of the attachment keeper (keeper.ts): a
 * HelperLauncher whose helpers the keeper starts, checks and kills in its
 * own container. Every call is one connection to the keeper's socket.
 */
import { connect } from 'node:net';
import type { Logger } from '../../common/log.js';
import type { FuseFileHelperArgs } from './fuse-file-main.js';
import { HELPER_START_TIMEOUT_MS, startFailure, type HelperLauncher } from './helper-launcher.js';
import { KEEPER_PROTOCOL, MAX_KEEPER_LINE_BYTES, type KeeperReply } from './keeper-wire.js';

/** How long `alive` and `kill` may take: the keeper answers them from /proc. */
const QUICK_TIMEOUT_MS = 10_000;

/** The keeper could not be reached or did not answer; retry once it runs. */
export class KeeperUnavailableError extends Error {
  override name = 'KeeperUnavailableError';
}

/** The keeper answered with an error: the request was wrong (versions apart, paths apart). */
export class KeeperRefusedError extends Error {
  override name = 'KeeperRefusedError';
}

export class KeeperHelperLauncher implements HelperLauncher {
  constructor(
    readonly keeper: string,
    private readonly log: Logger,
  ) {}

  async start(args: FuseFileHelperArgs): Promise<number> {
    const reply = await this.request(
      { op: 'start', args },
      HELPER_START_TIMEOUT_MS + QUICK_TIMEOUT_MS,
    );
    if (!('report' in reply)) throw this.unexpected('start', reply);
    if (reply.report.ready) return reply.pid;
    this.log.warn(
      { export: args.export, report: reply.report },
      'the keeper could not start a helper',
    );
    throw startFailure(args.export, reply.report);
  }

  async alive(pid: number, dir: string): Promise<boolean> {
    const reply = await this.request({ op: 'alive', pid, dir }, QUICK_TIMEOUT_MS);
    if (!('alive' in reply)) throw this.unexpected('alive', reply);
    return reply.alive;
  }

  async kill(pid: number, dir: string): Promise<void> {
    const reply = await this.request({ op: 'kill', pid, dir }, QUICK_TIMEOUT_MS);
    if (!('killed' in reply)) throw this.unexpected('kill', reply);
  }

  private unexpected(op: string, reply: KeeperReply): Error {
    if ('error' in reply)
      return new KeeperRefusedError(
        `the attachment keeper at ${this.keeper} refused ${op}: ${reply.error}`,
      );
    return new KeeperRefusedError(
      `the attachment keeper at ${this.keeper} answered ${op} with ${JSON.stringify(reply)}`,
    );
  }

  private request(body: object, timeoutMs: number): Promise<KeeperReply> {
    const unavailable = (why: string) =>
      new KeeperUnavailableError(
        `the attachment keeper at ${this.keeper} ${why}: is \`torusblk csi-keeper --socket ${this.keeper}\` running (the torus-csi-keeper pod on this node)?`,
      );
    return new Promise((done, fail) => {
      const socket = connect(this.keeper);
      let text = '';
      const timer = setTimeout(() => {
        socket.destroy();
        fail(unavailable(`did not answer in ${timeoutMs} ms`));
      }, timeoutMs);
      socket.setEncoding('utf8');
      socket.on('connect', () =>
        socket.write(JSON.stringify({ protocol: KEEPER_PROTOCOL, ...body }) + '\n'),
      );
      socket.on('data', (chunk: string) => {
        text += chunk;
        if (text.length > MAX_KEEPER_LINE_BYTES) socket.destroy(new Error('reply too long'));
      });
      socket.on('error', (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        fail(unavailable(`does not answer (${err.code ?? err.message})`));
      });
      socket.on('end', () => {
        clearTimeout(timer);
        try {
          done(JSON.parse(text) as KeeperReply);
        } catch {
          fail(unavailable(`answered ${text.trim() || 'nothing'}`));
        }
      });
    });
  }
}
