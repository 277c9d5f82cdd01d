/**
 * Attaching a volume's NBD export as a local block device, whichever way the
 * node can: the kernel's NBD client (kernel-nbd-attach.ts, production) or a
 * FUSE volume file under a loop device (fuse-attach.ts, where the kernel has
 * no nbd module). Both keep the attachment alive without the plugin process,
 * so a restarted plugin finds it through its record (attachments.ts).
 */
import { existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

/** `nbdfuse` names the FUSE + loop path (the plugin's `--attach` value). */
export type AttachMode = 'kernel' | 'nbdfuse';
export type AttachModeOption = AttachMode | 'auto';

/** What an attach made: enough to find, grow, check and undo it after a restart. */
export interface AttachedDevice {
  mode: AttachMode;
  /** The block device: /dev/loopN or /dev/nbdN. */
  device: string;
  /** FUSE path: the attachment's directory (mount point, control socket, log) and helper pid. */
  helperDir?: string;
  helperPid?: number;
  /**
   * FUSE path: the attachment keeper's socket when the keeper started the
   * helper (its pid is one of the keeper's pid namespace); absent when the
   * plugin started it itself.
   */
  helperKeeper?: string;
  /**
   * FUSE path: the volume file the loop device was bound to, as
   * `major:minor inode`. The path the kernel shows for it depends on the
   * mount it was opened through, which in a container ends with the
   * container; this identity does not.
   */
  backingFile?: string;
}

/** Why an attachment does not work. */
export interface AttachmentProblem {
  message: string;
  /**
   * True when it cannot recover by itself (the helper is gone, the device
   * unbound): attaching again is the remedy. False when it is transient (the
   * NBD server away: the connection is retried; tearing down would lose the
   * writes waiting for it).
   */
  broken: boolean;
}

export interface Attacher {
  readonly mode: AttachMode;
  /** Attach an export; rejects with NotFoundError when the server has no such export. */
  attach(exportName: string, readOnly: boolean): Promise<AttachedDevice>;
  /** Flush and detach; no device, process or directory left. Safe to repeat. */
  detach(attached: AttachedDevice): Promise<void>;
  /** Make the device as large as the export is now; resolves with the device's size in bytes. */
  grow(attached: AttachedDevice): Promise<number>;
  /** Why the attachment does not work (process gone, server silent), or undefined when it does. */
  problem(attached: AttachedDevice): Promise<AttachmentProblem | undefined>;
}

/** The attach mode cannot be used on this node. */
export class AttachModeError extends Error {
  override name = 'AttachModeError';
}

export interface KernelNbdFacts {
  /** /sys/module/nbd exists (built in or loaded). */
  nbdModule: boolean;
  /** nbd-client is on PATH. */
  nbdClient: boolean;
}

export function probeKernelNbd(): KernelNbdFacts {
  return {
    nbdModule: existsSync('/sys/module/nbd'),
    nbdClient: spawnSync('sh', ['-c', 'command -v nbd-client'], { stdio: 'ignore' }).status === 0,
  };
}

/**
 * auto → the kernel client when the module and nbd-client are both there,
 * else the FUSE path; `kernel` asked for where it cannot work is refused
 * rather than silently replaced.
 */
export function chooseAttachMode(requested: AttachModeOption, facts: KernelNbdFacts): AttachMode {
  const kernelUsable = facts.nbdModule && facts.nbdClient;
  if (requested === 'nbdfuse') return 'nbdfuse';
  if (requested === 'kernel') {
    if (!kernelUsable)
      throw new AttachModeError(
        `--attach kernel needs ${facts.nbdModule ? '' : 'the nbd kernel module (modprobe nbd)'}` +
          `${!facts.nbdModule && !facts.nbdClient ? ' and ' : ''}` +
          `${facts.nbdClient ? '' : 'nbd-client (apt-get install nbd-client)'}; ` +
          'or use --attach auto to fall back to FUSE + loop',
      );
    return 'kernel';
  }
  return kernelUsable ? 'kernel' : 'nbdfuse';
}
