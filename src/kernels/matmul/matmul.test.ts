import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DTYPES, roundTo, type DType } from '../../gpu/dtype.ts';
import { ShapeError } from '../../gpu/errors.ts';
import * as ref from '../../reference/matmul.ts';
import { TOL, assertClose } from '../../testing/allclose.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { MATMUL_CONFIGS, chooseConfig, choosePath, chooseSplitK, configFits, configName, linearBackward, linearForward, matmul, matmulFlops, type MatmulConfig, type MatmulPath } from './matmul.ts';
import { cpuLanes, simdLanes } from '../kernel.ts';

interface Case {
  M: number;
  N: number;
  K: number;
  /** batch size; 0 = unbatched 2-D operands */
  batch?: number;
  /** which operands carry the batch dimension (the other is broadcast) */
  batchA?: boolean;
  batchB?: boolean;
  transA?: boolean;
  transB?: boolean;
  bias?: boolean;
  accumulate?: boolean;
  alpha?: number;
  scale?: number;
  config?: MatmulConfig;
  /** output dtype (default: the input dtype, or f32 when N is odd) */
  out?: DType;
  pretranspose?: boolean;
  path?: MatmulPath;
  splitK?: number;
}

/** uploads seeded inputs rounded to `dtype`, runs matmul, compares with the float64 reference */
async function check(dtype: DType, c: Case): Promise<void> {
  const gpu = await testGpu();
  const { M, N, K, batch = 0, transA = false, transB = false, scale = 1 } = c;
  const batchA = batch > 0 && (c.batchA ?? true);
  const batchB = batch > 0 && (c.batchB ?? true);
  // a packed output needs an even N: odd N runs packed inputs into an f32 output
  const outDtype: DType = c.out ?? (N % 2 === 0 ? dtype : 'f32');
  const rng = new Rng(M * 7919 + N * 104729 + K * 31 + batch);
  const B = Math.max(batch, 1);
  const a = roundTo(rng.normals((batchA ? B : 1) * M * K, scale), dtype);
  const b = roundTo(rng.normals((batchB ? B : 1) * K * N, scale), dtype);
  const bias = c.bias ? roundTo(rng.normals(N, scale * scale), dtype) : undefined;
  const out0 = c.accumulate ? roundTo(rng.normals(B * M * N, scale * scale), outDtype) : undefined;
  const aShape = [...(batchA ? [B] : []), ...(transA ? [K, M] : [M, K])];
  const bShape = [...(batchB ? [B] : []), ...(transB ? [N, K] : [K, N])];
  const outShape = [...(batch > 0 ? [B] : []), M, N];
  const ta = await gpu.tensorFrom(a, aShape, dtype, 'a');
  const tb = await gpu.tensorFrom(b, bShape, dtype, 'b');
  const tbias = bias ? await gpu.tensorFrom(bias, [N], dtype, 'bias') : undefined;
  const out = out0 ? await gpu.tensorFrom(out0, outShape, outDtype, 'out') : await gpu.tensor(outShape, outDtype, 'out');
  if (!out0) gpu.write(out, new Float32Array(out.size).fill(NaN)); // every element must be written
  await matmul(gpu, { out }, tbias ? { a: ta, b: tb, bias: tbias } : { a: ta, b: tb }, {
    transA,
    transB,
    accumulate: c.accumulate ?? false,
    alpha: c.alpha ?? 1,
    ...(c.config ? { config: c.config } : {}),
    ...(c.pretranspose !== undefined ? { pretranspose: c.pretranspose } : {}),
    ...(c.path ? { path: c.path } : {}),
    ...(c.splitK ? { splitK: c.splitK } : {}),
  });
  const want = ref.matmul(
    a,
    b,
    { M, N, K, batch: B, batchA, batchB },
    { transA, transB, alpha: c.alpha ?? 1, ...(bias ? { bias } : {}), ...(out0 ? { out0 } : {}) },
  );
  assertClose('out', await gpu.read(out), want, TOL[dtype]);
  for (const t of [ta, tb, tbias, out]) t?.dispose();
}

const trans = [
  [false, false],
  [true, false],
  [false, true],
  [true, true],
] as const;
const tname = (ta: boolean, tb: boolean) => `${ta ? 't' : 'n'}${tb ? 't' : 'n'}`;

// pipelines compile slowly on lavapipe (1-2 s each), so the cases are chosen to share them:
// per dtype, the layouts with vec4 loads (dims % 4 == 0) and with scalar loads (odd dims),
// bias and accumulate; batching, broadcasting, magnitudes and the linear tests reuse those
// specializations.
const SCALAR = [
  { M: 67, N: 129, K: 33 },
  { M: 1, N: 1, K: 1 },
  { M: 1, N: 37, K: 5 },
  { M: 130, N: 3, K: 257 },
];
const VEC = { M: 36, N: 68, K: 20 };

for (const dtype of DTYPES) {
  for (const [transA, transB] of trans) {
    // f32 runs every layout with vec4 and with scalar loads. packed storage runs nn and tt
    // here (between them, both stage layouts of each operand), nt in the bias test and tn in
    // the accumulate test; scalar loads in nn (f16) and tt (bf16).
    const packed = dtype !== 'f32';
    if (packed && transA !== transB) continue;
    test(`matmul ${dtype} ${tname(transA, transB)} ${VEC.M}x${VEC.N}x${VEC.K}`, () => check(dtype, { ...VEC, transA, transB }));
    if ((dtype === 'f16' && transA) || (dtype === 'bf16' && !transA)) continue;
    for (const s of SCALAR) {
      test(`matmul ${dtype} ${tname(transA, transB)} ${s.M}x${s.N}x${s.K}`, () => check(dtype, { ...s, transA, transB }));
    }
  }
  test(`matmul ${dtype} batched`, () => check(dtype, { M: 12, N: 20, K: 28, batch: 3 }));
  test(`matmul ${dtype} batched, b broadcast`, () => check(dtype, { M: 20, N: 12, K: 40, batch: 2, batchB: false, transB: true, bias: true }));
  test(`matmul ${dtype} batched, a broadcast`, () => check(dtype, { M: 8, N: 12, K: 4, batch: 2, batchA: false, transA: true, accumulate: true, out: 'f32' }));
  test(`matmul ${dtype} bias, alpha`, () => check(dtype, { M: 17, N: 36, K: 24, bias: true, alpha: 0.5, transB: true }));
  test(`matmul ${dtype} accumulate into f32`, () => check(dtype, { M: 20, N: 28, K: 12, accumulate: true, transA: true, out: 'f32' }));
  if (dtype === 'f32') test(`matmul ${dtype} accumulate, bias, batched`, () => check(dtype, { M: 8, N: 12, K: 16, batch: 2, accumulate: true, bias: true, transB: true, out: 'f32' }));
  if (dtype === 'f16') test(`matmul ${dtype} accumulate into ${dtype} (pairs)`, () => check(dtype, { M: 9, N: 16, K: 8, accumulate: true }));
  if (dtype === 'f32') {
    // operands stored along k transposed first (what large products do): batched, broadcast, odd sizes
    test(`matmul ${dtype} pretransposed nn, nt, tt`, async () => {
      await check(dtype, { M: 67, N: 129, K: 33, pretranspose: true });
      await check(dtype, { M: 36, N: 68, K: 20, batch: 3, transB: true, bias: true, pretranspose: true });
      await check(dtype, { M: 20, N: 12, K: 40, batch: 2, batchB: false, transA: true, transB: true, accumulate: true, pretranspose: true });
      const gpu = await testGpu();
      assert.equal(gpu.scratch.outstanding, 0, 'scratch given back');
    });
  }
  test(`matmul ${dtype} large magnitudes`, () => check(dtype, { M: 40, N: 24, K: 64, scale: dtype === 'f16' ? 12 : 300 }));
}

// split K (a decode step's products: few output tiles, long K): each slice's partial products
// summed in slice order, in every layout; K not a multiple of the slice (a short last slice), a
// slice of one BK slab, ragged M and N, alpha; the pretransposed operands split too
for (const [transA, transB] of trans) {
  test(`matmul f32 tiled split K ${tname(transA, transB)}`, async () => {
    await check('f32', { M: 7, N: 45, K: 300, transA, transB, path: 'tiled', splitK: 3, pretranspose: false });
    await check('f32', { M: 32, N: 36, K: 37, transA, transB, path: 'tiled', splitK: 5, alpha: 0.5, pretranspose: false });
    await check('f32', { M: 33, N: 20, K: 260, transA, transB, path: 'tiled', splitK: 4, pretranspose: true });
    const gpu = await testGpu();
    assert.equal(gpu.scratch.outstanding, 0, 'scratch given back');
  });
}

test('matmul split K refuses what it cannot sum, and chooseSplitK splits only products that leave the GPU idle', async () => {
  const gpu = await testGpu();
  await assert.rejects(check('f32', { M: 8, N: 8, K: 64, path: 'tiled', splitK: 2, bias: true }), /splitK needs one product with an f32 output and no bias or accumulate/);
  await assert.rejects(check('f32', { M: 8, N: 8, K: 64, path: 'tiled', splitK: 2, accumulate: true }), /splitK needs/);
  await assert.rejects(check('f32', { M: 8, N: 8, K: 64, batch: 2, path: 'tiled', splitK: 2 }), /splitK needs/);
  const d = (M: number, N: number, K: number) => ({ batch: 1, M, N, K, sA: 0, sB: 0 });
  // the GPU rule (this adapter is a CPU: no split at all)
  const fake = { cpu: false } as unknown as typeof gpu;
  assert.equal(chooseSplitK(gpu, d(32, 3200, 3200), 100, 64), 1);
  assert.equal(chooseSplitK(fake, d(32, 3200, 3200), 100, 64), 11); // 1,024 workgroups of 64 wanted; slices of >= 256
  assert.equal(chooseSplitK(fake, d(32, 3200, 3200), 100, 256), 3);
  assert.equal(chooseSplitK(fake, d(32, 3200, 6400), 10, 64), 25);
  assert.equal(chooseSplitK(fake, d(32, 384, 384), 12, 64), 1);
  assert.equal(chooseSplitK(fake, d(4096, 4096, 4096), 1024, 256), 1);
});

// a CPU adapter takes the cpu path for f32 outputs (matmul_cpu.ts): the tiled kernel's f32
// layouts again, forced, so that both run here
for (const [transA, transB] of trans) {
  test(`matmul f32 tiled ${tname(transA, transB)} (vec4 and scalar loads)`, async () => {
    await check('f32', { ...VEC, transA, transB, path: 'tiled' });
    await check('f32', { ...SCALAR[0]!, transA, transB, path: 'tiled' });
  });
}

// the cpu path at sizes around its tile (16 rows x 8 lanes x 8 columns on lavapipe): partial
// tiles, a broadcast operand, bias with accumulate, 16-bit inputs
test('matmul cpu path: tile edges, batches, bias, accumulate, 16-bit inputs', async (t) => {
  const gpu = await testGpu();
  if (simdLanes(gpu) === null) {
    t.diagnostic(`adapter '${gpu.adapterName}' has no fixed subgroup size of 4, 8 or 16: the cpu path does not apply`);
    return;
  }
  await check('f32', { M: 33, N: 65, K: 7, path: 'cpu' });
  await check('f32', { M: 16, N: 64, K: 64, transA: true, transB: true, path: 'cpu' });
  await check('f32', { M: 17, N: 130, K: 3, batch: 2, batchA: false, transB: true, bias: true, accumulate: true, alpha: 0.25, path: 'cpu' });
  await check('bf16', { M: 31, N: 9, K: 12, transA: true, out: 'f32', path: 'cpu' });
  await check('f16', { M: 5, N: 70, K: 33, batch: 3, bias: true, out: 'f32', path: 'cpu' });
});

// the other configs (the small tests above run the smallest), at sizes around their tiles:
// partial tiles in M, N and K, whole tiles, both load kinds and all four layouts among them
// (MATMUL_CONFIGS[3] is [2] with M and N swapped).
// a config that does not fit this device's workgroup memory is not run (128x128x16 fits
// lavapipe's 32 KiB only for tn).
const SWEEP: { dtype: DType; config: MatmulConfig; shape: Case }[] = [
  { dtype: 'f32', config: MATMUL_CONFIGS[0]!, shape: { M: 129, N: 128, K: 36, transA: true } },
  { dtype: 'f32', config: MATMUL_CONFIGS[1]!, shape: { M: 127, N: 129, K: 17, bias: true } },
  { dtype: 'f32', config: MATMUL_CONFIGS[2]!, shape: { M: 129, N: 65, K: 33, transA: true, transB: true } },
  { dtype: 'f32', config: MATMUL_CONFIGS[4]!, shape: { M: 65, N: 124, K: 36, transB: true, accumulate: true } },
];
for (const { dtype, config, shape } of SWEEP) {
  const { M, N, K, transA = false, transB = false } = shape;
  test(`matmul ${dtype} ${configName(config)} ${tname(transA, transB)} ${M}x${N}x${K}`, async (t) => {
    const gpu = await testGpu();
    if (!configFits(gpu, config)) {
      t.diagnostic(`${configName(config)} does not fit this device's workgroup memory; not run`);
      return;
    }
    await check(dtype, { ...shape, config });
  });
}

// nn.Linear: y = x w^T + b; dx = dout w; dw += dout^T x; db += sum dout
const LINEAR = [
  { lead: [2, 6], N: 8, K: 12, dtypes: DTYPES },
  { lead: [132], N: 20, K: 4, dtypes: DTYPES }, // more rows than one db chunk
  { lead: [37], N: 18, K: 9, dtypes: ['f32'] as const },
  { lead: [1], N: 2, K: 1, dtypes: ['f32'] as const },
];
for (const { lead, N, K, dtypes } of LINEAR) {
  for (const dtype of dtypes) {
    test(`linear ${dtype} x[${lead},${K}] w[${N},${K}]`, async () => {
      const gpu = await testGpu();
      const M = lead.reduce((p, q) => p * q, 1);
      const rng = new Rng(M * 100 + N * 10 + K);
      const x = roundTo(rng.normals(M * K), dtype);
      const w = roundTo(rng.normals(N * K, 0.5), dtype);
      const b = roundTo(rng.normals(N), dtype);
      const g = roundTo(rng.normals(M * N), dtype);
      const dw0 = roundTo(rng.normals(N * K), 'f32');
      const db0 = roundTo(rng.normals(N), 'f32');
      const tx = await gpu.tensorFrom(x, [...lead, K], dtype, 'x');
      const tw = await gpu.tensorFrom(w, [N, K], dtype, 'w');
      const tb = await gpu.tensorFrom(b, [N], dtype, 'b');
      const tg = await gpu.tensorFrom(g, [...lead, N], dtype, 'dout');
      const y = await gpu.tensor([...lead, N], dtype, 'y');
      const dx = await gpu.tensor([...lead, K], K % 2 === 0 ? dtype : 'f32', 'dx');
      const dw = await gpu.tensorFrom(dw0, [N, K], 'f32', 'dw');
      const db = await gpu.tensorFrom(db0, [N], 'f32', 'db');
      await linearForward(gpu, { y }, { x: tx, w: tw, b: tb });
      await linearBackward(gpu, { dx, dw, db }, { dout: tg, x: tx, w: tw });
      const tol = TOL[dtype];
      const r = ref.linearBackward(g, x, w, M, N, K);
      assertClose('y', await gpu.read(y), ref.linearForward(x, w, b, M, N, K), tol);
      assertClose('dx', await gpu.read(dx), r.dx, tol);
      assertClose('dw', await gpu.read(dw), r.dw.map((v, i) => v + dw0[i]!), tol);
      assertClose('db', await gpu.read(db), r.db.map((v, i) => v + db0[i]!), tol);
      for (const t of [tx, tw, tb, tg, y, dx, dw, db]) t.dispose();
    });
  }
}

test('linear backward without db, no bias forward', async () => {
  const gpu = await testGpu();
  const [M, N, K] = [8, 4, 12];
  const rng = new Rng(5);
  const x = rng.normals(M * K);
  const w = rng.normals(N * K);
  const g = rng.normals(M * N);
  const tx = await gpu.tensorFrom(x, [M, K], 'f32', 'x');
  const tw = await gpu.tensorFrom(w, [N, K], 'f32', 'w');
  const tg = await gpu.tensorFrom(g, [M, N], 'f32', 'dout');
  const y = await gpu.tensor([M, N], 'f32', 'y');
  const dx = await gpu.tensor([M, K], 'f32', 'dx');
  const dw = await gpu.tensorFrom(new Float32Array(N * K), [N, K], 'f32', 'dw');
  await linearForward(gpu, { y }, { x: tx, w: tw });
  await linearBackward(gpu, { dx, dw }, { dout: tg, x: tx, w: tw });
  const r = ref.linearBackward(g, roundTo(x, 'f32'), roundTo(w, 'f32'), M, N, K);
  assertClose('y', await gpu.read(y), ref.linearForward(roundTo(x, 'f32'), roundTo(w, 'f32'), null, M, N, K), TOL.f32);
  assertClose('dx', await gpu.read(dx), r.dx, TOL.f32);
  assertClose('dw', await gpu.read(dw), r.dw, TOL.f32);
  for (const t of [tx, tw, tg, y, dx, dw]) t.dispose();
});

test('matmul is bitwise deterministic', async () => {
  const gpu = await testGpu();
  const rng = new Rng(11);
  const [M, N, K] = [44, 68, 300];
  const a = await gpu.tensorFrom(rng.normals(M * K), [M, K], 'f32', 'a');
  const b = await gpu.tensorFrom(rng.normals(K * N), [K, N], 'f32', 'b');
  const out = await gpu.tensor([M, N], 'f32', 'out');
  await matmul(gpu, { out }, { a, b });
  const first = await gpu.read(out);
  await matmul(gpu, { out }, { a, b });
  assert.deepEqual(await gpu.read(out), first);
  for (const t of [a, b, out]) t.dispose();
});

test('matmul and linear reject wrong shapes and dtypes', async () => {
  const gpu = await testGpu();
  const t = (shape: number[], dtype: DType = 'f32', label = 't') => gpu.tensor(shape, dtype, label);
  const a = await t([4, 5], 'f32', 'a');
  const b = await t([6, 3], 'f32', 'b');
  const out = await t([4, 3], 'f32', 'out');
  await assert.rejects(matmul(gpu, { out }, { a, b }), (e: Error) => {
    assert.ok(e instanceof ShapeError);
    assert.match(e.message, /matmul: inner dimensions differ.*a\[4,5\].*b\[6,3\]/);
    return true;
  });
  const b2 = await t([5, 3], 'f32', 'b');
  const bad = await t([4, 4], 'f32', 'out');
  await assert.rejects(matmul(gpu, { out: bad }, { a, b: b2 }), /matmul: out out\[4,4\]:f32 should have shape \[4,3\]/);
  const ab = await t([2, 4, 5], 'f32', 'a');
  const bb = await t([3, 5, 3], 'f32', 'b');
  await assert.rejects(matmul(gpu, { out }, { a: ab, b: bb }), /matmul: batch sizes differ/);
  await assert.rejects(matmul(gpu, { out }, { a: ab, b: b2 }), /matmul: out out\[4,3\]:f32 should have shape \[2,4,3\]/);
  const oddOut = await t([4, 3], 'bf16', 'out');
  await assert.rejects(matmul(gpu, { out: oddOut }, { a, b: b2 }), /matmul: out out\[4,3\]:bf16 is bf16 with an odd innermost/);
  const x = await t([7, 5], 'f32', 'x');
  const w = await t([3, 5], 'f32', 'w');
  const y = await t([7, 4], 'f32', 'y');
  await assert.rejects(linearForward(gpu, { y }, { x, w }), /linearForward: y y\[7,4\]:f32 should have shape \[7,3\]/);
  const dx = await t([7, 5], 'f32', 'dx');
  const dout = await t([7, 3], 'f32', 'dout');
  const dw16 = await t([3, 5], 'f16', 'dw');
  await assert.rejects(linearBackward(gpu, { dx, dw: dw16 }, { dout, x, w }), /linearBackward: dw dw\[3,5\]:f16 must be one of f32/);
  const wBad = await t([3, 6], 'f32', 'w');
  await assert.rejects(linearBackward(gpu, { dx, dw: w }, { dout, x, w: wBad }), (e: Error) => e instanceof ShapeError && /linearBackward: x x\[7,5\]/.test(e.message));
  for (const z of [a, b, out, b2, bad, ab, bb, oddOut, x, w, y, dx, dout, dw16, wBad]) z.dispose();
});

test('matmulFlops counts a multiply-add as two flops', () => {
  assert.equal(matmulFlops(4096, 4096, 4096), 2 * 4096 ** 3);
  assert.equal(matmulFlops(2, 3, 4, 5), 240);
});

test('matmul routes f16 products to tensor cores where the adapter has subgroup matrices', async () => {
  const gpu = await testGpu();
  const d = { batch: 1, M: 256, N: 256, K: 256, sA: 0, sB: 0 };
  const tc = gpu.features.subgroupMatrix.length > 0;
  // a CPU adapter with fixed-size subgroups takes every f32-output product (matmul_cpu.ts)
  const f32Path = cpuLanes(gpu) !== null ? 'cpu' : 'tiled';
  assert.equal(choosePath(gpu, d, { a: 'f16', b: 'f16', out: 'f32' }, {}), tc ? 'subgroup' : f32Path);
  assert.equal(choosePath(gpu, d, { a: 'f32', b: 'f32', out: 'f32' }, {}), f32Path);
  assert.equal(choosePath(gpu, d, { a: 'f16', b: 'f16', out: 'f16' }, { alpha: 2 }), 'tiled');
  assert.equal(choosePath(gpu, { ...d, K: 250 }, { a: 'f16', b: 'f16', out: 'f16' }, {}), 'tiled');
  if (gpu.adapterName.startsWith('llvmpipe')) assert.equal(f32Path, 'cpu', 'lavapipe has 8-lane subgroups');
  const a = await gpu.tensorFrom(new Rng(5).normals(64 * 32), [64, 32], 'f16', 'a');
  const b = await gpu.tensorFrom(new Rng(6).normals(32 * 16), [32, 16], 'f16', 'b');
  const out = await gpu.tensor([64, 16], 'f32', 'out');
  if (tc) {
    await matmul(gpu, { out }, { a, b }, { path: 'subgroup' });
    const want = ref.matmul(await gpu.read(a), await gpu.read(b), { M: 64, N: 16, K: 32 });
    assertClose('out', await gpu.read(out), want, 1e-3);
  } else {
    await assert.rejects(matmul(gpu, { out }, { a, b }, { path: 'subgroup' }), /chromium-experimental-subgroup-matrix/);
  }
  for (const t of [a, b, out]) t.dispose();
});

test('chooseConfig: a CPU adapter takes large tiles unless padding wastes more, a GPU enough workgroups', async () => {
  const gpu = await testGpu();
  const cpu = { ...gpu, cpu: true, limits: gpu.limits } as typeof gpu;
  const big = MATMUL_CONFIGS.find((c) => configFits(gpu, c))!;
  assert.equal(chooseConfig(cpu, { M: 1024, N: 344, batch: 1, transA: false, transB: true }), big);
  assert.equal(configName(chooseConfig(cpu, { M: 20, N: 36, batch: 1, transA: false, transB: false })), 'm32n32k8t4x4u8g1');
  const gpuLike = { ...gpu, cpu: false, limits: gpu.limits } as typeof gpu;
  assert.equal(configName(chooseConfig(gpuLike, { M: 1024, N: 128, batch: 1, transA: false, transB: false })), 'm32n32k8t4x4u8g1');
});
