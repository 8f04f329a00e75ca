import assert from 'node:assert/strict';
import { test } from 'node:test';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { COPY_PER_THREAD, copy, fill } from './copy.ts';

for (const per of COPY_PER_THREAD) {
  test(`copy moves every word (vec4 x${per}, and the word path)`, async () => {
    const gpu = await testGpu();
    for (const [n, dtype] of [[1, 'f32'], [3, 'f32'], [4096 * 9 + 4, 'f32'], [10, 'bf16'], [4 * 1000 + 8, 'f16']] as const) {
      const v = new Rng(n).normals(n);
      const src = await gpu.tensorFrom(v, [n], dtype, 'src');
      const dst = await gpu.tensorFrom(new Float64Array(n).fill(-7), [n], dtype, 'dst');
      await copy(gpu, dst, src, per);
      assert.deepEqual(await gpu.read(dst), await gpu.read(src), `n=${n} ${dtype}`);
      src.dispose();
      dst.dispose();
    }
  });
}

test('fill writes every element; copy rejects mismatched tensors', async () => {
  const gpu = await testGpu();
  const t = await gpu.tensor([1000, 3], 'f32', 't');
  await fill(gpu, t, 2.5);
  assert.ok((await gpu.read(t)).every((x) => x === 2.5));
  const u = await gpu.tensor([3000], 'bf16', 'u');
  await assert.rejects(copy(gpu, u, t), /copy: u\[3000\]:bf16 and t\[1000,3\]:f32/);
  await assert.rejects(fill(gpu, u, 1), /fill: dst u\[3000\]:bf16 must be one of f32/);
  t.dispose();
  u.dispose();
});
