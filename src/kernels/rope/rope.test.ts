import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DTYPES, roundTo } from '../../gpu/dtype.ts';
import { ShapeError } from '../../gpu/errors.ts';
import * as ref from '../../reference/rope.ts';
import { TOL, assertClose } from '../../testing/allclose.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { createRopeTable, ropeBackward, ropeForward } from './rope.ts';

// awkward shapes: a single row, odd H (f32 only), HS = 2, rows not a multiple of the workgroup,
// long heads, incremental decoding offsets, far positions, explicit positions, large magnitudes
const CASES = [
  { B: 1, T: 1, NH: 1, HS: 4, scale: 1 },
  { B: 2, T: 5, NH: 3, HS: 6, scale: 1 },
  { B: 1, T: 3, NH: 1, HS: 2, scale: 1 },
  { B: 1, T: 37, NH: 4, HS: 64, scale: 1, pos0: 100 },
  { B: 2, T: 3, NH: 2, HS: 256, scale: 1, base: 500000 },
  { B: 1, T: 9, NH: 2, HS: 12, scale: 1000, pos0: 4000 },
  { B: 2, T: 4, NH: 3, HS: 8, scale: 1, positions: [3, 0, 4090, 17] },
];

for (const dtype of DTYPES) {
  for (const c of CASES) {
    if (dtype !== 'f32' && c.HS % 4) continue;
    const { B, T, NH, HS, scale } = c;
    test(`rope ${dtype} B=${B} T=${T} NH=${NH} HS=${HS} ${JSON.stringify({ pos0: c.pos0, positions: c.positions, base: c.base })}`, async () => {
      const gpu = await testGpu();
      const rng = new Rng(B * 1000 + T * 10 + HS);
      const n = B * T * NH * HS;
      const x = roundTo(rng.normals(n, scale), dtype);
      const g = roundTo(rng.normals(n), dtype);
      const table = await createRopeTable(gpu, 4096 + 16, HS, c.base);
      const positions = c.positions ? await gpu.tensorFrom(c.positions, [T], 'u32', 'positions') : undefined;
      const opts = { ...(c.pos0 !== undefined && { pos0: c.pos0 }), ...(positions && { positions }) };
      const tx = await gpu.tensorFrom(x, [B, T, NH, HS], dtype, 'x');
      const tg = await gpu.tensorFrom(g, [B, T, NH, HS], dtype, 'dout');
      const out = await gpu.tensor([B, T, NH, HS], dtype, 'out');
      const dx = await gpu.tensor([B, T, NH, HS], dtype, 'dx');
      await ropeForward(gpu, { out }, { x: tx, table }, opts);
      await ropeBackward(gpu, { dx }, { dout: tg, table }, opts);
      const d = { B, T, NH, HS, ...(c.base !== undefined && { base: c.base }), ...(c.pos0 !== undefined && { pos0: c.pos0 }), ...(c.positions && { positions: c.positions }) };
      assertClose('out', await gpu.read(out), ref.ropeForward(x, d), TOL[dtype]);
      assertClose('dx', await gpu.read(dx), ref.ropeBackward(g, d), TOL[dtype]);
      for (const t of [tx, tg, out, dx, table, positions]) t?.dispose();
    });
  }
}

test('rope: mixed storage (f16 in, f32 out) and a far position are exact to f32', async () => {
  const gpu = await testGpu();
  const [B, T, NH, HS] = [1, 2, 1, 8];
  const x = roundTo(new Rng(3).normals(B * T * NH * HS), 'f16');
  const table = await createRopeTable(gpu, 70000, HS);
  const tx = await gpu.tensorFrom(x, [B, T, NH, HS], 'f16', 'x');
  const out = await gpu.tensor([B, T, NH, HS], 'f32', 'out');
  await ropeForward(gpu, { out }, { x: tx, table }, { pos0: 65000 });
  assertClose('out', await gpu.read(out), ref.ropeForward(x, { B, T, NH, HS, pos0: 65000 }), 1e-6);
  for (const t of [tx, out, table]) t.dispose();
});

test('rope: shape and dtype errors', async () => {
  const gpu = await testGpu();
  const table = await createRopeTable(gpu, 8, 6);
  const x = await gpu.tensor([1, 4, 2, 6], 'f32', 'x');
  const xh = await gpu.tensor([1, 4, 2, 6], 'bf16', 'xh');
  const out = await gpu.tensor([1, 4, 2, 6], 'f32', 'out');
  const odd = await gpu.tensor([1, 4, 2, 5], 'f32', 'odd');
  const bad = await gpu.tensor([1, 4, 2, 8], 'f32', 'bad');
  const pos = await gpu.tensor([4], 'f32', 'pos');
  const xu = await gpu.tensor([1, 4, 2, 6], 'u32', 'xu');
  const is = (re: RegExp) => (e: Error) => e instanceof ShapeError && re.test(e.message);
  await assert.rejects(ropeForward(gpu, { out: bad }, { x, table }), is(/ropeForward: out bad\[1,4,2,8\]:f32 should have shape \[1,4,2,6\]/));
  await assert.rejects(ropeForward(gpu, { out: odd }, { x: odd, table }), is(/ropeForward: head size HS = 5/));
  await assert.rejects(ropeForward(gpu, { out: xh }, { x: xh, table }), is(/ropeForward: xh\[1,4,2,6\]:bf16.*HS % 4/));
  await assert.rejects(ropeForward(gpu, { out }, { x, table }, { pos0: 5 }), is(/ropeForward: positions 5..8 exceed the table rope_table\[8,3,2\]/));
  await assert.rejects(ropeForward(gpu, { out: x }, { x, table }), is(/ropeForward: .*overlap/));
  await assert.rejects(ropeBackward(gpu, { dx: bad }, { dout: bad, table }), is(/ropeBackward: table rope_table\[8,3,2\]:f32 should have shape \[\*,4,2\]/));
  await assert.rejects(ropeForward(gpu, { out: x.reshape([4, 2, 6]) }, { x: out.reshape([4, 2, 6]), table }), is(/ropeForward: x out\[4,2,6\]:f32 should have shape \[B,T,NH,HS\]/));
  await assert.rejects(ropeForward(gpu, { out }, { x, table }, { positions: pos }), is(/ropeForward: positions pos\[4\]:f32 must be one of u32/));
  await assert.rejects(ropeBackward(gpu, { dx: out }, { dout: xu, table }), is(/ropeBackward: dout xu\[1,4,2,6\]:u32 must be one of f32\/f16\/bf16/));
  for (const t of [table, x, xh, out, odd, bad, pos, xu]) t.dispose();
});
