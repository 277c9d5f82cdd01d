/**
 * The long-running binaries (torusd, torusblk nbdserve) stop the same way:
 * the first SIGTERM/SIGINT runs the closers in reverse order of start (drain
 * NBD, commit what was acknowledged, leave the cluster, close stores); a
 * second signal exits at once.
 */
import type { Logger } from '../common/log.js';
import { reportIfSlow } from '../common/slow-step.js';

export class Closers {
  private readonly steps: { name: string; close: () => Promise<void> }[] = [];

  /** The first signal, when one came before untilSignalled() was waiting for it. */
  private early: string | undefined;
  private onSignal: ((signal: string) => void) | undefined;

  /**
   * Signals are taken from construction on, so a SIGTERM during start-up
   * (a supervisor giving up, a test stopping a node the moment it says it
   * listens) still gets the orderly shutdown instead of the default kill.
   */
  constructor(private readonly log: Logger) {
    const take = (signal: string) => {
      if (this.onSignal) this.onSignal(signal);
      else if (this.early) {
        this.log.warn({ signal }, 'second signal during start-up: exiting at once');
        process.exit(1);
      } else this.early = signal;
    };
    process.on('SIGTERM', () => take('SIGTERM'));
    process.on('SIGINT', () => take('SIGINT'));
  }

  /** Run `close` at shutdown, before everything pushed earlier; `name` says what it is in the log. */
  push(name: string, close: () => Promise<void>): void {
    this.steps.push({ name, close });
  }

  /**
   * Every step, latest first; one failing does not stop the rest. A step is
   * never cut short (it may be committing acknowledged writes), but one that
   * takes long is named in the log, so a shutdown that hangs says where.
   */
  async closeAll(): Promise<void> {
    while (this.steps.length > 0) {
      const { name, close } = this.steps.pop()!;
      await reportIfSlow(this.log, `shutdown: ${name}`, close).catch((err) =>
        this.log.error({ step: name, err: String(err) }, 'shutdown step failed'),
      );
    }
  }

  /** Resolve once a signal came and every step ran. */
  untilSignalled(what = 'draining connections and committing acknowledged writes'): Promise<void> {
    return new Promise<void>((done) => {
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) {
          this.log.warn({ signal }, 'second signal: exiting without finishing shutdown');
          process.exit(1);
        }
        stopping = true;
        this.log.info({ signal }, `shutting down: ${what}`);
        this.closeAll().then(done, done);
      };
      this.onSignal = stop;
      if (this.early) stop(this.early);
    });
  }
}
