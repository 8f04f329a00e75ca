import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LimitError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import * as ref from '../../reference/topk.ts';
import { assertClose } from '../../testing/allclose.ts';
import { bits, testGpu, withMapping, type Mapping } from '../../testing/gpu.ts';
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
async function checkProduct(T: number, H: number, n: number, k: number, data: Data, seed: number, cheapHalves = false): Promise<void> {
  const gpu = await testGpu();
  const rng = new Rng(seed);
  // cheapHalves (k = n = 2, for huge T): small integers and indices [0, 1] or [1, 0], unsorted (the reference topk takes seconds there)
  const half = cheapHalves
    ? { values: Float64Array.from(rng.ints(2 * H * T * k, 3)), indices: Uint32Array.from({ length: 2 * H * T * k }, (_, i) => (i % 2) ^ (i >> 1) % 2) }
    : ref.topk(halfScores(rng, 2 * H * T * n, data), 2 * H * T, n, k);
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
// every case with the adapter's mapping; k = 5 and 32 with the GPU mapping forced too
for (const [T, H, n, k] of CASES) {
  for (const mapping of ['adapter', 'gpu'] as const) {
    if (mapping === 'gpu' && k !== 5 && k !== 32) continue;
    for (const data of ['normal', 'ties'] as const) {
      test(`productTopk ${data} T=${T} H=${H} n=${n} k=${k} (${mapping} mapping)`, async () => withMapping(await testGpu(), mapping, () => checkProduct(T, H, n, k, data, T * 1000 + n * 10 + k)));
    }
  }
}

test('productTopk: past 65535 workgroups (2-D grid; T*H not a multiple of a CPU workgroup)', async () => {
  await checkProduct(65536 * 8 + 1, 1, 2, 2, 'ties', 17, true); // a (t, h) per thread, 8 per workgroup on a CPU adapter
  await withMapping(await testGpu(), 'gpu', () => checkProduct(33000, 2, 3, 2, 'ties', 17));
});

/** f32 bit patterns of half values: NaNs, infinities, -0/+0 and small integers (many equal sums) */
const SPECIAL_BITS = [0x7fc00000, 0xffc00000, 0xff800000, 0x7f800000, 0x80000000, 0, 0x3f800000, 0xbf800000, 0x40000000, 0x3f800000, 0x40400000, 0xc0000000];

test('productTopk: the CPU and GPU mappings agree bitwise (ties, NaNs, infinities, -0/+0; forward and backward)', async () => {
  const gpu = await testGpu();
  const rng = new Rng(7);
  for (const [T, H, n, k, special] of [
    [37, 3, 64, 8, false], // the memory layer's shape
    [37, 3, 64, 8, true],
    [11, 2, 37, 5, true],
    [9, 1, 3, 1, true],
    [5, 2, 100, 32, false],
    [5, 2, 100, 32, true],
  ] as const) {
    const G = 2 * H * T;
    // half values: ties (small integers with -0/+0), or all the special patterns; indices: k distinct of n per half row
    const vb = special ? Uint32Array.from(rng.ints(G * k, SPECIAL_BITS.length), (i) => SPECIAL_BITS[i]!) : new Uint32Array(Float32Array.from(rng.ints(G * k, 5), (v) => (v === 4 ? -0 : v - 1)).buffer);
    const idx: number[] = [];
    for (let r = 0; r < G; r++) {
      const perm = Array.from({ length: n }, (_, i) => i);
      for (let j = 0; j < k; j++) {
        const x = j + rng.int(n - j);
        [perm[j], perm[x]] = [perm[x]!, perm[j]!];
        idx.push(perm[j]!);
      }
    }
    const values = await gpu.tensor([2 * H, T, k], 'f32', 'values');
    gpu.flush();
    gpu.device.queue.writeBuffer(values.buffer, values.offset, vb); // exact bits (NaN payloads)
    const indices = await gpu.tensorFrom(idx, [2 * H, T, k], 'u32', 'indices');
    const dw = await gpu.tensorFrom(rng.normals(T * H * k), [T, H, k], 'f32', 'dweights');
    const run = (mapping: Mapping) =>
      withMapping(gpu, mapping, async () => {
        const o = await outputs(T, H, k);
        const dvalues = await gpu.tensor([2 * H, T, k], 'f32', 'dvalues');
        await productTopkForward(gpu, o, { values, indices }, n);
        await productTopkBackward(gpu, { dvalues }, { weights: o.weights, pick: o.pick, dweights: dw });
        const out: Record<string, number[]> = {};
        for (const [name, t] of [...Object.entries(o), ['dvalues', dvalues] as const]) out[name] = await bits(gpu, t);
        for (const t of [...Object.values(o), dvalues]) t.dispose();
        return out;
      });
    const cpu = await run('adapter');
    const gpuMapped = await run('gpu');
    for (const name of Object.keys(cpu)) assert.deepEqual(cpu[name], gpuMapped[name], `T=${T} H=${H} n=${n} k=${k} special=${special}: ${name}`);
    const want = ref.productTopk(new Float32Array(vb.buffer), idx, T, H, k, n);
    assert.deepEqual(cpu['slots'], Array.from(want.slots), `T=${T} H=${H} n=${n} k=${k} special=${special}: slots vs reference`);
    for (const t of [values, indices, dw]) t.dispose();
  }
});

/** the k best of all n^2 slots of one (t, h), from its full half rows s1, s2 (n each) */
function bruteSlots(s1: ArrayLike<number>, s2: ArrayLike<number>, n: number, k: number): number[] {
  const all: { s: number; slot: number }[] = [];
  for (let x = 0; x < n; x++) for (let y = 0; y < n; y++) all.push({ s: Math.fround(s1[x]! + s2[y]!), slot: x * n + y });
  all.sort((a, b) => (a.s > b.s ? -1 : a.s < b.s ? 1 : a.slot - b.slot));
  return all.slice(0, k).map((c) => c.slot);
}

test('productTopk end to end: topkForward then productTopkForward = the top-k of all n^2 slots', async () => {
  const gpu = await testGpu();
  // the layer's use: both kernels in the adapter's mapping (a CPU adapter's CPU mappings)
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

for (const mapping of ['adapter', 'gpu'] as const) {
  test(`productTopk: equal scores go to the lower slot (${mapping} mapping)`, async () => withMapping(await testGpu(), mapping, checkEqualScores));
}

async function checkEqualScores(): Promise<void> {
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
}

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
