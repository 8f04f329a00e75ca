import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { gradCheck } from './fd.ts';
import { IGNORE_INDEX, xentBackward, xentForward } from './xent.ts';

test('reference xent backward matches finite differences (with ignored rows)', () => {
  const rng = new Rng(3);
  const [N, V, dloss] = [5, 7, 0.7];
  const x = rng.normals(N * V, 2);
  const t = [3, IGNORE_INDEX, 0, 6, IGNORE_INDEX];
  const { lse } = xentForward(x, t, N, V);
  const { dlogits } = xentBackward(x, t, lse, N, V, dloss);
  gradCheck('xent', { x }, { x: dlogits }, () => dloss * xentForward(x, t, N, V).loss, { samples: N * V });
});

test('reference xent: hand-worked row, large logits, all rows ignored', () => {
  // x = [0, ln 3]: softmax = [1/4, 3/4], loss of target 0 = ln 4
  const f = xentForward([0, Math.log(3)], [0], 1, 2);
  assert.ok(Math.abs(f.loss - Math.log(4)) < 1e-15);
  const b = xentBackward([0, Math.log(3)], [0], f.lse, 1, 2);
  assert.deepEqual([...b.dlogits].map((v) => +v.toFixed(15)), [-0.75, 0.75]);
  // shifting by 1e4 changes nothing (the max is subtracted first)
  const big = xentForward([1e4, 1e4 + Math.log(3)], [0], 1, 2);
  assert.ok(Math.abs(big.loss - Math.log(4)) < 1e-12);
  const none = xentForward([1, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX], 2, 2);
  assert.equal(none.loss, 0);
  assert.deepEqual([...xentBackward([1, 2, 3, 4], [IGNORE_INDEX, IGNORE_INDEX], none.lse, 2, 2).dlogits], [0, 0, 0, 0]);
});
