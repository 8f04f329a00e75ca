import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LimitError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import * as ref from '../../reference/topk.ts';
import { assertClose } from '../../testing/allclose.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { productTopkBackward, productTopkForward } from './product_topk.ts';
import { topkForward } from './topk.ts';

type Data = 'normal' | 'ties';

/** half-scores [2H, T, n]: normals, or small integers (many equal candidate sums) */
function halfScores(rng: Rng, size: number, data: Data): Float64Array {
  return data === 'ties' ? Float64Array.from(rng.ints(size, 4)) : Float64Array.from(rng.normals(size, 3), Math.fround);
}

interface Outputs {
  slots: Tensor;
  weights: Tensor;
  pick: Tensor;
  scores: Tensor;
}

async function outputs(T: number, H: number, k: number): Promise<Outputs> {
  const gpu = await testGpu();
  return {
    slots: await gpu.tensor([T, H, k], 'u32', 'slots'),
    weights: await gpu.tensor([T, H, k], 'f32', 'weights'),
    pick: await gpu.tensor([T, H, k], 'u32', 'pick'),
    scores: await gpu.tensor([T, H, k], 'f32', 'scores'),
  };
}

/** forward (slots, pick, scores exact; weights 1e-5) and backward (1e-4) against the reference */
async function checkProduct(T: number, H: number, n: number, k: number, data: Data, seed: number): Promise<void> {
  const gpu = await testGpu();
  const rng = new Rng(seed);
  const half = ref.topk(halfScores(rng, 2 * H * T * n, data), 2 * H * T, n, k);
  const want = ref.productTopk(half.values, half.indices, T, H, k, n);
  const values = await gpu.tensorFrom(half.values, [2 * H, T, k], 'f32', 'values');
  const indices = await gpu.tensorFrom(half.indices, [2 * H, T, k], 'u32', 'indices');
  const o = await outputs(T, H, k);
  await productTopkForward(gpu, o, { values, indices }, n);
  assert.deepEqual(Array.from(await gpu.read(o.slots)), Array.from(want.slots), 'slots');
  assert.deepEqual(Array.from(await gpu.read(o.pick)), Array.from(want.pick), 'pick');
  assert.deepEqual(Array.from(await gpu.read(o.scores)), Array.from(Float32Array.from(want.scores)), 'scores');
  assertClose('weights', await gpu.read(o.weights), want.weights, 1e-5);
  const dw = rng.normals(T * H * k);
  const tdw = await gpu.tensorFrom(dw, [T, H, k], 'f32', 'dweights');
  const dvalues = await gpu.tensorFrom(rng.normals(2 * H * T * k), [2 * H, T, k], 'f32', 'dvalues'); // overwritten
  await productTopkBackward(gpu, { dvalues }, { weights: o.weights, pick: o.pick, dweights: tdw });
  const got = await gpu.read(dvalues);
  assertClose('dvalues', got, ref.productTopkBackward(await gpu.read(o.weights), want.pick, dw, T, H, k), 1e-4);
  // bitwise reproducible
  await productTopkBackward(gpu, { dvalues }, { weights: o.weights, pick: o.pick, dweights: tdw });
  assert.deepEqual(await gpu.read(dvalues), got, 'dvalues differ between runs');
  for (const t of [values, indices, o.slots, o.weights, o.pick, o.scores, tdw, dvalues]) t.dispose();
}

// k = 1 (one candidate), 5 (25 candidates), 32 (1024: the layer's default), 64 (4096: the most)
const CASES: [T: number, H: number, n: number, k: number][] = [
  [1, 1, 1, 1],
  [7, 3, 5, 5],
  [5, 2, 37, 5],
  [7, 3, 100, 32],
  [3, 2, 64, 64],
];
for (const [T, H, n, k] of CASES) {
  for (const data of ['normal', 'ties'] as const) {
    test(`productTopk ${data} T=${T} H=${H} n=${n} k=${k}`, () => checkProduct(T, H, n, k, data, T * 1000 + n * 10 + k));
  }
}

test('productTopk: one workgroup per (t, h) past 65535 (2-D grid)', () => checkProduct(33000, 2, 3, 2, 'ties', 17));

/** the k best of all n^2 slots of one (t, h), from its full half rows s1, s2 (n each) */
function bruteSlots(s1: ArrayLike<number>, s2: ArrayLike<number>, n: number, k: number): number[] {
  const all: { s: number; slot: number }[] = [];
  for (let x = 0; x < n; x++) for (let y = 0; y < n; y++) all.push({ s: Math.fround(s1[x]! + s2[y]!), slot: x * n + y });
  all.sort((a, b) => (a.s > b.s ? -1 : a.s < b.s ? 1 : a.slot - b.slot));
  return all.slice(0, k).map((c) => c.slot);
}

test('productTopk end to end: topkForward then productTopkForward = the top-k of all n^2 slots', async () => {
  const gpu = await testGpu();
  for (const [T, H, n, k, data] of [
    [5, 2, 37, 8, 'normal'],
    [5, 2, 37, 8, 'ties'],
    [3, 4, 100, 32, 'ties'],
    [2, 1, 1000, 32, 'normal'],
  ] as const) {
    const rng = new Rng(n + k);
    const s = halfScores(rng, 2 * H * T * n, data);
    const ts = await gpu.tensorFrom(s, [2 * H, T, n], 'f32', 's');
    const values = await gpu.tensor([2 * H, T, k], 'f32', 'values');
    const indices = await gpu.tensor([2 * H, T, k], 'u32', 'indices');
    const o = await outputs(T, H, k);
    await topkForward(gpu, { values, indices }, { scores: ts });
    await productTopkForward(gpu, o, { values, indices }, n);
    const slots = await gpu.read(o.slots);
    const scores = await gpu.read(o.scores);
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < H; h++) {
        const s1 = s.subarray((2 * h * T + t) * n, (2 * h * T + t + 1) * n);
        const s2 = s.subarray(((2 * h + 1) * T + t) * n, ((2 * h + 1) * T + t + 1) * n);
        const want = bruteSlots(s1, s2, n, k);
        const o0 = (t * H + h) * k;
        assert.deepEqual(Array.from(slots.subarray(o0, o0 + k)), want, `${data} n=${n} k=${k}: slots of (t=${t}, h=${h})`);
        // each score is the sum of the slot's two half-scores
        want.forEach((slot, j) => assert.equal(scores[o0 + j], Math.fround(s1[Math.floor(slot / n)]! + s2[slot % n]!)));
      }
    }
    for (const t of [ts, values, indices, o.slots, o.weights, o.pick, o.scores]) t.dispose();
  }
});

test('productTopk: equal scores go to the lower slot', async () => {
  const gpu = await testGpu();
  // halves (n = 3, k = 2) as topk gives them: values [1, 1] at indices [0, 2] and [1, 2];
  // all four candidates score 2; slots 1, 2, 7, 8 -> 1 (a=0,b=0) and 2 (a=0,b=1)
  const values = await gpu.tensorFrom([1, 1, 1, 1], [2, 1, 2], 'f32', 'values');
  const indices = await gpu.tensorFrom([0, 2, 1, 2], [2, 1, 2], 'u32', 'indices');
  const o = await outputs(1, 1, 2);
  await productTopkForward(gpu, o, { values, indices }, 3);
  assert.deepEqual(Array.from(await gpu.read(o.slots)), [1, 2]);
  assert.deepEqual(Array.from(await gpu.read(o.pick)), [0, 1]);
  assert.deepEqual(Array.from(await gpu.read(o.weights)), [0.5, 0.5]);
  for (const t of [values, indices, o.slots, o.weights, o.pick, o.scores]) t.dispose();
});

test('productTopk: shape, dtype and limit errors', async () => {
  const gpu = await testGpu();
  const v = await gpu.tensor([4, 3, 8], 'f32', 'v');
  const ix = await gpu.tensor([4, 3, 8], 'u32', 'ix');
  const vOdd = await gpu.tensor([3, 3, 8], 'f32', 'vOdd');
  const ixOdd = await gpu.tensor([3, 3, 8], 'u32', 'ixOdd');
  const v65 = await gpu.tensor([2, 1, 65], 'f32', 'v65');
  const ix65 = await gpu.tensor([2, 1, 65], 'u32', 'ix65');
  const ix2 = await gpu.tensor([4, 3, 7], 'u32', 'ix2');
  const o = await outputs(3, 2, 8);
  const oBad = await outputs(2, 3, 8);
  const w = await gpu.tensor([3, 2, 8], 'f32', 'w');
  const is = (cls: typeof ShapeError | typeof LimitError, re: RegExp) => (e: Error) => e instanceof cls && re.test(e.message);
  await assert.rejects(productTopkForward(gpu, o, { values: vOdd, indices: ixOdd }, 10), is(ShapeError, /productTopkForward: values vOdd\[3,3,8\]:f32 should have shape \[2H,T,k\]: its first dimension 3 must be even/));
  await assert.rejects(productTopkForward(gpu, o, { values: v, indices: ix2 }, 10), is(ShapeError, /productTopkForward: indices ix2\[4,3,7\]:u32 should have shape \[4,3,8\]/));
  await assert.rejects(productTopkForward(gpu, o, { values: v, indices: v }, 10), is(ShapeError, /productTopkForward: indices v\[4,3,8\]:f32 must be one of u32/));
  await assert.rejects(productTopkForward(gpu, oBad, { values: v, indices: ix }, 10), is(ShapeError, /productTopkForward: slots slots\[2,3,8\]:u32 should have shape \[3,2,8\]/));
  await assert.rejects(productTopkForward(gpu, { ...o, pick: o.weights }, { values: v, indices: ix }, 10), is(ShapeError, /productTopkForward: pick weights\[3,2,8\]:f32 must be one of u32/));
  await assert.rejects(productTopkForward(gpu, o, { values: v, indices: ix }, 4097), is(LimitError, /productTopkForward: n = 4097 .* the limit is an integer n <= 4096/));
  await assert.rejects(productTopkForward(gpu, o, { values: v, indices: ix }, 5), is(ShapeError, /productTopkForward: n = 5 sub-keys per half is less than k = 8/));
  const o65 = await outputs(1, 1, 65);
  await assert.rejects(productTopkForward(gpu, o65, { values: v65, indices: ix65 }, 100), is(LimitError, /productTopkForward: values v65\[2,1,65\]:f32 has k = 65; the limit is k <= 64/));
  await assert.rejects(productTopkBackward(gpu, { dvalues: vOdd }, { weights: w, pick: o.pick, dweights: w }), is(ShapeError, /productTopkBackward: dvalues vOdd\[3,3,8\]:f32 should have shape \[2H,T,k\]/));
  await assert.rejects(productTopkBackward(gpu, { dvalues: v }, { weights: w, pick: w, dweights: w }), is(ShapeError, /productTopkBackward: pick w\[3,2,8\]:f32 must be one of u32/));
  await assert.rejects(productTopkBackward(gpu, { dvalues: v }, { weights: w, pick: o.pick, dweights: oBad.weights }), is(ShapeError, /productTopkBackward: dweights weights\[2,3,8\]:f32 should have shape \[3,2,8\]/));
  await assert.rejects(productTopkBackward(gpu, { dvalues: v65 }, { weights: o65.weights, pick: o65.pick, dweights: o65.weights }), is(LimitError, /productTopkBackward: dvalues v65\[2,1,65\]:f32 has k = 65/));
  for (const t of [v, ix, vOdd, ixOdd, v65, ix65, ix2, w, ...Object.values(o), ...Object.values(oBad), ...Object.values(o65)]) t.dispose();
});
