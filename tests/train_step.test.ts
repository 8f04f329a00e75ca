// a training-like iteration through every kernel (one pre-norm transformer block with attention
// and a SwiGLU MLP, an output head and cross-entropy, backward, gradient clipping and AdamW),
// run many times: allocated bytes must settle after the first step and return to the baseline
// once everything is disposed, no scratch tensor may stay out, and the loss on a fixed batch
// must fall.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Arena } from '../src/gpu/buffers.ts';
import type { Gpu } from '../src/gpu/device.ts';
import type { Tensor } from '../src/gpu/tensor.ts';
import { addForward } from '../src/kernels/add/add.ts';
import { adamwStep, type AdamwParam } from '../src/kernels/adamw/adamw.ts';
import { attentionBackward, attentionForward } from '../src/kernels/attention/attention.ts';
import { fill } from '../src/kernels/copy/copy.ts';
import { embeddingBackward, embeddingForward } from '../src/kernels/embedding/embedding.ts';
import { gradNorm } from '../src/kernels/gradnorm/gradnorm.ts';
import { linearBackward, linearForward } from '../src/kernels/matmul/matmul.ts';
import { rmsnormBackward, rmsnormForward } from '../src/kernels/rmsnorm/rmsnorm.ts';
import { createRopeTable, ropeBackward, ropeForward } from '../src/kernels/rope/rope.ts';
import { swigluBackward, swigluForward } from '../src/kernels/swiglu/swiglu.ts';
import { xentBackward, xentForward } from '../src/kernels/xent/xent.ts';
import { testGpu } from '../src/testing/gpu.ts';
import { Rng } from '../src/testing/rng.ts';

const [B, T, C, NH, HS, H, V] = [2, 12, 32, 4, 8, 48, 40];
const N = B * T;

const PARAMS: Record<string, number[]> = {
  wte: [V, C],
  norm1: [C],
  wq: [C, C],
  wk: [C, C],
  wv: [C, C],
  wo: [C, C],
  norm2: [C],
  w13: [2 * H, C],
  w2: [C, H],
  head: [V, C],
};

const ACTS: Record<string, number[]> = {
  x: [B, T, C], rstd1: [N], h: [B, T, C], q: [B, T, NH, HS], k: [B, T, NH, HS], v: [B, T, NH, HS],
  qr: [B, T, NH, HS], kr: [B, T, NH, HS], att: [B, T, NH, HS], lse: [B, NH, T], o: [B, T, C], x2: [B, T, C],
  rstd2: [N], h2: [B, T, C], gu: [B, T, 2 * H], s: [B, T, H], f: [B, T, C], x3: [B, T, C], logits: [B, T, V],
  losses: [B, T], loss: [1], xlse: [B, T],
  // gradients of activations
  dlogits: [B, T, V], dx3: [B, T, C], ds: [B, T, H], dgu: [B, T, 2 * H], dh2: [B, T, C], dx2: [B, T, C],
  dx2n: [B, T, C], datt: [B, T, NH, HS], dqr: [B, T, NH, HS], dkr: [B, T, NH, HS], dv: [B, T, NH, HS],
  dq: [B, T, NH, HS], dk: [B, T, NH, HS], dh: [B, T, C], dhk: [B, T, C], dhv: [B, T, C], dx: [B, T, C],
  norm: [1], scale: [1],
};

async function build(gpu: Gpu) {
  const params = new Arena(gpu, 'params');
  const grads = new Arena(gpu, 'grads');
  const optim = new Arena(gpu, 'optim');
  const acts = new Arena(gpu, 'acts');
  for (const [n, s] of Object.entries(PARAMS)) {
    params.declare(n, s);
    grads.declare(n, s);
    optim.declare(`${n}.m`, s);
    optim.declare(`${n}.v`, s);
  }
  for (const [n, s] of Object.entries(ACTS)) acts.declare(n, s);
  acts.declare('ids', [B, T], 'u32');
  acts.declare('targets', [B, T], 'u32');
  for (const a of [params, grads, optim, acts]) await a.commit();
  const rng = new Rng(11);
  for (const [n, s] of Object.entries(PARAMS)) {
    const size = s.reduce((x, y) => x * y, 1);
    gpu.write(params.get(n), n.startsWith('norm') ? new Float64Array(size).fill(1) : rng.normals(size, 0.2));
  }
  for (const n of optim.names()) await fill(gpu, optim.get(n), 0);
  const ids = Array.from({ length: N }, () => rng.int(V));
  gpu.write(acts.get('ids'), ids);
  // next-token targets on a fixed batch: learnable
  gpu.write(acts.get('targets'), ids.map((_, t) => ids[(t + 1) % N]!));
  const table = await createRopeTable(gpu, T, HS);
  return { params, grads, optim, acts, table };
}

async function step(gpu: Gpu, m: Awaited<ReturnType<typeof build>>, it: number): Promise<void> {
  const p = (n: string) => m.params.get(n);
  const g = (n: string) => m.grads.get(n);
  const a = (n: string) => m.acts.get(n);
  const flat = (t: Tensor) => t.reshape([B, T, C]);
  // forward
  await embeddingForward(gpu, { out: a('x').reshape([B, T, C]) }, { W: p('wte'), ids: a('ids') });
  await rmsnormForward(gpu, { out: a('h'), rstd: a('rstd1') }, { x: a('x'), w: p('norm1') });
  await linearForward(gpu, { y: flat(a('q')) }, { x: a('h'), w: p('wq') });
  await linearForward(gpu, { y: flat(a('k')) }, { x: a('h'), w: p('wk') });
  await linearForward(gpu, { y: flat(a('v')) }, { x: a('h'), w: p('wv') });
  await ropeForward(gpu, { out: a('qr') }, { x: a('q'), table: m.table });
  await ropeForward(gpu, { out: a('kr') }, { x: a('k'), table: m.table });
  await attentionForward(gpu, { out: a('att'), lse: a('lse') }, { q: a('qr'), k: a('kr'), v: a('v') });
  await linearForward(gpu, { y: a('o') }, { x: flat(a('att')), w: p('wo') });
  await addForward(gpu, { out: a('x2') }, { a: a('x'), b: a('o') });
  await rmsnormForward(gpu, { out: a('h2'), rstd: a('rstd2') }, { x: a('x2'), w: p('norm2') });
  await linearForward(gpu, { y: a('gu') }, { x: a('h2'), w: p('w13') });
  await swigluForward(gpu, { out: a('s') }, { gu: a('gu') });
  await linearForward(gpu, { y: a('f') }, { x: a('s'), w: p('w2') });
  await addForward(gpu, { out: a('x3') }, { a: a('x2'), b: a('f') });
  await linearForward(gpu, { y: a('logits') }, { x: a('x3'), w: p('head') });
  await xentForward(gpu, { losses: a('losses'), loss: a('loss'), lse: a('xlse') }, { logits: a('logits'), targets: a('targets') });
  // backward (parameter grads accumulate: zero them first)
  for (const n of m.grads.names()) await fill(gpu, g(n), 0);
  await xentBackward(gpu, { dlogits: a('dlogits') }, { logits: a('logits'), targets: a('targets'), lse: a('xlse') });
  await linearBackward(gpu, { dx: a('dx3'), dw: g('head') }, { dout: a('dlogits'), x: a('x3'), w: p('head') });
  await linearBackward(gpu, { dx: a('ds'), dw: g('w2') }, { dout: a('dx3'), x: a('s'), w: p('w2') });
  await swigluBackward(gpu, { dgu: a('dgu') }, { dout: a('ds'), gu: a('gu') });
  await linearBackward(gpu, { dx: a('dh2'), dw: g('w13') }, { dout: a('dgu'), x: a('h2'), w: p('w13') });
  await rmsnormBackward(gpu, { dx: a('dx2n'), dw: g('norm2') }, { dout: a('dh2'), x: a('x2'), w: p('norm2'), rstd: a('rstd2') });
  await addForward(gpu, { out: a('dx2') }, { a: a('dx3'), b: a('dx2n') });
  await linearBackward(gpu, { dx: flat(a('datt')), dw: g('wo') }, { dout: a('dx2'), x: flat(a('att')), w: p('wo') });
  await attentionBackward(
    gpu,
    { dq: a('dqr'), dk: a('dkr'), dv: a('dv') },
    { dout: a('datt'), q: a('qr'), k: a('kr'), v: a('v'), out: a('att'), lse: a('lse') },
  );
  await ropeBackward(gpu, { dx: a('dq') }, { dout: a('dqr'), table: m.table });
  await ropeBackward(gpu, { dx: a('dk') }, { dout: a('dkr'), table: m.table });
  await linearBackward(gpu, { dx: a('dh'), dw: g('wq') }, { dout: flat(a('dq')), x: a('h'), w: p('wq') });
  await linearBackward(gpu, { dx: a('dhk'), dw: g('wk') }, { dout: flat(a('dk')), x: a('h'), w: p('wk') });
  await linearBackward(gpu, { dx: a('dhv'), dw: g('wv') }, { dout: flat(a('dv')), x: a('h'), w: p('wv') });
  await addForward(gpu, { out: a('dh') }, { a: a('dh'), b: a('dhk') });
  await addForward(gpu, { out: a('dh') }, { a: a('dh'), b: a('dhv') });
  await rmsnormBackward(gpu, { dx: a('dx'), dw: g('norm1') }, { dout: a('dh'), x: a('x'), w: p('norm1'), rstd: a('rstd1') });
  await addForward(gpu, { out: a('dx') }, { a: a('dx'), b: a('dx2') });
  await embeddingBackward(gpu, { dW: g('wte') }, { dout: a('dx').reshape([N, C]), ids: a('ids').reshape([N]) });
  // clip and step, the clip coefficient staying on the GPU
  const names = Object.keys(PARAMS);
  await gradNorm(gpu, { norm: a('norm'), scale: a('scale') }, names.map(g), { maxNorm: 1 });
  const group = (ns: string[], weightDecay: number) => ({
    lr: 3e-2,
    weightDecay,
    params: ns.map((n): AdamwParam => ({ p: p(n), g: g(n), m: m.optim.get(`${n}.m`), v: m.optim.get(`${n}.v`) })),
  });
  await adamwStep(gpu, [group(names.filter((n) => !n.startsWith('norm')), 0.01), group(['norm1', 'norm2'], 0)], {
    step: it + 1,
    gradScale: a('scale'),
  });
}

test('training-like iterations through every kernel: memory settles, loss falls', async () => {
  const gpu = await testGpu();
  gpu.scratch.trim();
  const baseline = gpu.memory();
  const m = await build(gpu);
  const losses: number[] = [];
  let settled = -1;
  for (let it = 0; it < 30; it++) {
    await step(gpu, m, it);
    losses.push((await gpu.read(m.acts.get('loss')))[0]!);
    assert.equal(gpu.scratch.outstanding, 0, `scratch tensors left out after step ${it}`);
    const bytes = gpu.memory().bytes;
    if (it === 1) settled = bytes;
    if (it > 1) assert.equal(bytes, settled, `allocated bytes grew at step ${it}: ${bytes} != ${settled}`);
  }
  await gpu.sync();
  assert.ok(losses.every(Number.isFinite), `non-finite loss: ${losses}`);
  assert.ok(losses.at(-1)! < losses[0]! * 0.7, `loss did not fall: ${losses[0]} -> ${losses.at(-1)}`);
  for (const arena of [m.params, m.grads, m.optim, m.acts]) arena.dispose();
  m.table.dispose();
  gpu.scratch.trim();
  const after = gpu.memory();
  assert.equal(after.bytes, baseline.bytes, `bytes after dispose ${after.bytes} != baseline ${baseline.bytes}: ${[...after.byLabel]}`);
  assert.equal(after.buffers, baseline.buffers);
});
