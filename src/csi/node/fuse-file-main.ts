/**
 * The volume file helper: a process of its own per attachment on the FUSE
 * path, started detached (by the plugin or by the attachment keeper, see
 * helper-launcher.ts) so it outlives the plugin (a kill -9 or upgrade of the
 * plugin leaves the mounted volume working).
 *
 *   node fuse-file-main.js '{"nbd":{"host":…,"port":…}|{"path":…},"export":NAME,"dir":DIR,"readOnly":BOOL}'
 *
 * It connects to the export, mounts a FUSE filesystem at DIR/mnt holding the
 * file `volume`, answers on DIR/control.sock (one JSON line per request:
 * `status` → {size, connected, readOnly}; `grow` → {size} after a new
 * connection learnt the export's size), and reports once on fd 3:
 * {"ready":true,"size":N} or {"error":"not-found"|"failed","message":…}.
 * It exits when the FUSE filesystem is unmounted, after a final flush.
 * SIGTERM is ignored: the mount needs this process, only an unmount ends it.
 */
import { closeSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import { createServer } from 'node:net';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { NotFoundError } from '../../common/errors.js';
import { logger } from '../../common/log.js';
import type { NbdAddress } from '../../dataplane/nbd-client/client.js';
import { FuseFileServer } from './fuse-file-server.js';
import { NbdLink } from './nbd-link.js';

export interface FuseFileHelperArgs {
  nbd: NbdAddress;
  export: string;
  dir: string;
  readOnly: boolean;
}

const REPORT_FD = 3;
const log = logger('csi-volume-file');

function report(message: object): void {
  try {
    writeSync(REPORT_FD, JSON.stringify(message) + '\n');
    closeSync(REPORT_FD);
  } catch {
    // The plugin that started us is gone; the log has the story.
  }
}

async function main(): Promise<void> {
  const args = JSON.parse(process.argv[2] ?? '{}') as FuseFileHelperArgs;
  const mountPoint = join(args.dir, 'mnt');
  let link: NbdLink;
  try {
    link = await NbdLink.open(args.nbd, args.export, log);
  } catch (err) {
    report({ error: err instanceof NotFoundError ? 'not-found' : 'failed', message: String(err) });
    process.exit(3);
  }
  const fuseFd = openSync('/dev/fuse', 'r+');
  const mounted = spawnSync(
    'mount',
    [
      '-i',
      '-t',
      'fuse.torus',
      '-o',
      `fd=3,rootmode=40000,user_id=0,group_id=0${args.readOnly ? ',ro' : ''}`,
      `torus:${args.export}`,
      mountPoint,
    ],
    // The kernel takes the FUSE connection from the mounting process's fd 3.
    { stdio: ['ignore', 'pipe', 'pipe', fuseFd], timeout: 30_000 },
  );
  if (mounted.status !== 0) {
    report({ error: 'failed', message: `mount of the volume file failed: ${mounted.stderr}` });
    process.exit(4);
  }
  const server = new FuseFileServer(fuseFd, link, args.readOnly, log);

  const controlPath = join(args.dir, 'control.sock');
  rmSync(controlPath, { force: true });
  const control = createServer((socket) => {
    socket.setEncoding('utf8');
    socket.once('data', (line: string) => {
      const answer = async (): Promise<object> => {
        if (line.trim() === 'grow') return { size: await link.refresh() };
        return { size: link.size, connected: link.connected, readOnly: args.readOnly };
      };
      answer().then(
        (reply) => socket.end(JSON.stringify(reply) + '\n'),
        (err) => socket.end(JSON.stringify({ error: String(err) }) + '\n'),
      );
    });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((done) => control.listen(controlPath, done));
  // Ours to remove at exit only while it is still ours: a helper started for
  // the same directory after this one was unmounted may have bound it anew.
  const controlInode = statSync(controlPath).ino;
  process.on('SIGTERM', () => log.warn('SIGTERM ignored: unmount the volume file to stop'));

  log.info({ export: args.export, size: link.size, mountPoint }, 'volume file served');
  report({ ready: true, size: link.size });
  await server.closed;
  // No control.close(): libuv unlinks a closed socket's path, whoever holds it now.
  if (statSync(controlPath, { throwIfNoEntry: false })?.ino === controlInode)
    rmSync(controlPath, { force: true });
  log.info({ export: args.export }, 'volume file unmounted; exiting');
  process.exit(0);
}

main().catch((err) => {
  log.error({ err: String(err) }, 'volume file helper failed');
  report({ error: 'failed', message: String(err) });
  process.exit(1);
});
