import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DTYPES, roundTo, type DType } from '../../gpu/dtype.ts';
import { EngramError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import * as ref from '../../reference/gradnorm.ts';
import { TOL, assertClose } from '../../testing/allclose.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { clipGrads, gradNorm } from './gradnorm.ts';

// odd sizes: a single element, tails that end mid-word, one tensor past a partial chunk (4096),
// one large enough to hit the per-tensor workgroup cap (1024 * 4096 elements)
const SHAPES = [[1], [3], [17, 3], [1001], [4097], [2, 4099]];
const BIG = [4500000];

for (const dtype of DTYPES) {
  test(`gradNorm ${dtype}: several odd-sized tensors, clip coefficient, clipGrads`, async () => {
    const gpu = await testGpu();
    const rng = new Rng(21);
    const shapes = dtype === 'f32' ? [...SHAPES, BIG] : SHAPES;
    const vals = shapes.map((s) => roundTo(rng.normals(s.reduce((a, b) => a * b, 1), 0.01), dtype));
    const grads: Tensor[] = [];
    for (const [j, s] of shapes.entries()) grads.push(await gpu.tensorFrom(vals[j]!, s, dtype, `g${j}`));
    const norm = await gpu.tensor([1], 'f32', 'norm');
    const scale = await gpu.tensor([1], 'f32', 'scale');
    const r = ref.gradNorm(vals);
    for (const maxNorm of [r.norm / 3, r.norm * 2]) {
      await gradNorm(gpu, { norm, scale }, grads, { maxNorm });
      assertClose('norm', await gpu.read(norm), [r.norm], TOL.f32);
      assertClose('scale', await gpu.read(scale), [ref.gradNorm(vals, maxNorm).scale], TOL.f32);
    }
    // clip with the GPU coefficient (maxNorm = norm / 3), then by a number
    await gradNorm(gpu, { norm, scale }, grads, { maxNorm: r.norm / 3 });
    await clipGrads(gpu, grads, scale);
    await clipGrads(gpu, grads, 0.5);
    const k = ref.gradNorm(vals, r.norm / 3).scale * 0.5;
    for (const [j, g] of grads.entries()) {
      assertClose(`clipped g${j}`, await gpu.read(g), roundTo(vals[j]!.map((x) => x * k), dtype), TOL[dtype]);
    }
    // the norm of the clipped grads is what clipping promised
    await gradNorm(gpu, { norm }, grads);
    assertClose('clipped norm', await gpu.read(norm), [r.norm / 6], TOL[dtype]);
    for (const t of [...grads, norm, scale]) t.dispose();
  });
}

test('gradNorm: bitwise deterministic, no grads gives 0 and a scale of 1', async () => {
  const gpu = await testGpu();
  const rng = new Rng(22);
  const grads = [await gpu.tensorFrom(rng.normals(300000), [300000], 'f32', 'a'), await gpu.tensorFrom(rng.normals(777), [777], 'bf16', 'b')];
  const norm = await gpu.tensor([1], 'f32', 'norm');
  const scale = await gpu.tensor([1], 'f32', 'scale');
  const runs: number[] = [];
  for (let i = 0; i < 3; i++) {
    await gradNorm(gpu, { norm }, grads);
    runs.push((await gpu.read(norm))[0]!);
  }
  assert.ok(runs.every((x) => Object.is(x, runs[0])), `runs differ: ${runs.join(', ')}`);
  await gradNorm(gpu, { norm, scale }, [], { maxNorm: 1 });
  assert.deepEqual([...(await gpu.read(norm)), ...(await gpu.read(scale))], [0, 1]);
  for (const t of [...grads, norm, scale]) t.dispose();
});

test('gradNorm/clipGrads: wrong shapes, dtypes and options throw, naming the op and the tensor', async () => {
  const gpu = await testGpu();
  const mk = (shape: number[], dtype: DType, label: string) => gpu.tensor(shape, dtype, label);
  const g = await mk([5], 'f32', 'g');
  const norm = await mk([1], 'f32', 'norm');
  const two = await mk([2], 'f32', 'two');
  const half = await mk([1], 'f16', 'half');
  const shapeErr = (re: RegExp) => (e: unknown) => e instanceof ShapeError && re.test(e.message);
  await assert.rejects(gradNorm(gpu, { norm: two }, [g]), shapeErr(/gradNorm: norm two\[2\]:f32 should have shape \[1\]/));
  await assert.rejects(gradNorm(gpu, { norm, scale: half }, [g]), shapeErr(/gradNorm: scale half\[1\]:f16 must be one of f32/));
  await assert.rejects(gradNorm(gpu, { norm }, [g], { maxNorm: 0 }), (e) => e instanceof EngramError && /maxNorm/.test(e.message));
  await assert.rejects(gradNorm(gpu, { norm }, [g, norm]), shapeErr(/gradNorm: norm\[1\]:f32 and norm\[1\]:f32 overlap/));
  await assert.rejects(clipGrads(gpu, [g], two), shapeErr(/clipGrads: scale two\[2\]:f32 should have shape \[1\]/));
  const before = gpu.dispatches;
  await assert.rejects(clipGrads(gpu, [g, norm], norm), shapeErr(/clipGrads: norm\[1\]:f32 and norm\[1\]:f32 overlap/));
  assert.equal(gpu.dispatches, before, 'clipGrads scaled a tensor before failing');
  const gu = await gpu.tensor([5], 'u32', 'gu');
  await assert.rejects(gradNorm(gpu, { norm }, [g, gu]), shapeErr(/gradNorm: grads\[1\] gu\[5\]:u32 must be one of f32\/f16\/bf16/));
  gu.dispose();
  await assert.rejects(clipGrads(gpu, [g], NaN), (e) => e instanceof EngramError && /scale must be finite/.test(e.message));
  for (const t of [g, norm, two, half]) t.dispose();
});
