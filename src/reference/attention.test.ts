import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { attentionBackward, attentionForward, prefixRows, type AttentionDims } from './attention.ts';
import { dot, gradCheck } from './fd.ts';

// tiny shapes: grouped heads (NH=4 over NKV=2) with a prefix, plain multi-head attention,
// one kv head for three query heads without causality, and a custom scale; chunked prefixes
// (T=5 in chunks of 2: 3 chunks, the last short), causal and not
const CASES: AttentionDims[] = [
  { B: 2, T: 3, NH: 4, NKV: 2, HS: 3, P: 2 },
  { B: 1, T: 4, NH: 2, NKV: 2, HS: 2, P: 0 },
  { B: 1, T: 3, NH: 3, NKV: 1, HS: 2, P: 1, causal: false, scale: 0.7 },
  { B: 2, T: 5, NH: 2, NKV: 1, HS: 2, P: 2, prefixChunk: 2 },
  { B: 1, T: 5, NH: 4, NKV: 2, HS: 3, P: 1, prefixChunk: 2, causal: false },
];

for (const d of CASES) {
  test(`reference attention backward matches finite differences ${JSON.stringify(d)}`, () => {
    const { B, T, NH, NKV, HS, P } = d;
    const PR = prefixRows(d);
    const rng = new Rng(B * 100 + T * 10 + P + (d.prefixChunk ?? 0) * 1000);
    const q = rng.normals(B * T * NH * HS);
    const k = rng.normals(B * T * NKV * HS);
    const v = rng.normals(B * T * NKV * HS);
    const pk = rng.normals(B * PR * NKV * HS);
    const pv = rng.normals(B * PR * NKV * HS);
    const g = rng.normals(B * T * NH * HS);
    const f = attentionForward(q, k, v, pk, pv, d);
    const r = attentionBackward(g, q, k, v, pk, pv, f.out, f.lse, d);
    const inputs = P > 0 ? { q, k, v, pk, pv } : { q, k, v };
    const grads = { q: r.dq, k: r.dk, v: r.dv, pk: r.dpk, pv: r.dpv };
    gradCheck('attention', inputs, grads, () => dot(attentionForward(q, k, v, pk, pv, d).out, g), { samples: 40 });
  });
}

test('reference attention: causal row 0 copies its value, lse of equal scores is log(count)', () => {
  const d: AttentionDims = { B: 1, T: 2, NH: 1, NKV: 1, HS: 2, P: 0 };
  const f = attentionForward([1, 2, 3, 4], [0, 0, 0, 0], [5, 6, 7, 8], undefined, undefined, d);
  const want = [5, 6, 6, 7];
  for (let i = 0; i < 4; i++) if (Math.abs(f.out[i]! - want[i]!) > 1e-12) throw new Error(`out[${i}] = ${f.out[i]}`);
  if (Math.abs(f.lse[0]!) > 1e-12 || Math.abs(f.lse[1]! - Math.log(2)) > 1e-12) throw new Error(`lse ${f.lse}`);
});

test('reference attention: a chunked prefix is, per chunk, the shared prefix of that block', () => {
  // query t of chunk c must equal a shared-prefix attention with pk = block c (same keys, same order)
  const d: AttentionDims = { B: 1, T: 5, NH: 2, NKV: 1, HS: 3, P: 2, prefixChunk: 2 };
  const rng = new Rng(7);
  const [q, k, v] = [rng.normals(5 * 2 * 3), rng.normals(5 * 3), rng.normals(5 * 3)];
  const [pk, pv] = [rng.normals(3 * 2 * 3), rng.normals(3 * 2 * 3)];
  const f = attentionForward(q, k, v, pk, pv, d);
  for (let c = 0; c < 3; c++) {
    const block = (x: Float64Array) => x.subarray(c * 2 * 3, (c + 1) * 2 * 3);
    const g = attentionForward(q, k, v, block(pk), block(pv), { ...d, prefixChunk: 0 });
    for (let t = 2 * c; t < Math.min(5, 2 * c + 2); t++) {
      for (let i = t * 6; i < (t + 1) * 6; i++) if (Math.abs(f.out[i]! - g.out[i]!) > 1e-12) throw new Error(`chunk ${c} out[${i}]`);
    }
  }
});
