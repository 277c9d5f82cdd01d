/**
 * What the CSI node tests share: requests as kubelet sends them, and the
 * inventory and forced cleanup of everything an attachment can leave on the
 * machine (mounts, loop devices, volume file helpers) under a directory.
 */
import { readFileSync, readdirSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runCommand } from '../../src/csi/node/command.js';
import { readMounts } from '../../src/csi/node/mounts.js';
import type { NodeService } from '../../src/csi/node/node-service.js';

export function mountCapability(
  fsType = '',
  mode = 'SINGLE_NODE_WRITER',
  mountFlags: string[] = [],
) {
  return {
    access_mode: { mode },
    mount: { fs_type: fsType, mount_flags: mountFlags },
    access_type: 'mount',
  };
}

export function blockCapability(mode = 'SINGLE_NODE_WRITER') {
  return { access_mode: { mode }, block: {}, access_type: 'block' };
}

/**
 * The node calls as kubelet makes them, under `kubeletDir()`: the paths it
 * uses (the staging directory and a pod's target) and the requests, each
 * making the directories kubelet would make first. Both getters are asked
 * at each call: tests set them up in `before`, and may replace the service.
 */
export function kubeletCalls(service: () => NodeService, kubeletDir: () => string) {
  const staging = (volume: string) =>
    join(kubeletDir(), 'plugins/kubernetes.io/csi/pv', volume, 'globalmount');
  const target = (pod: string, volume: string) =>
    join(kubeletDir(), 'pods', pod, 'volumes/kubernetes.io~csi', volume, 'mount');
  return {
    staging,
    target,
    async stage(volume: string, capability: object = mountCapability()) {
      await mkdir(staging(volume), { recursive: true }); // kubelet makes it
      return service().NodeStageVolume!({
        volume_id: volume,
        staging_target_path: staging(volume),
        volume_capability: capability,
        volume_context: {},
      });
    },
    async publish(
      volume: string,
      pod: string,
      readonly = false,
      capability: object = mountCapability(),
    ) {
      await mkdir(join(target(pod, volume), '..'), { recursive: true }); // kubelet makes the parent
      return service().NodePublishVolume!({
        volume_id: volume,
        staging_target_path: staging(volume),
        target_path: target(pod, volume),
        volume_capability: capability,
        readonly,
      });
    },
    unpublish: (volume: string, pod: string) =>
      service().NodeUnpublishVolume!({ volume_id: volume, target_path: target(pod, volume) }),
    unstage: (volume: string) =>
      service().NodeUnstageVolume!({ volume_id: volume, staging_target_path: staging(volume) }),
  };
}

/** Mount points at or under any of the directories, deepest (last mounted) first. */
export async function mountsUnder(...dirs: string[]): Promise<string[]> {
  return (await readMounts())
    .map((m) => m.mountPoint)
    .filter((p) => dirs.some((d) => p === d || p.startsWith(d + '/')))
    .reverse();
}

/** Loop devices whose backing file lies under a directory. */
export async function loopsUnder(dir: string): Promise<string[]> {
  const loops: string[] = [];
  for (const name of readdirSync('/sys/block').filter((n) => n.startsWith('loop'))) {
    try {
      const backing = (await readFile(`/sys/block/${name}/loop/backing_file`, 'utf8')).trim();
      if (backing.startsWith(dir + '/')) loops.push(`/dev/${name}`);
    } catch {
      // not bound
    }
  }
  return loops;
}

/** Pids of processes whose command line names the directory (volume file helpers). */
export function helpersUnder(dir: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (cmdline.includes('fuse-file-main') && cmdline.includes(dir)) pids.push(Number(entry));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

/** Leave nothing behind, whatever state a failed test left: unmount, detach, kill. */
export async function forceCleanup(stateDir: string, kubeletDir: string): Promise<void> {
  for (const mountPoint of await mountsUnder(kubeletDir))
    await runCommand('umount', ['-l', mountPoint]);
  for (const loop of await loopsUnder(stateDir)) await runCommand('losetup', ['-d', loop]);
  for (const mountPoint of await mountsUnder(stateDir))
    await runCommand('umount', ['-l', mountPoint]);
  for (const pid of helpersUnder(stateDir)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
}
