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

/** three blocks, one of them a memory block, vocab 40, 16 positions */
const SMALL = parseModelConfig({
  vocabSize: 40,
  dim: 16,
  layers: 3,
  heads: 4,
  kvHeads: 2,
  ffnHidden: 24,
  maxSeqLen: 16,
  memory: { layers: [1], nKeys: 6, heads: 2, topk: 3, keyDim: 8, valueDtype: 'f32' },
});

test('attentionInputs: the listed blocks only; k and v are what the KV cache stores; k0 = k at position 0 (RoPE is the identity there)', async () => {
  const gpu = await testGpu();
  const config = SMALL;
  const model = await Transformer.create(gpu, config, 3);
  const seq = [5, 9, 1, 33, 12, 7, 20];
  const ids = await gpu.tensorFrom(seq, [1, seq.length], 'u32', 'ids');
  const cache = await model.createCache(8);
  try {
    const seen: number[] = [];
    const got = new Map<number, { q0: Float32Array; k0: Float32Array; k: Float32Array; v: Float32Array }>();
    await model.attentionInputs(ids, [2, 0], async (layer, t) => {
      seen.push(layer);
      assert.deepEqual([t.q0.shape, t.k0.shape, t.k.shape, t.v.shape], [[1, 7, 4, 4], [1, 7, 2, 4], [1, 7, 2, 4], [1, 7, 2, 4]]);
      got.set(layer, { q0: (await gpu.read(t.q0)) as Float32Array, k0: (await gpu.read(t.k0)) as Float32Array, k: (await gpu.read(t.k)) as Float32Array, v: (await gpu.read(t.v)) as Float32Array });
    });
    assert.deepEqual(seen, [0, 2]);
    (await model.logits(ids, cache)).dispose();
    const row = 2 * 4;
    for (const layer of [0, 2]) {
      const g = got.get(layer)!;
      const ck = ((await gpu.read(cache.k[layer]!)) as Float32Array).subarray(0, 7 * row);
      const cv = ((await gpu.read(cache.v[layer]!)) as Float32Array).subarray(0, 7 * row);
      assertClose(`k ${layer}`, g.k, ck, TOL.f32);
      assertClose(`v ${layer}`, g.v, cv, TOL.f32);
      assertClose(`k0 = k at position 0, block ${layer}`, g.k0.subarray(0, row), g.k.subarray(0, row), TOL.f32);
    }
    await assert.rejects(model.attentionInputs(ids, [3], async () => {}), /layer 3 is not in 0\.\.2/);
    assert.equal(gpu.scratch.outstanding, 0);
  } finally {
    ids.dispose();
    for (const t of [...cache.k, ...cache.v]) t.dispose();
    model.dispose();
  }
});

test('a cache front holding a prefix\'s keys and values gives the logits of the prefix in the sequence; a front of another size moves the context intact', async () => {
  const gpu = await testGpu();
  const config = SMALL;
  const model = await Transformer.create(gpu, config, 4);
  const prefix = [7, 3, 30];
  const ctx = [5, 9, 1, 33, 12];
  const all = await gpu.tensorFrom([...prefix, ...ctx], [1, 8], 'u32', 'all');
  const pre = await gpu.tensorFrom(prefix, [1, 3], 'u32', 'prefix');
  const cache = await model.createCache(8, { frontMax: [4, 4, 4], pos0: prefix.length });
  try {
    const read = async (t: Promise<import('../gpu/tensor.ts').Tensor>) => {
      const x = await t;
      const out = (await gpu.read(x)) as Float32Array;
      x.dispose();
      return out;
    };
    const full = await read(model.logits(all));
    const fronts: { k: Float32Array; v: Float32Array }[] = [];
    await model.attentionInputs(pre, [0, 1, 2], async (_l, t) => {
      fronts.push({ k: (await gpu.read(t.k)) as Float32Array, v: (await gpu.read(t.v)) as Float32Array });
    });
    for (const [l, f] of fronts.entries()) await model.setCacheFront(cache, l, f.k, f.v);
    const ids = await gpu.tensorFrom(ctx, [1, 5], 'u32', 'ctx');
    const got = await read(model.logits(ids, cache));
    assertClose('logits with the prefix in the front', got, full.subarray(3 * 40), TOL.f32);
    // one more token, alone (a decode step: decodeAttention over the front and the context)
    const longer = await gpu.tensorFrom([...prefix, ...ctx, 21], [1, 9], 'u32', 'longer');
    const next = await gpu.tensorFrom([21], [1, 1], 'u32', 'next');
    const step = await read(model.logits(next, cache));
    assertClose('a decode step after the front', step, (await read(model.logits(longer))).subarray(8 * 40), TOL.f32);
    for (const x of [longer, next]) x.dispose();
    // another front size: the 6 context rows move behind it unchanged
    const before = ((await gpu.read(cache.k[2]!)) as Float32Array).slice(3 * 8, 9 * 8);
    await model.setCacheFront(cache, 2, fronts[2]!.k.subarray(0, 8), fronts[2]!.v.subarray(0, 8));
    const after = ((await gpu.read(cache.k[2]!)) as Float32Array).slice(1 * 8, 7 * 8);
    assert.deepEqual(after, before);
    assert.deepEqual(cache.front, [3, 3, 1]);
    await assert.rejects(model.setCacheFront(cache, 0, new Float32Array(5 * 8), new Float32Array(5 * 8)), /5 front rows for block 0, which has room for 4/);
    await assert.rejects(model.createCache(8, { pos0: 300 }), /passes the RoPE table/);
    ids.dispose();
  } finally {
    for (const t of [all, pre, ...cache.k, ...cache.v]) t.dispose();
    model.dispose();
  }
});

test('training with explicit memory: a prefix\'s keys and values as every block\'s memory give the loss of the prefix in the sequence; backward runs', async () => {
  const gpu = await testGpu();
  const config = parseModelConfig({ vocabSize: 40, dim: 16, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 24, maxSeqLen: 16 });
  const model = await Transformer.create(gpu, config, 6);
  const prefix = [7, 3, 30];
  const seq = [5, 9, 1, 33, 12, 7, 20, 2];
  const tgt = [9, 1, 33, 12, 7, 20, 2, 11];
  const IGNORE = 0xffffffff;
  const tensors: import('../gpu/tensor.ts').Tensor[] = [];
  const t = async (v: number[], shape: number[]) => {
    const x = await gpu.tensorFrom(v, shape, 'u32', 'ids');
    tensors.push(x);
    return x;
  };
  try {
    // the plain model on [prefix, seq], scoring only seq's targets
    const whole = await model.forward(await t([...prefix, ...seq], [1, 11]), await t([IGNORE, IGNORE, IGNORE, ...tgt], [1, 11]));
    const want = ((await gpu.read(whole)) as Float32Array)[0]!;
    whole.dispose();
    model.release();
    // the prefix's keys and values per block, as memory shared by the one chunk (chunk = the sequence) and as a shared prefix
    const kv: { k: Float32Array; v: Float32Array }[] = [];
    await model.attentionInputs(await t(prefix, [1, 3]), [0, 1], async (_l, a) => {
      kv.push({ k: (await gpu.read(a.k)) as Float32Array, v: (await gpu.read(a.v)) as Float32Array });
    });
    for (const chunk of [0, 8]) {
      const blocks = [];
      for (const x of kv) {
        const k = await gpu.tensorFrom(x.k, [1, 3, 2, 4], 'f32', 'mem_k');
        const v = await gpu.tensorFrom(x.v, [1, 3, 2, 4], 'f32', 'mem_v');
        tensors.push(k, v);
        blocks.push({ k, v, chunk });
      }
      const loss = await model.forward(await t(seq, [1, 8]), await t(tgt, [1, 8]), { blocks, pos0: prefix.length });
      const got = ((await gpu.read(loss)) as Float32Array)[0]!;
      loss.dispose();
      assert.ok(Math.abs(got - want) < 1e-5 * Math.max(1, Math.abs(want)), `chunk ${chunk}: ${got} vs ${want}`);
      for (const p of model.params) gpu.write(p.grad, new Float32Array(p.grad.size));
      await model.backward();
      const g = (await gpu.read(model.params.find((p) => p.name.endsWith('q'))?.grad ?? model.params[1]!.grad)) as Float32Array;
      assert.ok(g.every(Number.isFinite) && g.some((x) => x !== 0));
    }
    assert.equal(gpu.scratch.outstanding, 0);
  } finally {
    for (const x of tensors) x.dispose();
    model.dispose();
  }
});
