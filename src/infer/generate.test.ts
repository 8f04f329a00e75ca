// generation: greedy decoding with the KV cache equals greedy decoding that recomputes the whole
// sequence every step (the cache changes nothing but the cost); sampling's options.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseModelConfig } from '../model/config.ts';
import { Transformer } from '../model/transformer.ts';
import { testGpu } from '../testing/gpu.ts';
import { generate, sample } from './generate.ts';

test('greedy generation with the KV cache equals recomputing the sequence each step (with a memory block)', async () => {
  const gpu = await testGpu();
  const config = parseModelConfig({
    vocabSize: 40,
    dim: 16,
    layers: 2,
    heads: 4,
    kvHeads: 2,
    ffnHidden: 24,
    maxSeqLen: 24,
    memory: { layers: [1], nKeys: 6, heads: 2, topk: 3, keyDim: 8, valueDtype: 'f32' },
  });
  const model = await Transformer.create(gpu, config, 11);
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
