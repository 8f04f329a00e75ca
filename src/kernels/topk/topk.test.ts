import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Gpu } from '../../gpu/device.ts';
import { LimitError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import * as ref from '../../reference/topk.ts';
import { bits, testGpu, withMapping, type Mapping } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { topkBackward, topkForward } from './topk.ts';

type Data = 'normal' | 'ties';
/** an f32 tensor holding exactly these bits (gpu.write would go through JS numbers) */
async function tensorOfBits(gpu: Gpu, b: Uint32Array<ArrayBuffer>, shape: number[], label: string): Promise<Tensor> {
  const t = await gpu.tensor(shape, 'f32', label);
  gpu.flush();
  gpu.device.queue.writeBuffer(t.buffer, t.offset, b);
  return t;
}

/** f32 bit patterns that stress the order: NaNs (quiet, negative, signalling), infinities, -0/+0, ties, denormals */
const SPECIAL_BITS = [0x7fc00000, 0xffc00000, 0x7f800001, 0xff800000, 0x7f800000, 0x80000000, 0, 0x3f800000, 0xbf800000, 0x40000000, 0x3f800000, 1, 0x80000001];
const f32 = (a: ArrayLike<number>): number[] => Array.from(Float32Array.from(a));

/** scores [...lead, n]: normals (scaled up: large magnitudes), or small integers (many ties) */
function makeScores(rng: Rng, size: number, data: Data): Float64Array {
  return data === 'ties' ? Float64Array.from(rng.ints(size, 3), (v) => v - 1) : Float64Array.from(rng.normals(size, 1e3), Math.fround);
}

/** forward and backward of one shape against the reference: indices, values and dscores exactly */
async function checkTopk(lead: number[], n: number, k: number, data: Data, seed: number): Promise<void> {
  const gpu = await testGpu();
  const rng = new Rng(seed);
  const rows = lead.reduce((a, b) => a * b, 1);
  const s = makeScores(rng, rows * n, data);
  const want = ref.topk(s, rows, n, k);
  const ts = await gpu.tensorFrom(s, [...lead, n], 'f32', 'scores');
  const values = await gpu.tensor([...lead, k], 'f32', 'values');
  const indices = await gpu.tensor([...lead, k], 'u32', 'indices');
  await topkForward(gpu, { values, indices }, { scores: ts });
  assert.deepEqual(Array.from(await gpu.read(indices)), Array.from(want.indices), 'indices');
  assert.deepEqual(Array.from(await gpu.read(values)), f32(want.values), 'values');
  // backward overwrites every element (dscores starts as garbage); scattering is exact
  const dv = Float64Array.from(rng.normals(rows * k), Math.fround);
  const tdv = await gpu.tensorFrom(dv, [...lead, k], 'f32', 'dvalues');
  const ds = await gpu.tensorFrom(rng.normals(rows * n), [...lead, n], 'f32', 'dscores');
  await topkBackward(gpu, { dscores: ds }, { indices, dvalues: tdv });
  assert.deepEqual(Array.from(await gpu.read(ds)), f32(ref.topkBackward(want.indices, dv, rows, n, k)), 'dscores');
  for (const t of [ts, values, indices, tdv, ds]) t.dispose();
}

// n = 1, 5, 37 share the 64-entry pipeline of the GPU mapping; 1000 and 4096 (the largest row)
// have their own. k = 1, n (when n <= 64), 32 and 64 (the largest k); the CPU mapping has a
// pipeline per K = nextPow2(k). every case runs with the adapter's mapping, the marked ones
// with the GPU mapping forced too (on a CPU adapter; compiles cost, so a subset)
const CASES: [n: number, ks: number[], gpuKs: number[]][] = [
  [1, [1], []],
  [5, [1, 5], [5]],
  [37, [1, 32, 37], [32]],
  [1000, [1, 7, 32, 64], [7]],
  [4096, [1, 64], [64]],
];
for (const [n, ks, gpuKs] of CASES) {
  for (const k of ks) {
    for (const mapping of ['adapter', 'gpu'] as const) {
      if (mapping === 'gpu' && !gpuKs.includes(k)) continue;
      for (const data of ['normal', 'ties'] as const) {
        const lead = n > 1000 ? [2, 3] : [6, 7];
        test(`topk ${data} [${lead.join(',')},${n}] k=${k} (${mapping} mapping)`, async () => withMapping(await testGpu(), mapping, () => checkTopk(lead, n, k, data, n * 100 + k)));
      }
    }
  }
}

test('topk: past 65535 workgroups (2-D grid), rows not a multiple of a CPU workgroup, a 1-D and a 4-D tensor', async () => {
  await checkTopk([70001 * 8 + 3], 3, 2, 'ties', 1);
  await checkTopk([100], 64, 64, 'normal', 2);
  await checkTopk([2, 1, 3, 2], 9, 4, 'ties', 3);
  await withMapping(await testGpu(), 'gpu', () => checkTopk([70001], 3, 2, 'ties', 4));
});

for (const mapping of ['adapter', 'gpu'] as const) {
  test(`topk: NaN reads as -inf, -inf and equal values tie by index, -0 equals +0 (${mapping} mapping)`, async () => withMapping(await testGpu(), mapping, checkSpecials));
  test(`topk: backward sums repeated indices and drops indices >= n (${mapping} mapping)`, async () => withMapping(await testGpu(), mapping, checkRepeats));
}

test('topk: the CPU and GPU mappings agree bitwise (NaNs, infinities, -0/+0, ties, denormals, repeated indices)', async () => {
  const gpu = await testGpu();
  const rng = new Rng(99);
  // n = 64, k = 8: the memory layer's half-scores; k = n; a long row with many ties
  for (const [rows, n, k] of [
    [203, 64, 8],
    [13, 37, 37],
    [9, 1000, 32],
  ] as const) {
    const s = Uint32Array.from(rng.ints(rows * n, SPECIAL_BITS.length), (i) => SPECIAL_BITS[i]!);
    const ts = await tensorOfBits(gpu, s, [rows, n], 'scores');
    const dv = await gpu.tensorFrom(rng.normals(rows * k), [rows, k], 'f32', 'dvalues');
    // repeated and out-of-range indices for the backward's summation order
    const rep = await gpu.tensorFrom(rng.ints(rows * k, n + 2), [rows, k], 'u32', 'repeated');
    const run = (mapping: Mapping) =>
      withMapping(gpu, mapping, async () => {
        const values = await gpu.tensor([rows, k], 'f32', 'values');
        const indices = await gpu.tensor([rows, k], 'u32', 'indices');
        const ds = await gpu.tensor([rows, n], 'f32', 'dscores');
        await topkForward(gpu, { values, indices }, { scores: ts });
        const out = { values: await bits(gpu, values), indices: Array.from(await gpu.read(indices)), ds: [] as number[], dsRep: [] as number[] };
        await topkBackward(gpu, { dscores: ds }, { indices, dvalues: dv });
        out.ds = await bits(gpu, ds);
        await topkBackward(gpu, { dscores: ds }, { indices: rep, dvalues: dv });
        out.dsRep = await bits(gpu, ds);
        for (const t of [values, indices, ds]) t.dispose();
        return out;
      });
    const cpu = await run('adapter');
    const gpuMapped = await run('gpu');
    assert.deepEqual(cpu, gpuMapped, `rows=${rows} n=${n} k=${k}`);
    assert.deepEqual(cpu.indices, Array.from(ref.topk(new Float32Array(s.buffer), rows, n, k).indices), `rows=${rows} n=${n} k=${k}: indices vs reference`);
    for (const t of [ts, dv, rep]) t.dispose();
  }
});

async function checkSpecials(): Promise<void> {
  const gpu = await testGpu();
  const s = [1, NaN, -Infinity, 3, -0, 0, 3, NaN, -Infinity, 2];
  const [n, k] = [s.length, s.length];
  const want = ref.topk(s, 1, n, k);
  assert.deepEqual(Array.from(want.indices), [3, 6, 9, 0, 4, 5, 1, 2, 7, 8]);
  const ts = await gpu.tensorFrom(s, [n], 'f32', 'scores');
  const values = await gpu.tensor([k], 'f32', 'values');
  const indices = await gpu.tensor([k], 'u32', 'indices');
  await topkForward(gpu, { values, indices }, { scores: ts });
  assert.deepEqual(Array.from(await gpu.read(indices)), Array.from(want.indices));
  // Object.is: the -0 keeps its sign, NaNs come out as -inf
  assert.deepEqual(Array.from(await gpu.read(values)), Array.from(want.values));
  for (const t of [ts, values, indices]) t.dispose();
}

async function checkRepeats(): Promise<void> {
  const gpu = await testGpu();
  const [n, k] = [4, 3];
  const idx = [2, 2, 0, 7, 1, 3];
  const dv = [1, 2, 4, 8, 16, 32];
  const ti = await gpu.tensorFrom(idx, [2, k], 'u32', 'indices');
  const tdv = await gpu.tensorFrom(dv, [2, k], 'f32', 'dvalues');
  const ds = await gpu.tensor([2, n], 'f32', 'dscores');
  await topkBackward(gpu, { dscores: ds }, { indices: ti, dvalues: tdv });
  assert.deepEqual(Array.from(await gpu.read(ds)), [4, 0, 3, 0, 0, 16, 0, 32]);
  assert.deepEqual(Array.from(await gpu.read(ds)), Array.from(ref.topkBackward(idx, dv, 2, n, k)));
  for (const t of [ti, tdv, ds]) t.dispose();
}

test('topk: shape, dtype and limit errors', async () => {
  const gpu = await testGpu();
  const mk = (shape: number[], dtype: 'f32' | 'u32' | 'bf16', label: string) => gpu.tensor(shape, dtype, label);
  const scores = await mk([2, 3, 100], 'f32', 's');
  const v = await mk([2, 3, 8], 'f32', 'v');
  const ix = await mk([2, 3, 8], 'u32', 'ix');
  const vBad = await mk([3, 2, 8], 'f32', 'vBad');
  const ixBad = await mk([2, 3, 7], 'u32', 'ixBad');
  const v65 = await mk([2, 3, 65], 'f32', 'v65');
  const ix65 = await mk([2, 3, 65], 'u32', 'ix65');
  const big = await mk([1, 4097], 'f32', 'big');
  const vBig = await mk([1, 8], 'f32', 'vBig');
  const ixBig = await mk([1, 8], 'u32', 'ixBig');
  const small = await mk([2, 3, 5], 'f32', 'small');
  const sHalf = await mk([2, 3, 100], 'bf16', 'sHalf');
  const is = (cls: typeof ShapeError | typeof LimitError, re: RegExp) => (e: Error) => e instanceof cls && re.test(e.message);
  await assert.rejects(topkForward(gpu, { values: vBad, indices: ix }, { scores }), is(ShapeError, /topkForward: values vBad\[3,2,8\]:f32 should have shape \[2,3,\*\]/));
  await assert.rejects(topkForward(gpu, { values: v, indices: ixBad }, { scores }), is(ShapeError, /topkForward: indices ixBad\[2,3,7\]:u32 should have shape \[2,3,8\]/));
  await assert.rejects(topkForward(gpu, { values: v, indices: v }, { scores }), is(ShapeError, /topkForward: indices v\[2,3,8\]:f32 must be one of u32/));
  await assert.rejects(topkForward(gpu, { values: v, indices: ix }, { scores: sHalf }), is(ShapeError, /topkForward: scores sHalf\[2,3,100\]:bf16 must be one of f32/));
  await assert.rejects(topkForward(gpu, { values: v65, indices: ix65 }, { scores }), is(LimitError, /topkForward: values v65\[2,3,65\]:f32 asks for k = 65; the limit is k <= 64/));
  await assert.rejects(topkForward(gpu, { values: vBig, indices: ixBig }, { scores: big }), is(LimitError, /topkForward: scores big\[1,4097\]:f32 has rows of n = 4097; the limit is n <= 4096/));
  await assert.rejects(topkForward(gpu, { values: v, indices: ix }, { scores: small }), is(ShapeError, /topkForward: k = 8 \(values v\[2,3,8\]:f32\) must be in 1..n = 5/));
  await assert.rejects(topkBackward(gpu, { dscores: scores }, { indices: ix, dvalues: ix }), is(ShapeError, /topkBackward: dvalues ix\[2,3,8\]:u32 must be one of f32/));
  await assert.rejects(topkBackward(gpu, { dscores: scores }, { indices: ixBad, dvalues: v }), is(ShapeError, /topkBackward: indices ixBad\[2,3,7\]:u32 should have shape \[2,3,8\]/));
  await assert.rejects(topkBackward(gpu, { dscores: big }, { indices: ixBig, dvalues: vBig }), is(LimitError, /topkBackward: dscores big\[1,4097\]:f32 has rows of n = 4097/));
  for (const t of [scores, v, ix, vBad, ixBad, v65, ix65, big, vBig, ixBig, small, sHalf]) t.dispose();
});
