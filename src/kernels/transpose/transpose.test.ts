import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as ref from '../../reference/transpose.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { swapAxes, transpose } from './transpose.ts';

test('reference transpose: a known 2x3 case, and twice is the identity', () => {
  assert.deepEqual([...ref.transpose([1, 2, 3, 4, 5, 6], 1, 2, 3)], [1, 4, 2, 5, 3, 6]);
  const x = new Rng(1).normals(2 * 5 * 7);
  assert.deepEqual([...ref.transpose(ref.transpose(x, 2, 5, 7), 2, 7, 5)], [...x]);
});

// exact: a transpose is a bit copy (f32 values, and u32 words above 2^24)
for (const shape of [[1, 1], [33, 65], [3, 31, 100], [2, 2, 40, 7], [1, 1, 1000]]) {
  test(`transpose [${shape}] f32 and u32`, async () => {
    const gpu = await testGpu();
    const R = shape[shape.length - 2]!;
    const C = shape[shape.length - 1]!;
    const batch = shape.slice(0, -2).reduce((a, b) => a * b, 1);
    const n = batch * R * C;
    const rng = new Rng(n);
    const outShape = [...shape.slice(0, -2), C, R];
    for (const dtype of ['f32', 'u32'] as const) {
      const v = dtype === 'f32' ? rng.normals(n) : Float64Array.from({ length: n }, () => Math.floor(rng.next() * 2 ** 32));
      const x = await gpu.tensorFrom(v, shape, dtype, 'x');
      const out = await gpu.tensorFrom(new Float64Array(n).fill(7), outShape, dtype, 'out');
      await transpose(gpu, { out }, { x });
      const want = ref.transpose(dtype === 'f32' ? new Float64Array(new Float32Array(v)) : v, batch, R, C);
      assert.deepEqual([...(await gpu.read(out))], [...want], `${dtype}`);
      x.dispose();
      out.dispose();
    }
  });
}

test('transpose rejects a wrong output shape, 16-bit dtypes and overlaps', async () => {
  const gpu = await testGpu();
  const x = await gpu.tensor([4, 6], 'f32', 'x');
  const bad = await gpu.tensor([4, 6], 'f32', 'bad');
  const h = await gpu.tensor([4, 6], 'f16', 'h');
  await assert.rejects(transpose(gpu, { out: bad }, { x }), /transpose: out bad\[4,6\]:f32 must be \[6,4\]:f32 for x x\[4,6\]:f32/);
  await assert.rejects(transpose(gpu, { out: bad }, { x: h }), /transpose: x h\[4,6\]:f16 must be one of f32\/u32\/i32/);
  await assert.rejects(transpose(gpu, { out: x.reshape([6, 4]) }, { x }), /overlap/);
  for (const t of [x, bad, h]) t.dispose();
});

test('swapAxes [R, C, E] -> [C, R, E], odd sizes', async () => {
  const gpu = await testGpu();
  for (const [R, C, E] of [[1, 1, 1], [7, 5, 3], [33, 8, 64]] as const) {
    const v = new Rng(R * C * E).normals(R * C * E);
    const x = await gpu.tensorFrom(v, [R, C, E], 'f32', 'x');
    const out = await gpu.tensor([C, R, E], 'f32', 'out');
    await swapAxes(gpu, { out }, { x });
    assert.deepEqual([...(await gpu.read(out))], [...ref.swapAxes(new Float64Array(new Float32Array(v)), R, C, E)]);
    if (R !== C) await assert.rejects(swapAxes(gpu, { out: x }, { x }), /swapAxes: out x\[\d+,\d+,\d+\]:f32 must be/);
    x.dispose();
    out.dispose();
  }
});
