/**
 * The Identity service: who the plugin is, what it offers, whether it is
 * ready. Probe answers ready only once `probe` resolves true — the
 * controller's asks the cluster (or single node) to list its volumes, the
 * node's connects to its NBD address — so the livenessprobe sidecar and the
 * CO see a plugin that cannot reach its storage as not ready, not as broken.
 *
 * GetPluginCapabilities describes the plugin as deployed, not this process:
 * the spec says every instance of one version SHALL answer the same,
 * "regardless of which RPCs an instance is serving". So a `--node`-only
 * instance (the node DaemonSet) also reports CONTROLLER_SERVICE, which the
 * controller Deployment provides (csi-sanity's node lifecycle specs, pointed
 * at a node-only instance, skipped themselves until this was so).
 */
import { readFileSync } from 'node:fs';
import type { CsiService } from './handlers.js';

/** The driver's name: what StorageClasses name as `provisioner` and the CSIDriver object declares. */
export const DRIVER_NAME = 'csi.torus.dev';

/** How long one probe may take before it counts as "not ready". */
const PROBE_TIMEOUT_MS = 5000;

export interface IdentityOptions {
  /** Resolves true when the storage this plugin serves answers; false or a rejection: not ready. */
  probe: () => Promise<boolean>;
}

/** package.json's version: dist/src/csi → the project root, as from src/csi. */
export function packageVersion(): string {
  for (const relative of ['../../../package.json', '../../package.json']) {
    try {
      const parsed = JSON.parse(readFileSync(new URL(relative, import.meta.url), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (parsed.name === 'torus' && parsed.version) return parsed.version;
    } catch {
      // not there: try the next place
    }
  }
  return '0.0.0-unknown';
}

export function createIdentityService(options: IdentityOptions): CsiService {
  const version = packageVersion();
  return {
    async GetPluginInfo() {
      return { name: DRIVER_NAME, vendor_version: version, manifest: {} };
    },
    async GetPluginCapabilities() {
      return {
        capabilities: [
          { service: { type: 'CONTROLLER_SERVICE' } },
          { volume_expansion: { type: 'ONLINE' } },
        ],
      };
    },
    async Probe() {
      return { ready: { value: await probeWithin(options.probe, PROBE_TIMEOUT_MS) } };
    },
  };
}

async function probeWithin(probe: () => Promise<boolean>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((done) => {
    timer = setTimeout(() => done(false), ms);
  });
  try {
    return await Promise.race([probe().catch(() => false), late]);
  } finally {
    clearTimeout(timer);
  }
}
