import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ShapeError } from '../../gpu/errors.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { appendRows } from './append_rows.ts';

test('appendRows writes every batch row\'s new rows at `at`, leaving the rest', async () => {
  const gpu = await testGpu();
  const rng = new Rng(5);
  const [B, S, T, H, W] = [3, 11, 4, 3, 5]; // rows of H x W words
  const src = Float32Array.from({ length: B * T * H * W }, () => rng.normal());
  const dst0 = Float32Array.from({ length: B * S * H * W }, () => rng.normal());
  const tsrc = await gpu.tensorFrom(src, [B, T, H, W]);
  const tdst = await gpu.tensorFrom(dst0, [B, S, H, W]);
  for (const at of [0, 6, S - T]) {
    await appendRows(gpu, { dst: tdst }, { src: tsrc }, { at });
    const want = Float32Array.from(dst0);
    for (let b = 0; b < B; b++) want.set(src.subarray(b * T * H * W, (b + 1) * T * H * W), (b * S + at) * H * W);
    assert.deepEqual(await gpu.read(tdst), want);
    gpu.write(tdst, dst0);
  }
  await assert.rejects(appendRows(gpu, { dst: tdst }, { src: tsrc }, { at: S - T + 1 }), (e: Error) => e instanceof ShapeError && /fit/.test(e.message));
  const other = await gpu.tensor([B, S, H, W + 1], 'f32');
  await assert.rejects(appendRows(gpu, { dst: other }, { src: tsrc }, { at: 0 }), /trailing/);
  const half = await gpu.tensor([B, S, H, W], 'bf16');
  await assert.rejects(appendRows(gpu, { dst: half }, { src: tsrc }, { at: 0 }), /4-byte/);
});
