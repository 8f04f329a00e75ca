import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { dot, gradCheck } from './fd.ts';
import { swigluBackward, swigluForward } from './swiglu.ts';

test('reference swiglu backward matches finite differences', () => {
  const rng = new Rng(1);
  const [N, H] = [3, 5];
  const gu = rng.normals(N * 2 * H, 3);
  const g = rng.normals(N * H);
  gradCheck('swiglu', { gu }, { gu: swigluBackward(g, gu, N, H) }, () => dot(swigluForward(gu, N, H), g), { samples: N * 2 * H });
});

test('reference swiglu is finite for large |g|', () => {
  const gu = [-1000, 800, 2, 3]; // N=1, H=2
  const out = swigluForward(gu, 1, 2);
  assert.ok(Math.abs(out[0]!) < 1e-300);
  assert.equal(out[1], 2400);
  const d = swigluBackward([1, 1], gu, 1, 2);
  assert.ok(d.every(Number.isFinite));
});
