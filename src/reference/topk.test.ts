import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { dot, gradCheck } from './fd.ts';
import { productTopk, productTopkBackward, topk, topkBackward } from './topk.ts';

/** the k best of all n^2 slots of one (t, h), straight from the full half rows s1, s2 (n each) */
function bruteSlots(s1: ArrayLike<number>, s2: ArrayLike<number>, n: number, k: number): number[] {
  const all: { s: number; slot: number }[] = [];
  for (let x = 0; x < n; x++) for (let y = 0; y < n; y++) all.push({ s: Math.fround(s1[x]! + s2[y]!), slot: x * n + y });
  all.sort((a, b) => (a.s > b.s ? -1 : a.s < b.s ? 1 : a.slot - b.slot));
  return all.slice(0, k).map((c) => c.slot);
}

/** half-score rows s [2H, T, n] -> topk -> productTopk; checks every (t, h) against bruteSlots */
function checkProductIsBrute(s: Float64Array, T: number, H: number, n: number, k: number): void {
  const half = topk(s, 2 * H * T, n, k);
  const got = productTopk(half.values, half.indices, T, H, k, n);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) {
      const s1 = s.subarray((2 * h * T + t) * n, (2 * h * T + t + 1) * n);
      const s2 = s.subarray(((2 * h + 1) * T + t) * n, ((2 * h + 1) * T + t + 1) * n);
      const o = (t * H + h) * k;
      assert.deepEqual(Array.from(got.slots.subarray(o, o + k)), bruteSlots(s1, s2, n, k), `slots of (t=${t}, h=${h})`);
    }
  }
}

test('reference topk: descending, ties to the lower index, NaN as -inf', () => {
  const r = topk([1, 3, 3, NaN, 2, 3, -Infinity, -0, 0], 1, 9, 9);
  assert.deepEqual(Array.from(r.indices), [1, 2, 5, 4, 0, 7, 8, 3, 6]);
  assert.deepEqual(Array.from(r.values), [3, 3, 3, 2, 1, -0, 0, -Infinity, -Infinity]);
  const two = topk([5, 1, 5, 0, 0, 0], 2, 3, 2);
  assert.deepEqual(Array.from(two.indices), [0, 2, 0, 1]);
});

test('reference topk backward matches finite differences of topk', () => {
  const rng = new Rng(3);
  const [rows, n, k] = [4, 9, 3];
  const s = rng.normals(rows * n);
  const g = rng.normals(rows * k);
  const { indices } = topk(s, rows, n, k);
  gradCheck('topk', { s }, { s: topkBackward(indices, g, rows, n, k) }, () => dot(topk(s, rows, n, k).values, g), { samples: rows * n });
});

test('reference productTopk backward matches finite differences (selection held fixed)', () => {
  const rng = new Rng(5);
  const [T, H, n, k] = [3, 2, 7, 4];
  const half = topk(rng.normals(2 * H * T * n), 2 * H * T, n, k);
  const fwd = productTopk(half.values, half.indices, T, H, k, n);
  const g = rng.normals(T * H * k);
  // weights as a function of the half values with the picks of fwd, in exact float64
  const weights = (v: Float64Array): Float64Array => {
    const w = new Float64Array(T * H * k);
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < H; h++) {
        const o = (t * H + h) * k;
        let m = -Infinity;
        for (let j = 0; j < k; j++) {
          const c = fwd.pick[o + j]!;
          w[o + j] = v[(2 * h * T + t) * k + (c >>> 16)]! + v[((2 * h + 1) * T + t) * k + (c & 0xffff)]!;
          m = Math.max(m, w[o + j]!);
        }
        let sum = 0;
        for (let j = 0; j < k; j++) sum += w[o + j] = Math.exp(w[o + j]! - m);
        for (let j = 0; j < k; j++) w[o + j]! /= sum;
      }
    }
    return w;
  };
  const v = Float64Array.from(half.values);
  const dv = productTopkBackward(fwd.weights, fwd.pick, g, T, H, k);
  gradCheck('productTopk', { v }, { v: dv }, () => dot(weights(v), g), { samples: v.length });
  // the weights of the forward are those of its picks
  const w0 = weights(v);
  for (let i = 0; i < w0.length; i++) assert.ok(Math.abs(w0[i]! - fwd.weights[i]!) < 1e-6);
});

test('reference productTopk equals the top-k of all n^2 slots (random and tied scores)', () => {
  const rng = new Rng(9);
  for (const [T, H, n, k] of [
    [3, 2, 11, 4],
    [2, 1, 6, 6],
    [4, 3, 20, 7],
    [1, 1, 1, 1],
  ] as const) {
    checkProductIsBrute(rng.normals(2 * H * T * n), T, H, n, k);
    // small integers: many equal sums, so the lower-slot rule decides
    checkProductIsBrute(Float64Array.from(rng.ints(2 * H * T * n, 4)), T, H, n, k);
    checkProductIsBrute(new Float64Array(2 * H * T * n), T, H, n, k);
  }
});

test('reference productTopk: equal scores go to the lower slot; weights are a softmax', () => {
  // half 1 = [1, 0, 1], half 2 = [0, 1, 1] (n = 3, k = 2): top halves (1@0, 1@2) and (1@1, 1@2);
  // all four candidates score 2, slots 0*3+1, 0*3+2, 2*3+1, 2*3+2 -> the k = 2 best are 1 and 2
  const s = [1, 0, 1, 0, 1, 1];
  const half = topk(s, 2, 3, 2);
  const r = productTopk(half.values, half.indices, 1, 1, 2, 3);
  assert.deepEqual(Array.from(r.slots), [1, 2]);
  assert.deepEqual(Array.from(r.pick), [(0 << 16) | 0, (0 << 16) | 1]);
  assert.deepEqual(Array.from(r.scores), [2, 2]);
  assert.deepEqual(Array.from(r.weights), [0.5, 0.5]);
});
