// kernel checks that run inside a browser page (navigator.gpu), bundled by tests/browser.test.ts.
// each check runs forward and backward on seeded data and compares with the float64 reference;
// the page exposes runChecks() returning the adapter's name and one line per check.

import { Gpu } from '../../src/gpu/device.ts';
import { roundTo, type DType } from '../../src/gpu/dtype.ts';
import { attentionBackward, attentionForward } from '../../src/kernels/attention/attention.ts';
import { embeddingBackward, embeddingForward } from '../../src/kernels/embedding/embedding.ts';
import { matmul } from '../../src/kernels/matmul/matmul.ts';
import { rmsnormBackward, rmsnormForward } from '../../src/kernels/rmsnorm/rmsnorm.ts';
import { xentBackward, xentForward } from '../../src/kernels/xent/xent.ts';
import * as ref from '../../src/reference/index.ts';
import { TOL, assertClose } from '../../src/testing/allclose.ts';
import { Rng } from '../../src/testing/rng.ts';

type Check = (gpu: Gpu) => Promise<void>;

const rmsnorm = (dtype: DType): Check => async (gpu) => {
  const [N, C] = [5, 130];
  const rng = new Rng(1);
  const x = roundTo(rng.normals(N * C), dtype);
  const w = roundTo(rng.normals(C, 0.3, 1), dtype);
  const g = roundTo(rng.normals(N * C), dtype);
  const tx = await gpu.tensorFrom(x, [N, C], dtype, 'x');
  const tw = await gpu.tensorFrom(w, [C], dtype, 'w');
  const tg = await gpu.tensorFrom(g, [N, C], dtype, 'dout');
  const out = await gpu.tensor([N, C], dtype, 'out');
  const rstd = await gpu.tensor([N], 'f32', 'rstd');
  const dx = await gpu.tensor([N, C], dtype, 'dx');
  const dw = await gpu.tensorFrom(new Float64Array(C), [C], 'f32', 'dw');
  await rmsnormForward(gpu, { out, rstd }, { x: tx, w: tw });
  await rmsnormBackward(gpu, { dx, dw }, { dout: tg, x: tx, w: tw, rstd });
  const f = ref.rmsnormForward(x, w, N, C, 1e-5);
  const b = ref.rmsnormBackward(g, x, w, f.rstd, N, C);
  assertClose('out', await gpu.read(out), f.out, TOL[dtype]);
  assertClose('dx', await gpu.read(dx), b.dx, TOL[dtype]);
  assertClose('dw', await gpu.read(dw), b.dw, TOL[dtype]);
};

const matmulCheck = (dtype: DType): Check => async (gpu) => {
  const [M, N, K] = [67, 34, 129];
  const rng = new Rng(2);
  const a = roundTo(rng.normals(M * K), dtype);
  const b = roundTo(rng.normals(K * N), dtype);
  const ta = await gpu.tensorFrom(a, [M, K], dtype, 'a');
  const tb = await gpu.tensorFrom(b, [K, N], dtype, 'b');
  const out = await gpu.tensor([M, N], 'f32', 'out');
  await matmul(gpu, { out }, { a: ta, b: tb });
  assertClose('out', await gpu.read(out), ref.matmul(a, b, { M, N, K }), TOL[dtype]);
};

const attention: Check = async (gpu) => {
  const d = { B: 1, T: 37, NH: 4, NKV: 2, HS: 16, P: 0 };
  const rng = new Rng(3);
  const n = (h: number) => d.B * d.T * h * d.HS;
  const [q, k, v, g] = [rng.normals(n(d.NH)), rng.normals(n(d.NKV)), rng.normals(n(d.NKV)), rng.normals(n(d.NH))];
  const sq = [d.B, d.T, d.NH, d.HS];
  const skv = [d.B, d.T, d.NKV, d.HS];
  const [tq, tk, tv, tg] = await Promise.all([
    gpu.tensorFrom(q, sq, 'f32', 'q'),
    gpu.tensorFrom(k, skv, 'f32', 'k'),
    gpu.tensorFrom(v, skv, 'f32', 'v'),
    gpu.tensorFrom(g, sq, 'f32', 'dout'),
  ]);
  const out = await gpu.tensor(sq, 'f32', 'out');
  const lse = await gpu.tensor([d.B, d.NH, d.T], 'f32', 'lse');
  const [dq, dk, dv] = [await gpu.tensor(sq, 'f32', 'dq'), await gpu.tensor(skv, 'f32', 'dk'), await gpu.tensor(skv, 'f32', 'dv')];
  await attentionForward(gpu, { out, lse }, { q: tq, k: tk, v: tv });
  const f = ref.attentionForward(q, k, v, undefined, undefined, d);
  assertClose('out', await gpu.read(out), f.out, TOL.f32);
  await attentionBackward(gpu, { dq, dk, dv }, { dout: tg, q: tq, k: tk, v: tv, out, lse });
  const b = ref.attentionBackward(g, q, k, v, undefined, undefined, f.out, f.lse, d);
  assertClose('dq', await gpu.read(dq), b.dq, TOL.f32);
  assertClose('dk', await gpu.read(dk), b.dk, TOL.f32);
  assertClose('dv', await gpu.read(dv), b.dv, TOL.f32);
};

const embeddingAndXent: Check = async (gpu) => {
  const [N, V, C] = [50, 13, 24];
  const rng = new Rng(4);
  const ids = Array.from(rng.ints(N, V));
  const W = rng.normals(V * C);
  const g = rng.normals(N * C);
  const tids = await gpu.tensorFrom(ids, [N], 'u32', 'ids');
  const tW = await gpu.tensorFrom(W, [V, C], 'f32', 'W');
  const tg = await gpu.tensorFrom(g, [N, C], 'f32', 'dout');
  const out = await gpu.tensor([N, C], 'f32', 'out');
  const dW = await gpu.tensorFrom(new Float64Array(V * C), [V, C], 'f32', 'dW');
  await embeddingForward(gpu, { out }, { W: tW, ids: tids });
  await embeddingBackward(gpu, { dW }, { dout: tg, ids: tids });
  assertClose('embedding out', await gpu.read(out), ref.embeddingForward(W, ids, V, C), TOL.f32);
  assertClose('embedding dW', await gpu.read(dW), ref.embeddingBackward(g, ids, V, C), TOL.f32);
  // the embedded rows as logits over C classes, targets = ids mod C
  const targets = ids.map((i) => i % C);
  const tt = await gpu.tensorFrom(targets, [N], 'u32', 'targets');
  const [losses, loss, lse] = [await gpu.tensor([N], 'f32', 'losses'), await gpu.tensor([1], 'f32', 'loss'), await gpu.tensor([N], 'f32', 'lse')];
  const dlogits = await gpu.tensor([N, C], 'f32', 'dlogits');
  await xentForward(gpu, { losses, loss, lse }, { logits: out, targets: tt });
  await xentBackward(gpu, { dlogits }, { logits: out, targets: tt, lse });
  const logits = ref.embeddingForward(W, ids, V, C);
  const f = ref.xentForward(logits, targets, N, C);
  assertClose('xent loss', await gpu.read(loss), [f.loss], TOL.f32);
  assertClose('xent dlogits', await gpu.read(dlogits), ref.xentBackward(logits, targets, f.lse, N, C).dlogits, TOL.f32);
};

const CHECKS: Record<string, Check> = {
  'rmsnorm f32': rmsnorm('f32'),
  'rmsnorm bf16': rmsnorm('bf16'),
  'matmul f32': matmulCheck('f32'),
  'matmul f16': matmulCheck('f16'),
  'attention gqa f32': attention,
  'embedding + xent f32': embeddingAndXent,
};

async function runChecks(): Promise<{ adapter: string; results: string[] }> {
  const gpu = await Gpu.create();
  const results: string[] = [];
  try {
    for (const [name, check] of Object.entries(CHECKS)) {
      try {
        await check(gpu);
        results.push(`ok ${name}`);
      } catch (e) {
        results.push(`FAIL ${name}: ${(e as Error).message}`);
      }
    }
  } finally {
    gpu.destroy();
  }
  return { adapter: gpu.adapterName, results };
}

(globalThis as { runChecks?: typeof runChecks }).runChecks = runChecks;
