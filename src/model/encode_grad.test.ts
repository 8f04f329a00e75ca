// gradients through an explicit memory's encoding: a memory made of a reference's keys and values
// (encodeForward) read by a training forward; backward's memory gradients (TrainMemory.grads) go
// back through the encoding (encodeBackward). checked against central finite differences of the
// whole function (encode, read, loss) on the GPU in f32.

import { test } from 'node:test';
import { checkAgainstFiniteDifferences, largestGradients } from '../testing/finite_diff.ts';
import { testGpu } from '../testing/gpu.ts';
import { Rng } from '../testing/rng.ts';
import { denseConfig } from './config.ts';
import { zeroGrads, type Param } from './param.ts';
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
  const checks: { p: Param; index: number }[] = [];
  const embed = byName('embed_tokens.weight');
  for (let x = 0; x < 3; x++) checks.push({ p: embed, index: 40 * config.dim + 5 * x });
  for (const suffix of ['layers.0.self_attn.k_proj.weight', 'layers.0.self_attn.v_proj.weight', 'layers.1.self_attn.k_proj.weight']) {
    for (const index of await largestGradients(gpu, byName(suffix), 2)) checks.push({ p: byName(suffix), index });
  }
  await checkAgainstFiniteDifferences(gpu, checks, () => run(false), { what: 'encode, read, loss', atLeast: 8 });
  for (const t of [refIds, ids, targets]) t.dispose();
  model.dispose();
});
