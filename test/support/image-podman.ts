/**
 * The Torus image for tests: built with deploy/build-image.sh (the script a
 * user runs), containers run with podman under deploy/image/containers.conf,
 * and removed whatever happened. Everything that runs podman goes through
 * `podman()`, so the settings this host needs are never forgotten.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DEPLOY } from './image-manifests.js';
import { missing, run, type RunResult } from '../tools.js';
import { PROJECT } from '../torusd-process.js';

export const CONTAINERS_CONF = join(DEPLOY, 'image', 'containers.conf');
/** A tag of its own, so a test never replaces the image a user built. */
export const TEST_IMAGE = `localhost/torus-test:${
  (JSON.parse(readFileSync(join(PROJECT, 'package.json'), 'utf8')) as { version: string }).version
}`;
/** A cold build makes the Debian base first (2-5 minutes); a warm one takes seconds. */
export const BUILD_LIMIT_MS = 9 * 60_000;

/** Why the image tests cannot run here, or undefined. */
export function imageSkipReason(): string | undefined {
  if (process.getuid?.() !== 0)
    return 'the image tests need root: podman with privileged containers, loop devices and host mounts';
  return missing('podman', 'mmdebstrap', 'runc');
}

export function podman(args: string[], timeoutMs = 60_000): Promise<RunResult> {
  return run('podman', args, { timeoutMs, env: { CONTAINERS_CONF } });
}

/** Run podman and insist on success, with its output in the failure. */
export async function podmanOk(args: string[], timeoutMs = 60_000): Promise<string> {
  const r = await podman(args, timeoutMs);
  if (r.code !== 0)
    throw new Error(`podman ${args.join(' ')} exited ${r.code}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

export interface ImageBuild {
  /** build-image.sh's output, phases and durations included. */
  log: string;
  sizeBytes: number;
}

/** Build deploy/Dockerfile as TEST_IMAGE on the cached base; the project is already compiled. */
export async function buildTestImage(): Promise<ImageBuild> {
  const r = await run(join(DEPLOY, 'build-image.sh'), [TEST_IMAGE], {
    timeoutMs: BUILD_LIMIT_MS,
    env: { TORUS_SKIP_BUILD: '1', CONTAINERS_CONF },
  });
  const log = `${r.stdout}${r.stderr}`;
  if (r.code !== 0) throw new Error(`deploy/build-image.sh exited ${r.code}:\n${log.slice(-4000)}`);
  const size = await podmanOk(['image', 'inspect', '--format', '{{.Size}}', TEST_IMAGE]);
  return { log, sizeBytes: Number(size.trim()) };
}

/** Remove the test image's tag; the cached base stays for the next run. */
export async function removeTestImage(): Promise<void> {
  await podman(['rmi', '--force', TEST_IMAGE]);
}

/** Stop and remove a container, whatever state it is in. */
export async function removeContainer(name: string): Promise<void> {
  await podman(['rm', '--force', '--time', '10', name], 60_000);
}

/** Its output so far, for failure messages. */
export async function containerLogs(name: string): Promise<string> {
  const r = await podman(['logs', '--tail', '60', name]);
  return `${r.stdout}${r.stderr}`;
}
