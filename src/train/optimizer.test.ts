// the memory-model optimizer: two groups (values at 10x lr), clipping per group, masters for
// the bf16 table, and the sparse value update, against the float64 AdamW reference.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { roundTo } from '../gpu/dtype.ts';
import { createParam } from '../model/param.ts';
import { ValueTable } from '../model/value_table.ts';
import * as ref from '../reference/adamw.ts';
import { TOL, assertClose } from '../testing/allclose.ts';
import { testGpu } from '../testing/gpu.ts';
import { Rng } from '../testing/rng.ts';
import { AdamW } from './optimizer.ts';

const norm = (xs: ArrayLike<number>[]) => Math.sqrt(xs.reduce((s, x) => s + Array.from(x).reduce((a, b) => a + b * b, 0), 0));

for (const sparse of [false, true]) {
  test(`AdamW for memory models: value group at 10x lr, clipping per group${sparse ? ', sparse value rows' : ''}`, async () => {
    const gpu = await testGpu();
    const rng = new Rng(sparse ? 2 : 1);
    const [rows, dim] = [9, 4];
    // a bf16 table in chunks of 4 rows (3 chunks), and one f32 model parameter
    const table = await ValueTable.create(gpu, { rows, dim, dtype: 'bf16', maxBindingBytes: 4 * dim * 4, seed: 3, trackReads: sparse });
    const w = await createParam(gpu, 'w', [5], 'f32');
    const w0 = rng.normals(5);
    gpu.write(w.value, w0);
    const vals0 = new Float64Array(rows * dim);
    let at = 0;
    for (const c of table.params) {
      const v = await gpu.read(c.value);
      vals0.set(v, at);
      at += v.length;
    }
    const gW = rng.normals(5, 3); // norm > 1: clipped
    const gV = rng.normals(rows * dim, 0.01); // norm < 1: not clipped
    gpu.write(w.grad, gW);
    table.params.forEach((c, i) => gpu.write(c.grad, gV.subarray(i * 4 * dim, i * 4 * dim + c.grad.size)));
    const read = [1, 6, 6, 8];
    if (sparse) await table.markReads(gpu, await gpu.tensorFrom(read, [4], 'u32', 'slots'));
    const opt = await AdamW.create(gpu, [w, ...table.params], { lr: 1e-2, sparseValues: sparse });
    await opt.update(0.5);
    const h = { weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, step: 1 };
    const nW = norm([gW]);
    const nV = norm([gV]);
    const norms = await opt.gradNorms();
    assert.ok(Math.abs(norms.model - nW) < 1e-4 * nW && Math.abs(norms.values - nV) < 1e-4 * nV);
    const pW = Float64Array.from(w0);
    ref.adamwStep(pW, gW, new Float64Array(5), new Float64Array(5), { ...h, lr: 1e-2 * 0.5, gradScale: Math.min(1, 1 / (nW + 1e-6)) });
    assertClose('w', await gpu.read(w.value), pW, TOL.f32);
    const pV = Float64Array.from(vals0);
    for (let r = 0; r < rows; r++) {
      if (sparse && !read.includes(r)) continue;
      const sl = (a: Float64Array) => a.subarray(r * dim, (r + 1) * dim);
      ref.adamwStep(sl(pV), gV.subarray(r * dim, (r + 1) * dim), new Float64Array(dim), new Float64Array(dim), { ...h, lr: 1e-1 * 0.5, gradScale: 1 });
    }
    const got = new Float64Array(rows * dim);
    at = 0;
    for (const c of table.params) {
      const v = await gpu.read(c.value);
      got.set(v, at);
      at += v.length;
    }
    assertClose('values', got, roundTo(pV, 'bf16'), TOL.bf16);
    if (sparse) {
      for (let i = 0; i < rows * dim; i++) if (!read.includes(Math.floor(i / dim))) assert.equal(got[i], vals0[i], `unread row ${Math.floor(i / dim)} kept`);
      for (const c of table.params) assert.ok((await gpu.read(c.rowMask!.mask)).every((m) => m === 0), 'read masks cleared');
    }
    opt.dispose();
    w.value.dispose();
    w.grad.dispose();
    table.dispose();
  });
}

test('AdamW sparseValues needs a table that tracks reads', async () => {
  const gpu = await testGpu();
  const table = await ValueTable.create(gpu, { rows: 4, dim: 2, dtype: 'f32' });
  await assert.rejects(AdamW.create(gpu, table.params, { lr: 1, sparseValues: true }), /'values.0' has no read mask \(create the ValueTable with trackReads: true\)/);
  table.dispose();
});
