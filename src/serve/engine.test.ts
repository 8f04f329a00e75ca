// the engine's continuous batching against decoding each request alone: requests of other
// lengths, arriving together and more than the slots, give exactly the greedy ids each gets
// alone (infer/generate.ts generate; memory3/read.ts MemoryReader.generate with memory); stops,
// stop strings, max tokens, cancellation, and GPU work slotted between steps.

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Tokenizer, trainTokenizer } from '../data/tokenizer.ts';
import { generate } from '../infer/generate.ts';
import { MemoryBank } from '../memory3/bank.ts';
import { encodeMemory } from '../memory3/blob.ts';
import { MemoryReader } from '../memory3/read.ts';
import { writeMemories } from '../memory3/write.ts';
import { parseModelConfig } from '../model/config.ts';
import { Transformer } from '../model/transformer.ts';
import { testGpu } from '../testing/gpu.ts';
import { Engine, stopAt } from './engine.ts';

const root = await mkdtemp(join(tmpdir(), 'engram-engine-'));
after(() => rm(root, { recursive: true, force: true }));

const FACTS = [
  'The zorblat river flows into the grey sea near the town of Orrim.',
  'Professor Ankerlin keeps seven green parrots in her kitchen in Vellport.',
  'The old lighthouse of Marrow Point was painted red in the year of the storm.',
  'Brindle cheese is made from the milk of mountain goats in Hask.',
];

async function setup(maxSeqLen = 160): Promise<{ tok: Tokenizer; model: Transformer }> {
  const file = join(root, 'train.txt');
  await writeFile(file, `${FACTS.join('\n')}\nReference: Q: Where does the river flow? A: into the sea.\n`);
  const tok = await Tokenizer.fromJson(await trainTokenizer([file], { vocabSize: 300, special: ['<|endoftext|>'] }));
  const gpu = await testGpu();
  const config = parseModelConfig({ vocabSize: tok.vocabSize, dim: 32, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 48, maxSeqLen, tiedEmbeddings: true });
  return { tok, model: await Transformer.create(gpu, config, 11) };
}

test('requests of other lengths decoded together (more than the slots) equal each one decoded alone', async () => {
  const gpu = await testGpu();
  const { tok, model } = await setup();
  const engine = await Engine.create(gpu, model, tok, { slots: 3 });
  try {
    const prompts = [' the river', ' Professor Ankerlin keeps seven green', ' Q:', ' The old lighthouse of Marrow Point was painted', ' milk', ' in the year of the storm, the'].map((t) => Array.from(tok.encode(t)));
    const maxNew = [9, 4, 12, 6, 7, 10];
    const got = await Promise.all(prompts.map((prompt, i) => engine.submit({ prompt, maxNew: maxNew[i]!, temperature: 0 })));
    for (const [i, prompt] of prompts.entries()) {
      const want = await generate(gpu, model, prompt, { maxNew: maxNew[i]!, temperature: 0 });
      assert.deepEqual(got[i]!.ids, want, `request ${i}`);
      assert.equal(got[i]!.finish, 'length');
      assert.equal(got[i]!.promptTokens, prompt.length);
      assert.equal(got[i]!.text, tok.decode(want));
    }
    const st = engine.stats();
    assert.equal(st.requests, 6);
    assert.equal(st.tokens, maxNew.reduce((a, b) => a + b, 0));
    assert.equal(st.active + st.waiting, 0);
    // sampling: a row's generator is its own seed's, whatever else runs beside it
    const alone = await engine.submit({ prompt: prompts[0]!, maxNew: 8, temperature: 1, seed: 5 });
    const beside = await Promise.all([engine.submit({ prompt: prompts[1]!, maxNew: 8, temperature: 1, seed: 9 }), engine.submit({ prompt: prompts[0]!, maxNew: 8, temperature: 1, seed: 5 })]);
    assert.deepEqual(beside[1].ids, alone.ids);
  } finally {
    await engine.close();
    model.dispose();
  }
});

test('stop ids, stop strings, the context end, cancellation and exclusive GPU work', async () => {
  const gpu = await testGpu();
  const { tok, model } = await setup(24);
  const engine = await Engine.create(gpu, model, tok, { slots: 2 });
  try {
    const prompt = Array.from(tok.encode(' the river flows'));
    const free = await engine.submit({ prompt, maxNew: 12, temperature: 0 });
    // a stop id: the first token that occurs in the free run ends the row there, out of the text
    const stopId = free.ids[3]!;
    const k = free.ids.indexOf(stopId);
    const stopped = await engine.submit({ prompt, maxNew: 12, temperature: 0, stopIds: [stopId] });
    assert.deepEqual(stopped.ids, free.ids.slice(0, k + 1));
    assert.equal(stopped.finish, 'stop');
    assert.equal(stopped.text, tok.decode(free.ids.slice(0, k)));
    // a stop string: the text is cut before it
    const text = tok.decode(free.ids);
    const s = text.slice(2, 4);
    const cut = await engine.submit({ prompt, maxNew: 12, temperature: 0, stop: [s, 'never there'] });
    assert.equal(cut.finish, 'stop');
    assert.equal(cut.text, text.slice(0, stopAt(text, [s])));
    // the context (24) ends a row: the prompt and the tokens it generated fill it
    const long = await engine.submit({ prompt, maxNew: 100, temperature: 0 });
    assert.equal(long.finish, 'length');
    assert.equal(prompt.length + long.ids.length, 24 + 1);
    // cancellation: aborted while running, and before it was admitted
    const ac = new AbortController();
    const pending = engine.submit({ prompt, maxNew: 100, temperature: 0, signal: ac.signal, onToken: () => ac.abort() });
    const early = new AbortController();
    early.abort();
    const never = engine.submit({ prompt, maxNew: 5, temperature: 0, signal: early.signal });
    const [c1, c2] = await Promise.all([pending, never]);
    assert.equal(c1.finish, 'cancelled');
    assert.ok(c1.ids.length <= 2);
    assert.equal(c2.finish, 'cancelled');
    assert.deepEqual(c2.ids, []);
    // GPU work between steps while requests run
    const busy = engine.submit({ prompt, maxNew: 8, temperature: 0 });
    const x = await engine.exclusive(async () => (await gpu.read(await gpu.tensorFrom([3, 4], [2], 'f32')))[1]);
    assert.equal(x, 4);
    assert.deepEqual((await busy).ids, free.ids.slice(0, 8));
    await assert.rejects(engine.submit({ prompt: [], maxNew: 3 }), /at least one token/);
    await assert.rejects(engine.submit({ prompt: [99999], maxNew: 3 }), /vocabulary/);
    await assert.rejects(engine.submit({ prompt, maxNew: 0 }), /maxNew/);
    await assert.rejects(engine.submit({ prompt, maxNew: 3, memory: true }), /no memory bank/);
  } finally {
    await engine.close();
    model.dispose();
  }
  await assert.rejects(engine.submit({ prompt: [1], maxNew: 1 }), /shutting down/);
});

test('memory rows: each equals MemoryReader.generate alone, retrieval again after a chunk of new tokens included', async () => {
  const gpu = await testGpu();
  const { tok, model } = await setup(200);
  const layers = [0];
  const bank = await MemoryBank.open(join(root, 'bank'), { create: true, model: { fingerprint: 'test', layers, kvHeads: 2, tokens: 8, headDim: 8, dtype: 'f32' } });
  const written = await writeMemories(gpu, model, tok, FACTS, { layers, dtype: 'f32' });
  await bank.add(written.map((w, i) => ({ id: `f${i}`, text: w.text, tokens: w.tokens, memory: encodeMemory(w.memory) })));
  const o = { topk: 2, chunk: 16 };
  const engine = await Engine.create(gpu, model, tok, { slots: 3, reader: new MemoryReader(gpu, model, tok, bank, o) });
  try {
    const prompts = [' Where does the zorblat river flow?', ' parrots', ' What colour was the lighthouse of Marrow Point painted in the year of the storm? It was'].map((t) => Array.from(tok.encode(t)));
    const chunks: number[] = [0, 0, 0];
    const jobs = prompts.map((prompt, i) => engine.submit({ prompt, maxNew: 20 + 5 * i, temperature: 0, memory: true, onChunk: () => chunks[i]!++ }));
    // a plain request beside them
    const plain = engine.submit({ prompt: prompts[1]!, maxNew: 10, temperature: 0 });
    const got = await Promise.all(jobs);
    for (const [i, prompt] of prompts.entries()) {
      const want = await new MemoryReader(gpu, model, tok, bank, o).generate(prompt, { maxNew: 20 + 5 * i, temperature: 0 });
      assert.deepEqual(got[i]!.ids, want.ids, `request ${i}`);
      assert.deepEqual(got[i]!.chunks.map((c) => c.retrieved.map((h) => h.id)), want.chunks.map((c) => c.retrieved.map((h) => h.id)));
      assert.ok(want.chunks.length >= 2, 'retrieved again while generating');
      assert.equal(chunks[i], want.chunks.length);
    }
    assert.deepEqual((await plain).ids, await generate(gpu, model, prompts[1]!, { maxNew: 10, temperature: 0 }));
  } finally {
    await engine.close();
    bank.close();
    model.dispose();
  }
});
