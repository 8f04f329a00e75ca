import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Arena } from '../../gpu/buffers.ts';
import { roundTo, type DType } from '../../gpu/dtype.ts';
import { EngramError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import * as ref from '../../reference/adamw.ts';
import { gradNorm as refGradNorm } from '../../reference/gradnorm.ts';
import { TOL, assertClose } from '../../testing/allclose.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { gradNorm } from '../gradnorm/gradnorm.ts';
import { adamwStep, type AdamwParam } from './adamw.ts';

interface Spec {
  shape: number[];
  dtype: DType;
  master?: boolean;
}

// two groups, each with all three parameter dtypes, odd sizes (f16/bf16 tails end mid-word),
// with and without an f32 master copy
const GROUPS: { lr: number; weightDecay: number; specs: Spec[] }[] = [
  {
    lr: 1e-2,
    weightDecay: 0.1,
    specs: [
      { shape: [7], dtype: 'f32' },
      { shape: [3, 5], dtype: 'f16', master: true },
      { shape: [33], dtype: 'bf16' },
      { shape: [600], dtype: 'bf16', master: true },
    ],
  },
  {
    lr: 3e-3,
    weightDecay: 0,
    specs: [
      { shape: [1], dtype: 'f32' },
      { shape: [2, 300], dtype: 'f32' },
      { shape: [513], dtype: 'f16' },
      { shape: [9], dtype: 'bf16', master: true },
    ],
  },
];

// per step: gradScale as a number, or (gpu: true) as a [1] tensor on the GPU
const SCALES = [
  { value: 1, gpu: false },
  { value: 0.5, gpu: false },
  { value: 0.8, gpu: true },
  { value: 1, gpu: true },
  { value: 0.25, gpu: true },
];

interface State {
  spec: Spec;
  t: AdamwParam;
  p0: Float64Array;
  p: Float64Array; // reference parameter (or master)
  m: Float64Array;
  v: Float64Array;
}

test('adamw: 5 steps, two groups (different lr/wd), f32/f16/bf16 parameters, masters, number and GPU gradScale', async () => {
  const gpu = await testGpu();
  const rng = new Rng(11);
  const hyper = { beta1: 0.9, beta2: 0.95, eps: 1e-8 };
  const states: State[][] = [];
  for (const grp of GROUPS) {
    const row: State[] = [];
    for (const spec of grp.specs) {
      const n = spec.shape.reduce((a, b) => a * b, 1);
      const p0 = roundTo(rng.normals(n), spec.dtype);
      const t: AdamwParam = {
        p: await gpu.tensorFrom(p0, spec.shape, spec.dtype, 'p'),
        g: await gpu.tensor(spec.shape, 'f32', 'g'),
        m: await gpu.tensorFrom(new Float64Array(n), spec.shape, 'f32', 'm'),
        v: await gpu.tensorFrom(new Float64Array(n), spec.shape, 'f32', 'v'),
      };
      if (spec.master) t.master = await gpu.tensorFrom(p0, spec.shape, 'f32', 'master');
      row.push({ spec, t, p0, p: p0.slice(), m: new Float64Array(n), v: new Float64Array(n) });
    }
    states.push(row);
  }
  const scaleT = await gpu.tensor([1], 'f32', 'gradScale');
  for (let step = 1; step <= SCALES.length; step++) {
    const sc = SCALES[step - 1]!;
    for (const [gi, row] of states.entries()) {
      for (const s of row) {
        const g = rng.normals(s.p.length, 0.1);
        gpu.write(s.t.g, g);
        const g32 = roundTo(g, 'f32');
        ref.adamwStep(s.p, g32, s.m, s.v, { ...hyper, ...GROUPS[gi]!, step, gradScale: sc.value });
        // a parameter stored in 16 bits without a master is rounded after every step
        if (!s.spec.master && s.spec.dtype !== 'f32') s.p.set(roundTo(s.p, s.spec.dtype));
      }
    }
    if (sc.gpu) gpu.write(scaleT, [sc.value]);
    const groups = GROUPS.map((grp, gi) => ({ lr: grp.lr, weightDecay: grp.weightDecay, params: states[gi]!.map((s) => s.t) }));
    await adamwStep(gpu, groups, { ...hyper, step, gradScale: sc.gpu ? scaleT : sc.value });
  }
  for (const row of states) {
    for (const s of row) {
      const what = `${s.spec.dtype}[${s.spec.shape.join(',')}]${s.spec.master ? ' master' : ''}`;
      assertClose(`${what} m`, await gpu.read(s.t.m), s.m, TOL.f32);
      assertClose(`${what} v`, await gpu.read(s.t.v), s.v, TOL.f32);
      const p = await gpu.read(s.t.p);
      if (s.spec.master) {
        // the change over 5 steps is what the optimizer computes: compare it sharply
        const mst = await gpu.read(s.t.master!);
        assertClose(`${what} master update`, mst.map((x, i) => x - s.p0[i]!), s.p.map((x, i) => x - s.p0[i]!), TOL.f32);
        assertClose(`${what} p`, p, roundTo(s.p, s.spec.dtype), TOL[s.spec.dtype]);
      } else if (s.spec.dtype === 'f32') {
        assertClose(`${what} update`, p.map((x, i) => x - s.p0[i]!), s.p.map((x, i) => x - s.p0[i]!), TOL.f32);
      } else {
        assertClose(`${what} p`, p, s.p, TOL[s.spec.dtype]);
      }
    }
  }
  for (const row of states) for (const s of row) for (const t of [s.t.p, s.t.g, s.t.m, s.t.v, s.t.master]) t?.dispose();
  scaleT.dispose();
});

test('adamw: the clip coefficient from gradNorm is applied through gradScale, without readback', async () => {
  const gpu = await testGpu();
  const rng = new Rng(12);
  const sizes = [5, 1000, 77];
  const gs = sizes.map((n) => roundTo(rng.normals(n), 'f32'));
  const ps = sizes.map((n) => roundTo(rng.normals(n), 'f32'));
  const ts: AdamwParam[] = [];
  for (const [j, n] of sizes.entries()) {
    ts.push({
      p: await gpu.tensorFrom(ps[j]!, [n], 'f32', 'p'),
      g: await gpu.tensorFrom(gs[j]!, [n], 'f32', 'g'),
      m: await gpu.tensorFrom(new Float64Array(n), [n], 'f32', 'm'),
      v: await gpu.tensorFrom(new Float64Array(n), [n], 'f32', 'v'),
    });
  }
  const norm = await gpu.tensor([1], 'f32', 'norm');
  const scale = await gpu.tensor([1], 'f32', 'scale');
  const maxNorm = 4; // the norm is about sqrt(1082) = 33: clipping is active
  const h = { lr: 0.05, weightDecay: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8 };
  const reads = gpu.flushes;
  await gradNorm(gpu, { norm, scale }, ts.map((t) => t.g), { maxNorm });
  await adamwStep(gpu, [{ params: ts, lr: h.lr, weightDecay: h.weightDecay }], { step: 1, gradScale: scale });
  assert.equal(gpu.flushes, reads, 'nothing was submitted (so nothing was read back) between the two');
  const coef = refGradNorm(gs, maxNorm).scale;
  for (const [j, t] of ts.entries()) {
    const p = ps[j]!.slice();
    const m = new Float64Array(sizes[j]!);
    const v = new Float64Array(sizes[j]!);
    ref.adamwStep(p, gs[j]!, m, v, { ...h, step: 1, gradScale: coef });
    assertClose(`m[${j}]`, await gpu.read(t.m), m, TOL.f32);
    assertClose(`update[${j}]`, (await gpu.read(t.p)).map((x, i) => x - ps[j]![i]!), p.map((x, i) => x - ps[j]![i]!), TOL.f32);
  }
  for (const t of ts) for (const x of [t.p, t.g, t.m, t.v]) x.dispose();
  norm.dispose();
  scale.dispose();
});

test('adamw: every tensor in one buffer (an arena) binds without a usage conflict', async () => {
  const gpu = await testGpu();
  const n = 5;
  const arena = new Arena(gpu, 'adamw_arena');
  for (const name of ['g', 'm', 'v', 'master', 'scale']) arena.declare(name, name === 'scale' ? [1] : [n]);
  arena.declare('p', [n], 'bf16');
  await arena.commit();
  const t = { p: arena.get('p'), g: arena.get('g'), m: arena.get('m'), v: arena.get('v'), master: arena.get('master') };
  const rng = new Rng(3);
  const p = roundTo(rng.normals(n), 'bf16');
  const g = rng.normals(n);
  gpu.write(t.p, p);
  gpu.write(t.master, p);
  gpu.write(t.g, g);
  gpu.write(t.m, new Float64Array(n));
  gpu.write(t.v, new Float64Array(n));
  gpu.write(arena.get('scale'), [0.5]);
  const h = { lr: 1e-2, weightDecay: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 1 };
  await adamwStep(gpu, [{ params: [t], lr: h.lr, weightDecay: h.weightDecay }], { step: 1, gradScale: arena.get('scale') });
  const m = new Float64Array(n);
  const v = new Float64Array(n);
  ref.adamwStep(p, g, m, v, { ...h, gradScale: 0.5 });
  assertClose('master', await gpu.read(t.master), p, TOL.f32);
  assertClose('p', await gpu.read(t.p), roundTo(p, 'bf16'), TOL.bf16);
  assertClose('v', await gpu.read(t.v), v, TOL.f32);
  arena.dispose();
});

test('adamw: wrong shapes, dtypes and options throw, naming the op and the tensor', async () => {
  const gpu = await testGpu();
  const mk = (shape: number[], dtype: DType = 'f32', label = 't') => gpu.tensor(shape, dtype, label);
  const ok: AdamwParam = { p: await mk([4, 3], 'bf16', 'p'), g: await mk([4, 3], 'f32', 'g'), m: await mk([4, 3], 'f32', 'm'), v: await mk([4, 3], 'f32', 'v') };
  const short = await mk([4, 2], 'f32', 'short');
  const half = await mk([4, 3], 'f16', 'half');
  const two = await mk([2], 'f32', 'two');
  const one = (t: AdamwParam) => [{ params: [ok, t], lr: 1e-3, weightDecay: 0 }];
  const cases: [string, () => Promise<void>, (e: unknown) => boolean][] = [
    ['g shape', () => adamwStep(gpu, one({ ...ok, g: short }), { step: 1 }), shapeErr(/adamwStep: groups\[0\]\.params\[1\]\.g short\[4,2\]:f32 should have shape \[4,3\]/)],
    ['m dtype', () => adamwStep(gpu, one({ ...ok, m: half }), { step: 1 }), shapeErr(/adamwStep: groups\[0\]\.params\[1\]\.m half\[4,3\]:f16 must be one of f32/)],
    ['master shape', () => adamwStep(gpu, one({ ...ok, master: short }), { step: 1 }), shapeErr(/params\[1\]\.master short\[4,2\]/)],
    ['gradScale shape', () => adamwStep(gpu, one(ok), { step: 1, gradScale: two }), shapeErr(/adamwStep: gradScale two\[2\]:f32 should have shape \[1\]/)],
    ['p overlaps m', () => adamwStep(gpu, one({ ...ok, m: ok.v }), { step: 1 }), shapeErr(/adamwStep: .* overlap/)],
    ['step 0', () => adamwStep(gpu, one(ok), { step: 0 }), (e) => e instanceof EngramError && /step must be an integer >= 1/.test(e.message)],
    ['beta2 1', () => adamwStep(gpu, one(ok), { step: 1, beta2: 1 }), (e) => e instanceof EngramError && /beta2/.test(e.message)],
  ];
  for (const [what, fn, check] of cases) {
    const before = gpu.dispatches;
    await assert.rejects(fn, check, what);
    // shape errors are found before anything is recorded (no half-applied step)
    assert.equal(gpu.dispatches, before, `${what}: dispatched before failing`);
  }
  for (const t of [ok.p, ok.g, ok.m, ok.v, short, half, two] as Tensor[]) t.dispose();
});

function shapeErr(re: RegExp) {
  return (e: unknown) => e instanceof ShapeError && re.test(e.message);
}

test('adamw with a row mask: masked-in rows step, the others keep every bit (f32, and bf16 with a master)', async () => {
  const gpu = await testGpu();
  const [R, W] = [5, 3];
  const mask = [1, 0, 0, 1, 1];
  const h = { lr: 1e-2, weightDecay: 0.1, beta1: 0.9, beta2: 0.95, eps: 1e-8, step: 3 };
  for (const dtype of ['f32', 'bf16'] as const) {
    const rng = new Rng(dtype === 'f32' ? 1 : 2);
    const p0 = roundTo(rng.normals(R * W), dtype);
    const g = rng.normals(R * W);
    const m0 = rng.normals(R * W, 0.1);
    const v0 = Float64Array.from(rng.normals(R * W, 0.1), Math.abs);
    const t = {
      p: await gpu.tensorFrom(p0, [R, W], dtype, 'p'),
      g: await gpu.tensorFrom(g, [R, W], 'f32', 'g'),
      m: await gpu.tensorFrom(m0, [R, W], 'f32', 'm'),
      v: await gpu.tensorFrom(v0, [R, W], 'f32', 'v'),
      ...(dtype === 'bf16' ? { master: await gpu.tensorFrom(p0, [R, W], 'f32', 'master') } : {}),
    };
    const tmask = await gpu.tensorFrom(mask, [R], 'u32', 'mask');
    await adamwStep(gpu, [{ params: [{ ...t, rows: { mask: tmask, width: W } }], lr: h.lr, weightDecay: h.weightDecay }], h);
    const [p, m, v] = [Float64Array.from(p0), Float64Array.from(m0), Float64Array.from(v0)];
    for (let r = 0; r < R; r++) {
      if (!mask[r]) continue;
      const sl = (a: Float64Array) => a.subarray(r * W, (r + 1) * W);
      ref.adamwStep(sl(p), g.subarray(r * W, (r + 1) * W), sl(m), sl(v), h);
    }
    assertClose(`${dtype} p`, await gpu.read(t.p), roundTo(p, dtype), TOL[dtype]);
    assertClose(`${dtype} m`, await gpu.read(t.m), m, TOL.f32);
    const gotV = await gpu.read(t.v);
    const gotP = await gpu.read(t.p);
    for (let i = 0; i < R * W; i++) {
      if (mask[Math.floor(i / W)]) continue;
      assert.equal(gotP[i], Math.fround(p0[i]!), `row ${Math.floor(i / W)} kept p`);
      assert.equal(gotV[i], Math.fround(v0[i]!), `row ${Math.floor(i / W)} kept v`);
    }
    await assert.rejects(
      adamwStep(gpu, [{ params: [{ ...t, rows: { mask: tmask, width: 4 } }], lr: 1, weightDecay: 0 }], h),
      /rows.width 4 must divide p\[5,3\]:\w+ into whole rows/,
    );
    for (const x of [...Object.values(t), tmask]) x.dispose();
  }
});
