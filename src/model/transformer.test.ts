// the GPU model against the float64 reference model (reference/llama.ts): the loss and the
// gradient of every parameter, dense blocks and a Memory+ block sharing the value table.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TOL, assertClose } from '../testing/allclose.ts';
import { testGpu } from '../testing/gpu.ts';
import { TINY, tinyWeights } from '../testing/llama.ts';
import { Rng } from '../testing/rng.ts';
import { llamaLossAndGrads } from '../reference/llama.ts';
import { parseModelConfig } from './config.ts';
import { Transformer } from './transformer.ts';

/** the reference's name of a GPU parameter */
function refName(name: string): string {
  const spec: Record<string, string> = {
    'query_proj.weight': 'Wq',
    'query_proj.bias': 'bq',
    keys: 'keys',
    'swilu_projection.weight': 'Ws',
    'swilu_projection.bias': 'bs',
    'value_proj.weight': 'Wo',
    'value_proj.bias': 'bo',
  };
  const m = /^(model\.layers\.\d+)\.mlp\.(.+)$/.exec(name);
  if (m && spec[m[2]!]) return `${m[1]}.memory.${spec[m[2]!]}`;
  return name;
}

test('transformer with a memory block: loss and every gradient match the float64 model', async () => {
  const gpu = await testGpu();
  const mem = TINY.memory!.shape;
  const config = parseModelConfig({
    vocabSize: TINY.vocabSize,
    dim: TINY.dim,
    layers: TINY.layers,
    heads: TINY.heads,
    kvHeads: TINY.kvHeads,
    ffnHidden: TINY.ffnHidden,
    maxSeqLen: 16,
    memory: { layers: TINY.memory!.layers, nKeys: mem.n, heads: mem.H, topk: mem.k, keyDim: mem.dk, valueDtype: 'f32' },
  });
  const model = await Transformer.create(gpu, config, 1);
  const W = tinyWeights(TINY, 3);
  for (const p of model.params) {
    if (p.group === 'values') continue;
    const w = W[refName(p.name)];
    assert.ok(w, `reference weight for ${p.name}`);
    gpu.write(p.value, w);
  }
  assert.equal(model.table!.params.length, 1);
  gpu.write(model.table!.params[0]!.value, W['memory.values']!);
  const [B, T] = [2, 5];
  const rng = new Rng(4);
  const ids = Array.from({ length: B * T }, () => rng.int(TINY.vocabSize));
  const targets = Array.from({ length: B * T }, () => rng.int(TINY.vocabSize));
  const tIds = await gpu.tensorFrom(ids, [B, T], 'u32', 'ids');
  const tTargets = await gpu.tensorFrom(targets, [B, T], 'u32', 'targets');
  const want = llamaLossAndGrads(W, TINY, ids, targets, B, T);
  const loss = await model.forward(tIds, tTargets);
  assertClose('loss', await gpu.read(loss), [want.loss], TOL.f32);
  await model.backward();
  for (const p of model.params) {
    const name = p.group === 'values' ? 'memory.values' : refName(p.name);
    assertClose(`grad ${p.name}`, await gpu.read(p.grad), want.grads[name]!, TOL.f32);
  }
  for (const t of [loss, tIds, tTargets]) t.dispose();
  model.dispose();
  assert.equal(gpu.scratch.outstanding, 0, 'every scratch tensor given back');
});
