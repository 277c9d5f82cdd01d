import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cloneLineage, lineageProblem, ownerOf } from './lineage.js';

test('a volume with no ancestors owns every generation', () => {
  assert.equal(ownerOf(5, [], 1), 5);
  assert.equal(ownerOf(5, [], 1e6), 5);
});

test('a clone of a clone: each ancestor owns its range of generations', () => {
  const ancestors = [
    { volumeId: 2, throughGeneration: 7 },
    { volumeId: 1, throughGeneration: 3 },
  ];
  assert.equal(lineageProblem(3, ancestors), undefined);
  assert.equal(ownerOf(3, ancestors, 9), 3);
  assert.equal(ownerOf(3, ancestors, 8), 3);
  assert.equal(ownerOf(3, ancestors, 7), 2);
  assert.equal(ownerOf(3, ancestors, 4), 2);
  assert.equal(ownerOf(3, ancestors, 3), 1);
  assert.equal(ownerOf(3, ancestors, 1), 1);
});

test('cloneLineage: a clone of S at G puts S first, through G', () => {
  assert.deepEqual(cloneLineage(2, [], 7), [{ volumeId: 2, throughGeneration: 7 }]);
  assert.deepEqual(cloneLineage(2, [{ volumeId: 1, throughGeneration: 3 }], 7), [
    { volumeId: 2, throughGeneration: 7 },
    { volumeId: 1, throughGeneration: 3 },
  ]);
});

test('cloneLineage: a version of a clone from before its first commit shares only the ancestors', () => {
  // C is a clone of P at 3 and has not committed: its version 3 is all P's.
  assert.deepEqual(cloneLineage(2, [{ volumeId: 1, throughGeneration: 3 }], 3), [
    { volumeId: 1, throughGeneration: 3 },
  ]);
  const deep = [
    { volumeId: 2, throughGeneration: 7 },
    { volumeId: 1, throughGeneration: 3 },
  ];
  assert.deepEqual(cloneLineage(3, deep, 5), [
    { volumeId: 2, throughGeneration: 5 },
    { volumeId: 1, throughGeneration: 3 },
  ]);
  assert.deepEqual(cloneLineage(3, deep, 0), []);
});

test('lineageProblem names what is wrong', () => {
  assert.match(lineageProblem(1, [{ volumeId: 1, throughGeneration: 2 }])!, /twice/);
  assert.match(
    lineageProblem(3, [
      { volumeId: 2, throughGeneration: 2 },
      { volumeId: 1, throughGeneration: 2 },
    ])!,
    /not below/,
  );
  assert.match(lineageProblem(3, [{ volumeId: 0, throughGeneration: 2 }])!, /not a volume id/);
});
