import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ShapeError } from '../../gpu/errors.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { SKIP_ROW, scatterRows } from './scatter_rows.ts';

test('scatterRows writes each row at its index from base, skipping SKIP_ROW and rows past dst, leaving the rest', async () => {
  const gpu = await testGpu();
  const rng = new Rng(3);
  const [N, W, M] = [5, 7, 13];
  const src = Float32Array.from({ length: N * W }, () => rng.normal());
  const dst0 = Float32Array.from({ length: M * W }, () => rng.normal());
  const idx = Uint32Array.from([99, 99, 4, 12, SKIP_ROW, 0, 40]); // base 2: rows 0..4 go to 4, 12, skip, 0, past the end
  const tsrc = await gpu.tensorFrom(src, [N, W]);
  const tdst = await gpu.tensorFrom(dst0, [M, W]);
  const tidx = await gpu.tensorFrom(idx, [idx.length], 'u32');
  await scatterRows(gpu, { dst: tdst }, { src: tsrc, idx: tidx }, { base: 2 });
  const want = Float32Array.from(dst0);
  [4, 12, -1, 0, -1].forEach((d, r) => d >= 0 && want.set(src.subarray(r * W, (r + 1) * W), d * W));
  assert.deepEqual(await gpu.read(tdst), want);
  await assert.rejects(scatterRows(gpu, { dst: tdst }, { src: tsrc, idx: tidx }, { base: 3 }), (e: Error) => e instanceof ShapeError && /entries/.test(e.message));
  const narrow = await gpu.tensor([M, W - 1], 'f32');
  await assert.rejects(scatterRows(gpu, { dst: narrow }, { src: tsrc, idx: tidx }), /one width/);
});
