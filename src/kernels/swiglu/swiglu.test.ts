import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DTYPES, roundTo } from '../../gpu/dtype.ts';
import { ShapeError } from '../../gpu/errors.ts';
import * as ref from '../../reference/swiglu.ts';
import { TOL, assertClose } from '../../testing/allclose.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { swigluBackward, swigluForward } from './swiglu.ts';

// awkward shapes: a single row, odd H (f32 only), rows not a multiple of the workgroup, long
// rows, large magnitudes (sigmoid saturates both ways)
const CASES = [
  { N: 1, H: 2, scale: 1 },
  { N: 5, H: 33, scale: 1 },
  { N: 70, H: 130, scale: 2 },
  { N: 3, H: 2050, scale: 1 },
  { N: 9, H: 64, scale: 60 },
];

for (const dtype of DTYPES) {
  for (const { N, H, scale } of CASES) {
    if (dtype !== 'f32' && H % 2) continue;
    test(`swiglu ${dtype} N=${N} H=${H} scale=${scale}`, async () => {
      const gpu = await testGpu();
      const rng = new Rng(N * 1000 + H);
      const gu = roundTo(rng.normals(N * 2 * H, scale), dtype);
      const g = roundTo(rng.normals(N * H), dtype);
      const f = ref.swigluForward(gu, N, H);
      const b = ref.swigluBackward(g, gu, N, H);
      const tol = TOL[dtype];
      // fused layout: gu (N,2H) -> out, dgu (N,2H)
      const tgu = await gpu.tensorFrom(gu, [N, 2 * H], dtype, 'gu');
      const tdout = await gpu.tensorFrom(g, [N, H], dtype, 'dout');
      const out = await gpu.tensor([N, H], dtype, 'out');
      const dgu = await gpu.tensor([N, 2 * H], dtype, 'dgu');
      await swigluForward(gpu, { out }, { gu: tgu });
      await swigluBackward(gpu, { dgu }, { dout: tdout, gu: tgu });
      assertClose('out', await gpu.read(out), f, tol);
      assertClose('dgu', await gpu.read(dgu), b, tol);
      // split layout: g, u (N,H) -> out, dg, du (N,H)
      const s = ref.split(gu, N, H);
      const ds = ref.split(b, N, H);
      const tg = await gpu.tensorFrom(s.g, [N, H], dtype, 'g');
      const tu = await gpu.tensorFrom(s.u, [N, H], dtype, 'u');
      const dg = await gpu.tensor([N, H], dtype, 'dg');
      const du = await gpu.tensor([N, H], dtype, 'du');
      await swigluForward(gpu, { out }, { g: tg, u: tu });
      await swigluBackward(gpu, { dg, du }, { dout: tdout, g: tg, u: tu });
      assertClose('out (split)', await gpu.read(out), f, tol);
      assertClose('dg (split)', await gpu.read(dg), ds.g, tol);
      assertClose('du (split)', await gpu.read(du), ds.u, tol);
      // mixed: split inputs, fused gradient
      await swigluBackward(gpu, { dgu }, { dout: tdout, g: tg, u: tu });
      assertClose('dgu (split in)', await gpu.read(dgu), b, tol);
      for (const t of [tgu, tdout, out, dgu, tg, tu, dg, du]) t.dispose();
    });
  }
}

test('swiglu: extreme gates stay finite', async () => {
  const gpu = await testGpu();
  const gu = [-1e30, -200, 0, 200, 1e30, 88.7, 1, 2, 3, 4, 5, 6]; // N=1, H=6
  const tgu = await gpu.tensorFrom(gu, [1, 12], 'f32', 'gu');
  const out = await gpu.tensor([1, 6], 'f32', 'out');
  const dgu = await gpu.tensor([1, 12], 'f32', 'dgu');
  const dout = await gpu.tensorFrom([1, 1, 1, 1, 1, 1], [1, 6], 'f32', 'dout');
  await swigluForward(gpu, { out }, { gu: tgu });
  await swigluBackward(gpu, { dgu }, { dout, gu: tgu });
  const o = await gpu.read(out);
  const d = await gpu.read(dgu);
  assert.ok(o.every(Number.isFinite) && d.every(Number.isFinite), `out ${o} dgu ${d}`);
  assertClose('out', o, ref.swigluForward(gu, 1, 6), 1e-6);
  assertClose('dgu', d, ref.swigluBackward([1, 1, 1, 1, 1, 1], gu, 1, 6), 1e-6);
  for (const t of [tgu, out, dgu, dout]) t.dispose();
});

test('swiglu: shape and dtype errors', async () => {
  const gpu = await testGpu();
  const gu = await gpu.tensor([4, 6], 'bf16', 'gu');
  const odd = await gpu.tensor([4, 5], 'f32', 'odd');
  const out = await gpu.tensor([4, 3], 'bf16', 'out');
  const out4 = await gpu.tensor([4, 4], 'f32', 'out4');
  const g = await gpu.tensor([4, 3], 'f32', 'g');
  const u = await gpu.tensor([3, 3], 'f32', 'u');
  const is = (re: RegExp) => (e: Error) => e instanceof ShapeError && re.test(e.message);
  await assert.rejects(swigluForward(gpu, { out: out4 }, { gu: odd }), is(/swigluForward: gu odd\[4,5\]:f32 should be \[N,2H\]/));
  await assert.rejects(swigluForward(gpu, { out: out4 }, { gu }), is(/swigluForward: out out4\[4,4\]:f32 should have shape \[4,3\]/));
  await assert.rejects(swigluForward(gpu, { out }, { gu }), is(/swigluForward: H = 3 is odd and out\[4,3\]:bf16, gu\[4,6\]:bf16/));
  await assert.rejects(swigluForward(gpu, { out: g }, { g, u }), is(/swigluForward: u u\[3,3\]:f32 should have shape \[4,3\]/));
  await assert.rejects(swigluBackward(gpu, { dgu: odd }, { dout: g, gu: g.reshape([2, 6]) }), is(/swigluBackward: dout g\[4,3\]:f32 should have shape \[2,3\]/));
  await assert.rejects(swigluBackward(gpu, { dg: g, du: g }, { dout: g, g: out4, u: out4 }), is(/swigluBackward: dout g\[4,3\]:f32 should have shape \[4,4\]/));
  const gu32 = await gpu.tensor([4, 6], 'u32', 'gu32');
  await assert.rejects(swigluForward(gpu, { out: g }, { gu: gu32 }), is(/swigluForward: gu gu32\[4,6\]:u32 must be one of f32\/f16\/bf16/));
  await assert.rejects(swigluBackward(gpu, { dgu: gu32 }, { dout: g, gu }), is(/swigluBackward: dgu gu32\[4,6\]:u32 must be one of/));
  for (const t of [gu, odd, out, out4, g, u, gu32]) t.dispose();
});
