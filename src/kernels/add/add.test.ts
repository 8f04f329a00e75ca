import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DTYPES, roundTo } from '../../gpu/dtype.ts';
import * as ref from '../../reference/add.ts';
import { TOL, assertClose } from '../../testing/allclose.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { addBackward, addForward, scale } from './add.ts';

for (const dtype of DTYPES) {
  for (const shape of [[1, 2], [3, 7], [257, 130]]) {
    const n = shape[0]! * shape[1]!;
    if (dtype !== 'f32' && shape[1]! % 2) continue;
    test(`add ${dtype} [${shape}] forward, backward, in place`, async () => {
      const gpu = await testGpu();
      const rng = new Rng(n);
      const a = roundTo(rng.normals(n, 3), dtype);
      const b = roundTo(rng.normals(n, 100), dtype);
      const ta = await gpu.tensorFrom(a, shape, dtype, 'a');
      const tb = await gpu.tensorFrom(b, shape, dtype, 'b');
      const out = await gpu.tensor(shape, dtype, 'out');
      await addForward(gpu, { out }, { a: ta, b: tb }, 0.5, -2);
      assertClose('out', await gpu.read(out), ref.addForward(a, b, 0.5, -2), TOL[dtype]);
      const da = await gpu.tensor(shape, dtype, 'da');
      const db = await gpu.tensor(shape, dtype, 'db');
      await addBackward(gpu, { da, db }, { dout: tb }, 0.5, -2);
      const r = ref.addBackward(b, 0.5, -2);
      assertClose('da', await gpu.read(da), r.da, TOL[dtype]);
      assertClose('db', await gpu.read(db), r.db, TOL[dtype]);
      await addForward(gpu, { out: ta }, { a: ta, b: tb }); // residual in place: a += b
      assertClose('a += b', await gpu.read(ta), ref.addForward(a, b), TOL[dtype]);
      for (const t of [ta, tb, out, da, db]) t.dispose();
    });
  }
}

test('add rejects mismatched sizes and partial overlaps', async () => {
  const gpu = await testGpu();
  const a = await gpu.tensor([4, 6], 'f32', 'a');
  const b = await gpu.tensor([5, 6], 'f32', 'b');
  await assert.rejects(addForward(gpu, { out: a }, { a, b }), /addForward: a\[4,6\]:f32, b\[5,6\]:f32 and a\[4,6\]:f32 must have the same number/);
  a.dispose();
  b.dispose();
});

test('scale: a cast between every pair of dtypes, and in place', async () => {
  const gpu = await testGpu();
  const n = 37 * 2;
  const v = new Rng(5).normals(n, 4);
  for (const from of DTYPES) {
    for (const to of DTYPES) {
      const x = await gpu.tensorFrom(roundTo(v, from), [37, 2], from, 'x');
      const out = await gpu.tensor([37, 2], to, 'out');
      await scale(gpu, { out }, { x }, 1);
      assertClose(`${from}->${to}`, await gpu.read(out), roundTo(roundTo(v, from), to), TOL[to]);
      await scale(gpu, { out }, { x: out }, -0.5);
      assertClose(`${to} *= -0.5`, await gpu.read(out), roundTo(roundTo(v, from), to).map((e) => -0.5 * e), TOL[to]);
      x.dispose();
      out.dispose();
    }
  }
});
