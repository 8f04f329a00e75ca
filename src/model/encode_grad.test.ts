// gradients through an explicit memory's encoding: a memory made of a reference's keys and values
// (encodeForward) read by a training forward; backward's memory gradients (TrainMemory.grads) go
// back through the encoding (encodeBackward). checked against central finite differences of the
// whole function (encode, read, loss) on the GPU in f32.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { testGpu } from '../testing/gpu.ts';
import { Rng } from '../testing/rng.ts';
import { denseConfig } from './config.ts';
import { zeroGrads } from './param.ts';
import { disposeEncode, Transformer } from './transformer.ts';

test('encodeForward/encodeBackward: the loss gradient through a memory\'s encoding matches finite differences', async () => {
  const gpu = await testGpu();
  const config = denseConfig({ vocabSize: 48, dim: 32, layers: 2, maxSeqLen: 64, headDim: 8 });
  const model = await Transformer.create(gpu, config, 3);
  const { kvHeads: NKV } = config;
  const HS = config.dim / config.heads;
  const rng = new Rng(4);
  const Tr = 6;
  const T = 7;
  // token 40 appears only in the reference: its embedding reaches the loss through the memory alone
  const ref = [40, ...Array.from({ length: Tr - 1 }, () => rng.int(30))];
  const seq = Array.from({ length: T + 1 }, () => rng.int(30));
  const refIds = await gpu.tensorFrom(ref, [1, Tr], 'u32', 'ref');
  const ids = await gpu.tensorFrom(seq.slice(0, T), [1, T], 'u32', 'ids');
  const targets = await gpu.tensorFrom(seq.slice(1), [1, T], 'u32', 'targets');
  const upTo = config.layers - 1;
  // the loss with the reference's keys and values (every row) as each block's memory; with grads, backward through both
  const run = async (grad: boolean): Promise<number> => {
    const st = await model.encodeForward(refIds, upTo);
    const blocks = st.blocks.map((b) => ({ k: b.k.reshape([1, Tr, NKV, HS]), v: b.v.reshape([1, Tr, NKV, HS]), chunk: 0 }));
    const grads = grad ? await Promise.all(blocks.map(async () => ({ dk: await gpu.tensor([1, Tr, NKV, HS]), dv: await gpu.tensor([1, Tr, NKV, HS]) }))) : undefined;
    const loss = await model.forward(ids, targets, { blocks, pos0: Tr, ...(grads ? { grads } : {}) });
    const value = (await gpu.read(loss))[0]!;
    loss.dispose();
    if (grads) {
      await model.backward();
      await model.encodeBackward(st, grads.map((g) => ({ dk: g.dk, dv: g.dv.reshape([Tr, NKV * HS]) })));
      for (const g of grads) for (const t of [g.dk, g.dv]) t.dispose();
    } else {
      model.release();
      disposeEncode(st);
    }
    return value;
  };
  await zeroGrads(gpu, model.params);
  await run(true);
  const byName = (suffix: string) => model.params.find((p) => p.name.endsWith(suffix))!;
  const checks: { name: string; index: number }[] = [];
  const embed = byName('embed_tokens.weight');
  for (let x = 0; x < 3; x++) checks.push({ name: embed.name, index: 40 * config.dim + 5 * x });
  for (const suffix of ['layers.0.self_attn.k_proj.weight', 'layers.0.self_attn.v_proj.weight', 'layers.1.self_attn.k_proj.weight']) {
    const g = (await gpu.read(byName(suffix).grad)) as Float32Array;
    const order = [...g.keys()].sort((a, b) => Math.abs(g[b]!) - Math.abs(g[a]!));
    for (const index of order.slice(0, 2)) checks.push({ name: byName(suffix).name, index });
  }
  const eps = 4e-3;
  for (const { name, index } of checks) {
    const p = model.params.find((q) => q.name === name)!;
    const analytic = ((await gpu.read(p.grad)) as Float32Array)[index]!;
    const w = (await gpu.read(p.value)) as Float32Array;
    const at = w[index]!;
    w[index] = at + eps;
    gpu.write(p.value, w);
    const up = await run(false);
    w[index] = at - eps;
    gpu.write(p.value, w);
    const down = await run(false);
    w[index] = at;
    gpu.write(p.value, w);
    const numeric = (up - down) / (2 * eps);
    assert.ok(Math.abs(numeric) > 1e-4, `${name}[${index}]: the finite difference ${numeric} is too small to check`);
    assert.ok(Math.abs(analytic - numeric) <= 0.05 * Math.abs(numeric) + 2e-4, `${name}[${index}]: analytic ${analytic}, finite differences ${numeric}`);
  }
  for (const t of [refIds, ids, targets]) t.dispose();
  model.dispose();
});
