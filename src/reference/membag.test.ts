import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { dot, gradCheck } from './fd.ts';
import { membagBackward, membagForward } from './membag.ts';

test('reference membag backward matches finite differences', () => {
  const rng = new Rng(1);
  const [N, d, T, B] = [6, 3, 4, 5];
  // repeated slots within a bag and across tokens, and one idx >= N
  const idx = [0, 5, 0, 2, 9, 3, 3, 3, 1, 5, 5, 4, 0, 1, 2, 2, 2, 2, 2, 6];
  const V = rng.normals(N * d);
  const w = rng.normals(T * B);
  const g = rng.normals(T * d);
  const { dw, dV } = membagBackward(g, V, idx, w, N, d, T, B);
  gradCheck('membag', { V, w }, { V: dV, w: dw }, () => dot(membagForward(V, idx, w, N, d, T, B), g), { samples: 64 });
  assert.equal(dw[4], 0, 'an idx >= N has no weight gradient');
});

test('reference membag: idx >= N reads nothing, dV accumulates into dV0', () => {
  const [N, d, T, B] = [2, 2, 1, 3];
  const V = [1, 2, 3, 4];
  const idx = [1, 2, 1];
  const w = [0.5, 100, 2];
  assert.deepEqual(Array.from(membagForward(V, idx, w, N, d, T, B)), [7.5, 10]);
  const { dw, dV } = membagBackward([1, -1], V, idx, w, N, d, T, B, [10, 20, 30, 40]);
  assert.deepEqual(Array.from(dw), [-1, 0, -1]);
  assert.deepEqual(Array.from(dV), [10, 20, 32.5, 37.5]);
});
