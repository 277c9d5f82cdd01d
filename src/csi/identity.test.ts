/**
 * The Identity service's answers. GetPluginCapabilities is the plugin's as
 * deployed: the spec says all instances of a version SHALL report the same
 * set "regardless of which RPCs an instance is serving", so the node
 * DaemonSet's `--node`-only instances report CONTROLLER_SERVICE too
 * (csi-sanity, given a node-only endpoint and a controller endpoint, skipped
 * its node lifecycle specs while they did not).
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createIdentityService, DRIVER_NAME } from './identity.js';

describe('Identity service', { timeout: 30_000 }, () => {
  test('GetPluginCapabilities: CONTROLLER_SERVICE and online expansion, whatever this instance serves', async () => {
    const identity = createIdentityService({ probe: async () => true });
    const { capabilities } = await identity.GetPluginCapabilities!({});
    assert.deepEqual(capabilities, [
      { service: { type: 'CONTROLLER_SERVICE' } },
      { volume_expansion: { type: 'ONLINE' } },
    ]);
  });

  test('GetPluginInfo names the driver and a version', async () => {
    const info = await createIdentityService({ probe: async () => true }).GetPluginInfo!({});
    assert.equal(info.name, DRIVER_NAME);
    assert.match(String(info.vendor_version), /^\d+\.\d+\.\d+/);
  });

  test('Probe: ready only when the probe answers true; a rejection is not ready', async () => {
    const ready = async (probe: () => Promise<boolean>) =>
      ((await createIdentityService({ probe }).Probe!({})).ready as { value: boolean }).value;
    assert.equal(await ready(async () => true), true);
    assert.equal(await ready(async () => false), false);
    assert.equal(
      await ready(async () => {
        throw new Error('etcd unreachable');
      }),
      false,
    );
  });
});
