import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { dot, gradCheck } from './fd.ts';
import { linearBackward, linearForward, matmul } from './matmul.ts';

/** row-major transpose of an (R,C) matrix */
function transpose(x: ArrayLike<number>, R: number, C: number): Float64Array {
  const t = new Float64Array(R * C);
  for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) t[c * R + r] = x[r * C + c]!;
  return t;
}

test('reference matmul: a worked example, bias, alpha and accumulate', () => {
  // [[1,2,3],[4,5,6]] . [[1,0],[0,1],[1,1]] = [[4,5],[10,11]]
  const a = [1, 2, 3, 4, 5, 6];
  const b = [1, 0, 0, 1, 1, 1];
  assert.deepEqual([...matmul(a, b, { M: 2, N: 2, K: 3 })], [4, 5, 10, 11]);
  const r = matmul(a, b, { M: 2, N: 2, K: 3 }, { alpha: 2, bias: [1, -1], out0: [100, 0, 0, 0] });
  assert.deepEqual([...r], [109, 9, 21, 21]);
});

test('reference matmul: transposes and batches agree with explicit transposes', () => {
  const rng = new Rng(3);
  const [B, M, N, K] = [3, 4, 5, 6];
  const a = rng.normals(B * M * K);
  const b = rng.normals(K * N);
  const want = matmul(a, b, { M, N, K, batch: B, batchA: true });
  const at = new Float64Array(B * M * K);
  for (let t = 0; t < B; t++) at.set(transpose(a.subarray(t * M * K, (t + 1) * M * K), M, K), t * M * K);
  const bt = transpose(b, K, N);
  const got = matmul(at, bt, { M, N, K, batch: B, batchA: true }, { transA: true, transB: true });
  for (let i = 0; i < want.length; i++) assert.ok(Math.abs(want[i]! - got[i]!) < 1e-12);
  // batch 1 of the batched product is the 2-D product of its slices
  const one = matmul(a.subarray(M * K, 2 * M * K), b, { M, N, K });
  for (let i = 0; i < one.length; i++) assert.ok(Math.abs(one[i]! - want[M * N + i]!) < 1e-12);
});

test('reference linear backward matches finite differences', () => {
  const rng = new Rng(1);
  const [M, N, K] = [3, 4, 5];
  const x = rng.normals(M * K);
  const w = rng.normals(N * K);
  const b = rng.normals(N);
  const g = rng.normals(M * N);
  const { dx, dw, db } = linearBackward(g, x, w, M, N, K);
  gradCheck('linear', { x, w, b }, { x: dx, w: dw, b: db }, () => dot(linearForward(x, w, b, M, N, K), g));
});
