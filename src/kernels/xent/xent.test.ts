import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DTYPES, roundTo, type DType, type TensorDType } from '../../gpu/dtype.ts';
import { ShapeError } from '../../gpu/errors.ts';
import { STORAGE_USAGE, Tensor } from '../../gpu/tensor.ts';
import * as ref from '../../reference/xent.ts';
import { TOL, assertClose } from '../../testing/allclose.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { IGNORE_INDEX, xentBackward, xentForward } from './xent.ts';

interface Case {
  shape: number[]; // logits shape, V last
  ignore?: 'some' | 'all';
  scale?: number;
  offset?: number;
  /** column 0 leads every row: with odd V, f16/bf16 words that straddle rows carry large values */
  lead0?: boolean;
  dloss?: number;
  inPlace?: boolean;
}

// awkward shapes: single rows, V = 1 and 3, odd V (f16/bf16 rows start and end mid-word), V
// around one forward iteration (UNROLL * WG = 1024), the GPT-2 vocabulary, (B,T,V) logits,
// ignored rows, every row ignored, large magnitudes (+-1e4, also on ignored rows, whose lse is 0)
// and a large common offset
const CASES: Case[] = [
  { shape: [1, 1] },
  { shape: [1, 3] },
  { shape: [4, 3], ignore: 'some', inPlace: true },
  { shape: [9, 5], lead0: true },
  { shape: [6, 7], lead0: true, ignore: 'some', inPlace: true },
  { shape: [6, 257], dloss: 0.5 },
  { shape: [2, 3, 1030], ignore: 'some' },
  { shape: [3, 50257], ignore: 'some', inPlace: true },
  { shape: [5, 64], ignore: 'all' },
  { shape: [7, 600], scale: 1e4 },
  { shape: [6, 33], scale: 3000, lead0: true, ignore: 'some' },
  { shape: [5, 301], offset: 1e4, scale: 2 },
];

for (const dtype of DTYPES) {
  for (const c of CASES) {
    const { shape, ignore, scale = 3, offset = 0, lead0 = false, dloss = 1, inPlace = false } = c;
    const V = shape.at(-1)!;
    const N = shape.reduce((a, b) => a * b, 1) / V;
    const name = `xent ${dtype} [${shape.join(',')}]${ignore ? ` ignore=${ignore}` : ''} scale=${scale}${offset ? ` offset=${offset}` : ''}${lead0 ? ' lead0' : ''}${inPlace ? ' in place' : ''}`;
    test(name, async () => {
      const gpu = await testGpu();
      const rng = new Rng(N * 7919 + V);
      const x0 = rng.normals(N * V, scale, offset);
      if (lead0) for (let n = 0; n < N; n++) x0[n * V] = x0[n * V]! + 4 * scale;
      const x = roundTo(x0, dtype);
      const t = Array.from(rng.ints(N, V));
      if (ignore === 'all') t.fill(IGNORE_INDEX);
      if (ignore === 'some') for (let n = 0; n < N; n += 2) t[n] = IGNORE_INDEX;
      const lead = shape.slice(0, -1);
      const logits = await gpu.tensorFrom(x, shape, dtype, 'logits');
      const targets = await gpu.tensorFrom(t, lead, 'u32', 'targets');
      const losses = await gpu.tensor(lead, 'f32', 'losses');
      const lse = await gpu.tensor(lead, 'f32', 'lse');
      const loss = await gpu.tensor([1], 'f32', 'loss');
      const dlogits = inPlace ? logits : await gpu.tensor(shape, dtype, 'dlogits');
      await xentForward(gpu, { losses, loss, lse }, { logits, targets });
      await xentBackward(gpu, { dlogits }, { logits, targets, lse }, { dloss });
      const f = ref.xentForward(x, t, N, V);
      const b = ref.xentBackward(x, t, f.lse, N, V, dloss);
      assertClose('losses', await gpu.read(losses), f.losses, TOL.f32);
      assertClose('lse', await gpu.read(lse), f.lse, TOL.f32);
      assertClose('loss', await gpu.read(loss), [f.loss], TOL.f32);
      // an f32 lse near 1e4 is off by up to half an ulp (5e-4): that is the gradient's relative
      // error at that offset, whatever the storage dtype
      const tol = offset ? Math.max(TOL[dtype], 1e-3) : TOL[dtype];
      const dl = await gpu.read(dlogits);
      assert.ok(dl.every(Number.isFinite), 'dlogits has a non-finite value');
      assertClose('dlogits', dl, b.dlogits, tol);
      for (const tt of new Set([logits, targets, losses, lse, loss, dlogits])) tt.dispose();
    });
  }
}

test('xent is deterministic: the same bits every run', async () => {
  const gpu = await testGpu();
  const rng = new Rng(5);
  const [N, V] = [300, 1001];
  const logits = await gpu.tensorFrom(rng.normals(N * V, 4), [N, V], 'bf16', 'logits');
  const targets = await gpu.tensorFrom(rng.ints(N, V), [N], 'u32', 'targets');
  const losses = await gpu.tensor([N], 'f32', 'losses');
  const lse = await gpu.tensor([N], 'f32', 'lse');
  const loss = await gpu.tensor([1], 'f32', 'loss');
  const dlogits = await gpu.tensor([N, V], 'bf16', 'dlogits');
  const run = async () => {
    await xentForward(gpu, { losses, loss, lse }, { logits, targets });
    await xentBackward(gpu, { dlogits }, { logits, targets, lse });
    return [await gpu.read(loss), await gpu.read(lse), await gpu.read(dlogits)];
  };
  const first = await run();
  const second = await run();
  first.forEach((a, i) => assert.deepEqual(a, second[i]));
  for (const tt of [logits, targets, losses, lse, loss, dlogits]) tt.dispose();
});

test('xent: tensors sharing one buffer (an activation arena) bind without a usage conflict', async () => {
  const gpu = await testGpu();
  const [N, V, dtype] = [3, 11, 'f16' as DType];
  // slots of 512 bytes (a multiple of every storage offset alignment)
  const slot = Math.max(512, gpu.device.limits.minStorageBufferOffsetAlignment);
  const buffer = gpu.createBuffer('arena', 8 * slot, STORAGE_USAGE);
  const at = (k: number, shape: number[], dt: TensorDType, label: string) => new Tensor(buffer, k * slot, shape, dt, label, null);
  const logits = at(0, [N, V], dtype, 'logits');
  const dlogits = at(1, [N, V], dtype, 'dlogits');
  const targets = at(2, [N], 'u32', 'targets');
  const losses = at(3, [N], 'f32', 'losses');
  const lse = at(4, [N], 'f32', 'lse');
  const loss = at(5, [1], 'f32', 'loss');
  const rng = new Rng(9);
  const x = roundTo(rng.normals(N * V), dtype);
  const t = [4, IGNORE_INDEX, 10];
  gpu.write(logits, x);
  gpu.write(targets, t);
  await xentForward(gpu, { losses, loss, lse }, { logits, targets });
  await xentBackward(gpu, { dlogits }, { logits, targets, lse });
  const f = ref.xentForward(x, t, N, V);
  assertClose('loss', await gpu.read(loss), [f.loss], TOL.f32);
  assertClose('dlogits', await gpu.read(dlogits), ref.xentBackward(x, t, f.lse, N, V).dlogits, TOL[dtype]);
  // partially overlapping logits and dlogits cannot be bound together
  const wide = (k: number, label: string) => new Tensor(buffer, k * slot, [N, 200], dtype, label, null);
  await assert.rejects(
    xentBackward(gpu, { dlogits: wide(1, 'dl') }, { logits: wide(0, 'lg'), targets: at(6, [N], 'u32', 't'), lse: at(7, [N], 'f32', 'l') }),
    (e) => e instanceof ShapeError && /xentBackward: dl\[3,200\]:f16 and lg\[3,200\]:f16 overlap/.test(e.message),
  );
  await gpu.sync();
  gpu.destroyBuffer(buffer);
});

test('xent: an out-of-range target gives a NaN loss and gradient row', async () => {
  const gpu = await testGpu();
  const [N, V] = [2, 5];
  const logits = await gpu.tensorFrom(new Rng(2).normals(N * V), [N, V], 'f32', 'logits');
  const targets = await gpu.tensorFrom([1, V], [N], 'u32', 'targets');
  const losses = await gpu.tensor([N], 'f32', 'losses');
  const lse = await gpu.tensor([N], 'f32', 'lse');
  const loss = await gpu.tensor([1], 'f32', 'loss');
  const dlogits = await gpu.tensor([N, V], 'f32', 'dlogits');
  await xentForward(gpu, { losses, loss, lse }, { logits, targets });
  await xentBackward(gpu, { dlogits }, { logits, targets, lse });
  const l = await gpu.read(losses);
  assert.ok(Number.isFinite(l[0]) && Number.isNaN(l[1]));
  assert.ok(Number.isNaN((await gpu.read(loss))[0]));
  const d = await gpu.read(dlogits);
  assert.ok(d.slice(0, V).every(Number.isFinite) && d.slice(V).every(Number.isNaN));
  for (const tt of [logits, targets, losses, lse, loss, dlogits]) tt.dispose();
});

test('xent: wrong shapes and dtypes throw a ShapeError naming the op and the shapes', async () => {
  const gpu = await testGpu();
  const [N, V] = [4, 6];
  const logits = await gpu.tensor([N, V], 'f32', 'logits');
  const targets = await gpu.tensor([N], 'u32', 'targets');
  const f32Targets = await gpu.tensor([N], 'f32', 'ft');
  const losses = await gpu.tensor([N], 'f32', 'losses');
  const lse = await gpu.tensor([N], 'f32', 'lse');
  const loss = await gpu.tensor([1], 'f32', 'loss');
  const dlogits = await gpu.tensor([N, V], 'f32', 'dlogits');
  const short = await gpu.tensor([N - 1], 'f32', 'short');
  const half = await gpu.tensor([N], 'f16', 'half');
  const halfLogits = await gpu.tensor([N, V], 'f16', 'hl');
  const flat = await gpu.tensor([V], 'f32', 'flat');
  const bad: [string, () => Promise<void>, RegExp][] = [
    ['1-D logits', () => xentForward(gpu, { losses, loss, lse }, { logits: flat, targets }), /xentForward: logits flat\[6\]/],
    ['short targets', () => xentForward(gpu, { losses, loss, lse }, { logits, targets: short }), /xentForward: targets short\[3\]:f32 should have shape \[4\]/],
    ['f16 targets', () => xentForward(gpu, { losses, loss, lse }, { logits, targets: half }), /xentForward: targets half\[4\]:f16/],
    ['f32 targets', () => xentForward(gpu, { losses, loss, lse }, { logits, targets: f32Targets }), /xentForward: targets ft\[4\]:f32 must be one of u32/],
    ['f32 targets (backward)', () => xentBackward(gpu, { dlogits }, { logits, targets: f32Targets, lse }), /xentBackward: targets ft\[4\]:f32 must be one of u32/],
    ['u32 logits', () => xentForward(gpu, { losses, loss, lse }, { logits: targets.reshape([2, 2]), targets }), /xentForward: logits targets\[2,2\]:u32 must be one of f32\/f16\/bf16/],
    ['losses overlap loss', () => xentForward(gpu, { losses, loss, lse: losses }, { logits, targets }), /xentForward: losses\[4\]:f32 and losses\[4\]:f32 overlap/],
    ['short losses', () => xentForward(gpu, { losses: short, loss, lse }, { logits, targets }), /xentForward: losses short\[3\]/],
    ['loss [4]', () => xentForward(gpu, { losses, loss: lse, lse }, { logits, targets }), /xentForward: loss lse\[4\]:f32 should have shape \[1\]/],
    ['f16 lse', () => xentForward(gpu, { losses, loss, lse: half }, { logits, targets }), /xentForward: lse half\[4\]:f16/],
    ['dlogits dtype', () => xentBackward(gpu, { dlogits: halfLogits }, { logits, targets, lse }), /xentBackward: dlogits hl\[4,6\]:f16/],
    ['dlogits shape', () => xentBackward(gpu, { dlogits: flat }, { logits, targets, lse }), /xentBackward: dlogits flat\[6\]/],
    ['f16 lse (backward)', () => xentBackward(gpu, { dlogits }, { logits, targets, lse: half }), /xentBackward: lse half/],
  ];
  for (const [what, fn, re] of bad) {
    await assert.rejects(fn, (e) => e instanceof ShapeError && re.test(e.message), what);
  }
  for (const tt of [logits, targets, f32Targets, losses, lse, loss, dlogits, short, half, halfLogits, flat]) tt.dispose();
});
