// generation: greedy decoding with the KV cache equals greedy decoding that recomputes the whole
// sequence every step (the cache changes nothing but the cost); sampling's options; batched greedy
// decoding (right-padded, uncached) equals generate() per prompt, with stop ids and maxSeqLen;
// Gpu.readRanges (the batched readback); lockstep batches against one KV cache (generateBatch)
// equal generate() per row, sampled rows included.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseModelConfig } from '../model/config.ts';
import { Transformer } from '../model/transformer.ts';
import { testGpu } from '../testing/gpu.ts';
import { generate, generateBatch, greedyBatch, rng, sample, type SampleOptions } from './generate.ts';

/** a two-block model with a memory block, vocab 40, 24 positions */
const CONFIG = parseModelConfig({
  vocabSize: 40,
  dim: 16,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  ffnHidden: 24,
  maxSeqLen: 24,
  memory: { layers: [1], nKeys: 6, heads: 2, topk: 3, keyDim: 8, valueDtype: 'f32' },
});

test('greedy generation with the KV cache equals recomputing the sequence each step (with a memory block)', async () => {
  const gpu = await testGpu();
  const model = await Transformer.create(gpu, CONFIG, 11);
  const prompt = [3, 17, 5, 9];
  const streamed: number[] = [];
  const fast = await generate(gpu, model, prompt, { maxNew: 8, temperature: 0, onToken: (id) => streamed.push(id) });
  assert.deepEqual(streamed, fast);
  const seq = [...prompt];
  for (let s = 0; s < 8; s++) {
    const ids = await gpu.tensorFrom(seq, [1, seq.length], 'u32', 'ids');
    const logits = await model.logits(ids);
    const last = (await gpu.read(logits)).subarray((seq.length - 1) * 40);
    seq.push(sample(last, { temperature: 0 }, Math.random));
    ids.dispose();
    logits.dispose();
  }
  assert.deepEqual(fast, seq.slice(prompt.length));
  const stopped = await generate(gpu, model, prompt, { maxNew: 8, temperature: 0, stopIds: [fast[2]!] });
  assert.deepEqual(stopped, fast.slice(0, fast.indexOf(fast[2]!) + 1));
  const three = await generate(gpu, model, prompt, { maxNew: 8, temperature: 0, shouldStop: (ids) => ids.length === 3 });
  assert.deepEqual(three, fast.slice(0, 3));
  model.dispose();
  assert.equal(gpu.scratch.outstanding, 0);
});

test('generateBatch: rows decoded in lockstep with one cache equal generate() per row (greedy and sampled, stops, maxSeqLen)', async () => {
  const gpu = await testGpu();
  const model = await Transformer.create(gpu, CONFIG, 12);
  const prompts = [
    [3, 17, 5, 9, 1],
    [8, 8, 2, 30, 7],
    [39, 0, 12, 4, 4],
  ];
  for (const o of [{ maxNew: 9, temperature: 0 }, { maxNew: 7, temperature: 0.9, topK: 10, seed: 5 }]) {
    const one = [];
    for (const [r, p] of prompts.entries()) one.push(await generate(gpu, model, p, { ...o, ...('seed' in o ? { seed: o.seed + r } : {}) }));
    const streamed: number[][] = prompts.map(() => []);
    assert.deepEqual(await generateBatch(gpu, model, prompts, { ...o, onToken: (r, id) => streamed[r]!.push(id) }), one);
    assert.deepEqual(streamed, one);
  }
  // a row that stops early keeps stepping with the others, its tokens dropped
  const full = await generateBatch(gpu, model, prompts, { maxNew: 8, temperature: 0 });
  const stop = full[1]![1]!;
  const stopped = await generateBatch(gpu, model, prompts, { maxNew: 8, temperature: 0, stopIds: [stop], shouldStop: (r, ids) => r === 2 && ids.length === 3 });
  assert.deepEqual(stopped[1], full[1]!.slice(0, full[1]!.indexOf(stop) + 1));
  assert.deepEqual(stopped[2], full[2]!.slice(0, full[2]!.includes(stop) ? Math.min(3, full[2]!.indexOf(stop) + 1) : 3));
  // maxSeqLen (24) bounds every row
  const long = prompts.map((p) => [...p, ...p, ...p, ...p]);
  for (const row of await generateBatch(gpu, model, long, { maxNew: 50, temperature: 0 })) assert.equal(row.length, 24 - 20 + 1);
  await assert.rejects(generateBatch(gpu, model, [[1, 2], [3]], { maxNew: 2 }), /every prompt needs the same length: prompt 0 has 2 tokens, prompt 1 1/);
  model.dispose();
  assert.equal(gpu.scratch.outstanding, 0);
});

test('sampling: greedy, top-k 1, top-p tiny pick the argmax; temperature spreads draws; bad options throw', () => {
  const logits = [0.1, 2, 1.9, -3];
  let i = 0;
  const rand = () => ((i = (i * 7 + 3) % 101), i / 101);
  assert.equal(sample(logits, { temperature: 0 }, rand), 1);
  assert.equal(sample(logits, { topK: 1 }, rand), 1);
  assert.equal(sample(logits, { topP: 1e-6 }, rand), 1);
  const seen = new Set(Array.from({ length: 200 }, () => sample(logits, { temperature: 1, topK: 3 }, rand)));
  assert.deepEqual([...seen].sort(), [0, 1, 2]);
  assert.throws(() => sample(logits, { topP: 0 }, rand), /topP 0/);
});

test('greedyBatch equals generate() greedy per prompt: padding, stop ids, maxSeqLen, rows finishing early', async () => {
  const gpu = await testGpu();
  const model = await Transformer.create(gpu, CONFIG, 11);
  try {
    const tokens = (n: number, seed: number) => Array.from({ length: n }, (_, i) => (seed * 31 + i * 17 + ((i * i) % 7)) % 40);
    // 20 tokens + 6 new would pass maxSeqLen 24: that row stops after 5 (as generate() does); 25 tokens: nothing
    const prompts = [tokens(1, 1), tokens(7, 2), tokens(20, 3), tokens(3, 4), tokens(12, 5), tokens(25, 6)];
    const want: number[][] = [];
    for (const p of prompts) want.push(await generate(gpu, model, p, { maxNew: 6, temperature: 0 }));
    assert.deepEqual(want.map((w) => w.length), [6, 6, 5, 6, 6, 0]);
    const flushes = gpu.flushes;
    assert.deepEqual(await greedyBatch(gpu, model, prompts, { maxNew: 6 }), want);
    // one submit per step for the whole batch (6 here); prompt by prompt it takes 29
    assert.ok(gpu.flushes - flushes < 12, `${gpu.flushes - flushes} submits for 6 batched steps`);

    // a stop id ends each row that produces it, the id included; the others run on
    const stopId = want[1]![1]!;
    const cut = want.map((w) => (w.includes(stopId) ? w.slice(0, w.indexOf(stopId) + 1) : w));
    assert.ok(cut.some((c, i) => c.length < want[i]!.length));
    assert.deepEqual(await greedyBatch(gpu, model, prompts, { maxNew: 6, stopIds: [stopId] }), cut);
    for (const [i, p] of prompts.entries()) assert.deepEqual(await generate(gpu, model, p, { maxNew: 6, temperature: 0, stopIds: [stopId] }), cut[i]);

    assert.deepEqual(await greedyBatch(gpu, model, [], { maxNew: 6 }), []);
    assert.deepEqual(await greedyBatch(gpu, model, prompts.slice(0, 2), { maxNew: 0 }), [[], []]);
    await assert.rejects(greedyBatch(gpu, model, [[1], []], { maxNew: 2 }), /prompt 1 is empty/);
    await assert.rejects(greedyBatch(gpu, model, [[1, 40]], { maxNew: 2 }), /token id 40/);
    assert.equal(gpu.scratch.outstanding, 0);
  } finally {
    model.dispose();
  }
});

test('readRanges: several ranges of a buffer in one readback; misaligned ranges throw', async () => {
  const gpu = await testGpu();
  const t = await gpu.tensorFrom(Array.from({ length: 37 }, (_, i) => i * 1.5), [37], 'f32', 'ranges');
  try {
    const flushes = gpu.flushes;
    const got = await gpu.readRanges(t.buffer, [
      { offset: t.offset + 4 * 30, size: 4 * 7 },
      { offset: t.offset, size: 4 },
      { offset: t.offset + 8, size: 0 },
      { offset: t.offset + 4 * 5, size: 4 * 10 },
    ]);
    assert.equal(gpu.flushes - flushes, 1);
    assert.deepEqual(got.map((b) => [...new Float32Array(b)]), [
      [30, 31, 32, 33, 34, 35, 36].map((i) => i * 1.5),
      [0],
      [],
      [5, 6, 7, 8, 9, 10, 11, 12, 13, 14].map((i) => i * 1.5),
    ]);
    // ranges that continue one another (one copy), twice (the second read reuses the first's staging buffer)
    for (let k = 0; k < 2; k++) {
      const rows = await gpu.readRanges(t.buffer, [0, 1, 2].map((r) => ({ offset: t.offset + 4 * (3 * r + k), size: 12 })));
      assert.deepEqual(rows.map((b) => [...new Float32Array(b)]), [0, 1, 2].map((r) => [0, 1, 2].map((i) => (3 * r + k + i) * 1.5)));
    }
    assert.deepEqual(await gpu.readRanges(t.buffer, []), []);
    await assert.rejects(gpu.readRanges(t.buffer, [{ offset: t.offset + 2, size: 4 }]), /multiples of 4/);
    await assert.rejects(gpu.readRanges(t.buffer, [{ offset: t.offset, size: 6 }]), /multiples of 4/);
  } finally {
    t.dispose();
  }
});

test('sample: each token drawn as often as its probability, with and without a nucleus', () => {
  const logits = [0.5, 2, -1, 1.2, 0, 2, -3];
  const T = 0.7;
  const e = logits.map((l) => Math.exp(l / T));
  const Z = e.reduce((a, b) => a + b, 0);
  const rand = rng(3);
  const N = 40_000;
  const freq = (o: SampleOptions) => {
    const c = logits.map(() => 0);
    for (let i = 0; i < N; i++) c[sample(logits, o, rand)]!++;
    return c.map((x) => x / N);
  };
  freq({ temperature: T }).forEach((f, i) => assert.ok(Math.abs(f - e[i]! / Z) < 0.01, `token ${i}: ${f} vs ${e[i]! / Z}`));
  // top-p 0.6: the two tied logits 2 (ids 1, 5) hold 2 e^(2/T) / Z of it; the nucleus is them and 1.2 if they fall short
  const order = [1, 5, 3, 0, 4, 2, 6];
  let acc = 0;
  const nucleus: number[] = [];
  for (const i of order) {
    nucleus.push(i);
    acc += e[i]! / Z;
    if (acc >= 0.6) break;
  }
  const mass = nucleus.reduce((a, i) => a + e[i]!, 0);
  freq({ temperature: T, topP: 0.6 }).forEach((f, i) => assert.ok(Math.abs(f - (nucleus.includes(i) ? e[i]! / mass : 0)) < 0.01, `top-p token ${i}: ${f}`));
});
