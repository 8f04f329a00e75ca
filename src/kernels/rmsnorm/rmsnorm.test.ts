import { test } from 'node:test';
import { DTYPES, roundTo } from '../../gpu/dtype.ts';
import * as ref from '../../reference/rmsnorm.ts';
import { TOL, assertClose } from '../../testing/allclose.ts';
import { testGpu, withMapping } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { rmsnormBackward, rmsnormForward } from './rmsnorm.ts';

// awkward shapes: a single row, rows shorter than the workgroup, odd C (f32 only), long rows,
// more rows than one dw chunk, large magnitudes
const CASES = [
  { N: 1, C: 6, scale: 1 },
  { N: 5, C: 33, scale: 1 },
  { N: 70, C: 130, scale: 1 },
  { N: 3, C: 2050, scale: 1 },
  { N: 129, C: 64, scale: 300 },
];

// 'gpu' forces the workgroup-per-row mapping on a CPU adapter too (its default there is a row
// per thread), on the cases that exercise it most
for (const mapping of ['adapter', 'gpu'] as const) {
  for (const dtype of DTYPES) {
    for (const { N, C, scale } of CASES) {
      if (dtype !== 'f32' && C % 2) continue;
      if (mapping === 'gpu' && (dtype === 'f16' || N === 1)) continue;
      test(`rmsnorm ${dtype} N=${N} C=${C} scale=${scale} (${mapping} mapping)`, async () => {
        const gpu = await testGpu();
        await withMapping(gpu, mapping, async () => {
          const rng = new Rng(N * 1000 + C);
          const eps = 1e-5;
          const x = roundTo(rng.normals(N * C, scale), dtype);
          const w = roundTo(rng.normals(C, 0.3, 1), dtype);
          const g = roundTo(rng.normals(N * C), dtype);
          const dw0 = rng.normals(C);
          const tx = await gpu.tensorFrom(x, [N, C], dtype, 'x');
          const tw = await gpu.tensorFrom(w, [C], dtype, 'w');
          const tg = await gpu.tensorFrom(g, [N, C], dtype, 'dout');
          const out = await gpu.tensor([N, C], dtype, 'out');
          const rstd = await gpu.tensor([N], 'f32', 'rstd');
          const dx = await gpu.tensor([N, C], dtype, 'dx');
          const dw = await gpu.tensorFrom(dw0, [C], 'f32', 'dw');
          await rmsnormForward(gpu, { out, rstd }, { x: tx, w: tw }, eps);
          await rmsnormBackward(gpu, { dx, dw }, { dout: tg, x: tx, w: tw, rstd });
          const f = ref.rmsnormForward(x, w, N, C, eps);
          const b = ref.rmsnormBackward(g, x, w, f.rstd, N, C);
          const tol = TOL[dtype];
          assertClose('out', await gpu.read(out), f.out, tol);
          assertClose('rstd', await gpu.read(rstd), f.rstd, TOL.f32);
          assertClose('dx', await gpu.read(dx), b.dx, tol);
          assertClose('dw', await gpu.read(dw), b.dw.map((v, i) => v + dw0[i]!), tol);
          for (const t of [tx, tw, tg, out, rstd, dx, dw]) t.dispose();
        });
      });
    }
  }
}
