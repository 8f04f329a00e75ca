// the memsel reference against the spec's formula written out naively (w_j = sum exp, no
// max-shift; small scores keep it exact enough), with the prefix and padding handled by hand.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { NO_TOKEN, memselRef } from './memsel.ts';

test('memselRef: ln w and the top-K match the formula written out', () => {
  const dims = { B: 2, T: 11, H: 6, Hkv: 2, d: 5 };
  const { B, T, H, Hkv, d } = dims;
  const G = H / Hkv;
  const rng = new Rng(3);
  const q = rng.normals(B * T * H * d);
  const k = rng.normals(B * T * Hkv * d);
  const start = [2, 4];
  const length = [9, 20]; // row 1: clamped to T
  const scale = 0.3;
  const K = 4;
  for (const group of ['sum', 'first'] as const) {
    const got = memselRef(q, k, start, length, dims, K, scale, group);
    for (let b = 0; b < B; b++) {
      const [st, end] = [start[b]!, Math.min(length[b]!, T)];
      for (let g = 0; g < Hkv; g++) {
        const w: [number, number][] = [];
        for (let j = 0; j < T; j++) {
          const s = got.scores[(b * Hkv + g) * T + j]!;
          if (j < st || j >= end) {
            assert.equal(s, -Infinity, `b=${b} g=${g} j=${j} is not scored`);
            continue;
          }
          let sum = 0;
          for (let i = st; i < end; i++) {
            for (let h = g * G; h < (group === 'sum' ? (g + 1) * G : g * G + 1); h++) {
              let dot = 0;
              for (let c = 0; c < d; c++) dot += q[((b * T + i) * H + h) * d + c]! * k[((b * T + j) * Hkv + g) * d + c]!;
              sum += Math.exp(scale * dot);
            }
          }
          assert.ok(Math.abs(s - Math.log(sum)) < 1e-12, `b=${b} g=${g} j=${j}: ${s} vs ${Math.log(sum)}`);
          w.push([sum, j]);
        }
        w.sort((x, y) => y[0] - x[0] || x[1] - y[1]);
        const want = Array.from({ length: K }, (_, r) => w[r]?.[1] ?? NO_TOKEN);
        assert.deepEqual(Array.from(got.indices.subarray((b * Hkv + g) * K, (b * Hkv + g + 1) * K)), want, `b=${b} g=${g} ${group}`);
      }
    }
  }
});

test('memselRef: fewer valid positions than K, empty and inverted ranges, exact ties by position', () => {
  const dims = { B: 3, T: 6, H: 2, Hkv: 1, d: 2 };
  // every key the same: ln w ties exactly, so positions come out in order
  const q = new Float64Array(3 * 6 * 2 * 2).fill(0.5);
  const k = new Float64Array(3 * 6 * 1 * 2).fill(1);
  const r = memselRef(q, k, [1, 3, 5], [4, 3, 2], dims, 4);
  assert.deepEqual(Array.from(r.indices), [1, 2, 3, NO_TOKEN, ...Array<number>(8).fill(NO_TOKEN)]);
  assert.ok(r.scores.slice(6).every((v) => v === -Infinity));
  // w_j = 3 positions * 2 heads * exp(0.5*2/sqrt(2))
  assert.ok(Math.abs(r.scores[1]! - Math.log(6 * Math.exp(1 / Math.sqrt(2)))) < 1e-12);
});
