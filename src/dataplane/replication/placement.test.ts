/**
 * ClusterPlacement's read candidates against its write targets: the
 * `likely` leading candidates are exactly the remote targets a write
 * chooses now (where a copy should be), whatever is local or down; every
 * other candidate comes after them.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, test } from 'node:test';
import type { RingDescription } from '../../model/ring/index.js';
import { ClusterPlacement } from './placement.js';

const VOLUME = 3;
const members: string[] = Array.from({ length: 5 }, () => randomUUID());
const ring: RingDescription = {
  version: 1,
  type: 'ketama',
  replication: 2,
  members: members.map((uuid) => ({ uuid, weight: 1 << 30 })),
};
const address = (k: number): string => `127.0.0.1:${20000 + k}`;

function placementAt(localUuid: string, live: readonly string[], holdsCopies = true) {
  const placement = new ClusterPlacement(
    localUuid,
    { clusterId: 'c', nodeId: localUuid },
    holdsCopies,
  );
  placement.update(
    ring,
    live.map((uuid) => ({ uuid, address: address(members.indexOf(uuid)) })),
    members.map((uuid, k) => ({ uuid, address: address(k) })),
  );
  return placement;
}

function assertLikelyAreTargets(placement: ClusterPlacement): void {
  for (let index = 0; index < 200; index++) {
    const read = placement.readCandidates(VOLUME, index);
    const write = placement.writeTargets(VOLUME, index);
    assert.equal(read.likely, write.remote.length, `block ${index}: likely`);
    assert.deepEqual(read.remote.slice(0, read.likely), write.remote, `block ${index}: order`);
    assert.equal(new Set(read.remote).size, read.remote.length, `block ${index}: no repeats`);
  }
}

describe('placement: read candidates start with the write targets', () => {
  test('a client outside the ring, every node live', () => {
    const placement = placementAt(randomUUID(), members, false);
    assertLikelyAreTargets(placement);
    assert.equal(placement.readCandidates(VOLUME, 7).likely, 2);
  });

  test('a ring member: its own copy is not a remote candidate', () => {
    assertLikelyAreTargets(placementAt(members[0], members));
  });

  test('a member down: the next live node is likely, the down one asked last', () => {
    const down = members[1];
    const placement = placementAt(
      members[0],
      members.filter((uuid) => uuid !== down),
    );
    assertLikelyAreTargets(placement);
    const downAt = placement.peerIndex(down);
    for (let index = 0; index < 200; index++) {
      const { remote, likely } = placement.readCandidates(VOLUME, index);
      const at = remote.indexOf(downAt!);
      if (at >= 0) assert.ok(at >= likely, `block ${index}: the down node is not likely`);
    }
  });
});
