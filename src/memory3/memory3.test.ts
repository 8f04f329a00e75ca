// Memory³ end to end on a tiny random model: writing (memsel + gather), the bank, and reading.
//
// the exactness check: when a memory keeps every token of its reference (tokens = the reference's
// length), every block is a memory block and the memories' position range is the reference's
// length, reading a retrieved memory is attention over [prefix, reference, context] at the same
// positions: the reader's greedy continuation must equal the plain model's on that concatenated
// sequence. with the defaults (8 of the tokens, half of the blocks), each chunk must report what
// it retrieved, loaded memories are reused, and an empty bank reads nothing. a lockstep batch
// (generateBatch: one KV cache, per-row fronts and retrieval) equals each row read alone. bf16
// memories laid out on the GPU give the fronts the host builds.

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Tokenizer, trainTokenizer } from '../data/tokenizer.ts';
import { generate } from '../infer/generate.ts';
import { parseModelConfig } from '../model/config.ts';
import { Transformer } from '../model/transformer.ts';
import { TOL, assertClose } from '../testing/allclose.ts';
import { testGpu } from '../testing/gpu.ts';
import { MemoryBank } from './bank.ts';
import { encodeMemory } from './blob.ts';
import { MemoryReader } from './read.ts';
import { defaultMemoryLayers, referenceTokens, writeMemories } from './write.ts';

const root = await mkdtemp(join(tmpdir(), 'engram-memory3-'));
after(() => rm(root, { recursive: true, force: true }));

const FACTS = [
  'The zorblat river flows into the grey sea.',
  'Professor Ankerlin keeps seven green parrots in her kitchen in Vellport.',
  'The old lighthouse of Marrow Point was painted red in the year of the storm.',
];

async function setup(): Promise<{ tok: Tokenizer; model: Transformer }> {
  const file = join(root, 'train.txt');
  await writeFile(file, `${FACTS.join('\n')}\nReference: Q: Where does the river flow? A: into the sea.\n`);
  const tok = await Tokenizer.fromJson(await trainTokenizer([file], { vocabSize: 300, special: ['<|endoftext|>'] }));
  const gpu = await testGpu();
  const config = parseModelConfig({ vocabSize: tok.vocabSize, dim: 32, layers: 4, heads: 4, kvHeads: 2, ffnHidden: 48, maxSeqLen: 96, tiedEmbeddings: true });
  return { tok, model: await Transformer.create(gpu, config, 7) };
}

test('a memory that keeps every token, at every block: reading it equals the model on [prefix, reference, prompt]', async () => {
  const gpu = await testGpu();
  const { tok, model } = await setup();
  try {
    const text = FACTS[0]!;
    const n = referenceTokens(tok, text).tokens.length;
    assert.ok(n >= 8 && n <= 32, `${n} tokens`);
    const layers = [0, 1, 2, 3];
    const [w] = await writeMemories(gpu, model, tok, [text], { layers, tokens: n, dtype: 'f32' });
    // every token kept: each (layer, head) holds each reference position once
    const pre = referenceTokens(tok, text).prefix.length;
    const all = Array.from({ length: n }, (_, i) => pre + i);
    for (let lh = 0; lh < 4 * 2; lh++) assert.deepEqual([...w!.memory.positions.subarray(lh * n, (lh + 1) * n)].sort((a, b) => a - b), all);
    const bank = await MemoryBank.open(join(root, 'exact'), { create: true, model: { fingerprint: 'test', layers, kvHeads: 2, tokens: n, headDim: 8, dtype: 'f32' } });
    await bank.add([{ id: 'river', text, tokens: w!.tokens, memory: encodeMemory(w!.memory) }]);
    const prompt = Array.from(tok.encode(' Where does the zorblat river flow?'));
    const reader = new MemoryReader(gpu, model, tok, bank, { topk: 1, memoryPositions: n });
    const got = await reader.generate(prompt, { maxNew: 6, temperature: 0 });
    assert.deepEqual(got.chunks.map((c) => c.retrieved.map((h) => h.id)), [['river']]);
    const { prefix, tokens } = referenceTokens(tok, text);
    const want = await generate(gpu, model, [...prefix, ...tokens, ...prompt], { maxNew: 6, temperature: 0 });
    assert.deepEqual(got.ids, want);
    bank.close();
  } finally {
    model.dispose();
  }
});

test('sparse memories at the first half of the blocks: retrieval per chunk, the LRU cache reuses loaded memories, an empty bank', async () => {
  const gpu = await testGpu();
  const { tok, model } = await setup();
  try {
    const layers = defaultMemoryLayers(model.config);
    assert.deepEqual(layers, [0, 1]);
    const written = await writeMemories(gpu, model, tok, FACTS, { batch: 2 });
    for (const w of written) {
      assert.equal(w.memory.k.length, 2 * 2 * 8 * 8);
      // selected positions lie in the reference, after the prefix
      const pre = referenceTokens(tok, w.text).prefix.length;
      for (const pos of w.memory.positions) assert.ok(pos >= pre && pos < pre + w.tokens.length, `position ${pos}`);
    }
    const model3 = { fingerprint: 'test', layers, kvHeads: 2, tokens: 8, headDim: 8, dtype: 'bf16' as const };
    const full = await MemoryBank.open(join(root, 'full'), { create: true, model: model3 });
    await full.add(written.map((w, i) => ({ id: `fact${i}`, text: w.text, tokens: w.tokens, memory: encodeMemory(w.memory) })));
    const empty = await MemoryBank.open(join(root, 'empty'), { create: true, model: model3 });
    const prompt = Array.from(tok.encode(' Who keeps seven green parrots in Vellport? And the lighthouse of Marrow Point?'));
    const reader = new MemoryReader(gpu, model, tok, full, { chunk: 8, topk: 2, inspect: true });
    const seen: string[][] = [];
    const withMem = await reader.generate(prompt, { maxNew: 10, temperature: 0, onChunk: (c) => seen.push(c.retrieved.map((h) => h.id)) });
    assert.equal(withMem.chunks.length, Math.ceil(prompt.length / 8) + 1);
    assert.deepEqual(seen, withMem.chunks.map((c) => c.retrieved.map((h) => h.id)));
    assert.ok(withMem.chunks.some((c) => c.retrieved[0]?.id === 'fact1'), JSON.stringify(seen));
    assert.ok(reader.cacheStats().hits > 0);
    // inspection: every chunk's shares of attention, per retrieved reference and the sink, in (0, 1), together below 1 (the rest went to the context)
    for (const c of withMem.chunks) {
      assert.equal(c.attention?.length, c.retrieved.length);
      const shares = [...c.attention!, c.sinkAttention!];
      for (const x of shares) assert.ok(x > 0 && x < 1, JSON.stringify(c));
      assert.ok(shares.reduce((a, b) => a + b, 0) < 1 + 1e-6);
    }
    const without = await new MemoryReader(gpu, model, tok, empty, { chunk: 8, topk: 2 }).generate(prompt, { maxNew: 10, temperature: 0 });
    assert.ok(without.chunks.every((c) => c.retrieved.length === 0));
    assert.equal(without.ids.length, 10);
    await assert.rejects(writeMemories(gpu, model, tok, ['a']), /has \d tokens; a memory keeps 8 per head/);
    full.close();
    empty.close();
    assert.equal(gpu.scratch.outstanding, 0);
  } finally {
    model.dispose();
  }
});

test('a lockstep batch of prompts reads as each prompt alone: the same retrievals, attention shares and tokens', async () => {
  const gpu = await testGpu();
  const { tok, model } = await setup();
  try {
    const layers = defaultMemoryLayers(model.config);
    const written = await writeMemories(gpu, model, tok, FACTS);
    const bank = await MemoryBank.open(join(root, 'batch'), { create: true, model: { fingerprint: 'test', layers, kvHeads: 2, tokens: 8, headDim: 8, dtype: 'bf16' } });
    await bank.add(written.map((w, i) => ({ id: `fact${i}`, text: w.text, tokens: w.tokens, memory: encodeMemory(w.memory) })));
    // every 16-token chunk names words of at least two facts (the search finds topk = 2); fewer new
    // tokens than a chunk (no retrieval with the random model's own text, which may find nothing);
    // whole chunks (a short last one may hold a single word)
    const texts = [' river parrots lighthouse sea kitchen storm river parrots lighthouse sea kitchen storm', ' lighthouse river parrots storm sea Vellport lighthouse river parrots storm sea Vellport', ' parrots sea river lighthouse storm kitchen parrots sea river lighthouse storm kitchen'];
    const L = Math.floor(Math.min(...texts.map((t) => tok.encode(t).length)) / 16) * 16;
    const prompts = texts.map((t) => Array.from(tok.encode(t)).slice(0, L));
    const o = { chunk: 16, topk: 2, inspect: true };
    const batch = await new MemoryReader(gpu, model, tok, bank, o).generateBatch(prompts, { maxNew: 12, temperature: 0 });
    for (const [r, p] of prompts.entries()) {
      const one = await new MemoryReader(gpu, model, tok, bank, o).generate(p, { maxNew: 12, temperature: 0 });
      // equal fronts need every chunk of every row to have found topk references (no zero rows)
      for (const c of batch[r]!.chunks) assert.equal(c.retrieved.length, 2, `row ${r} chunk at ${c.start}: ${c.query}`);
      assert.deepEqual(batch[r]!.ids, one.ids);
      assert.deepEqual(batch[r]!.chunks.map((c) => [c.start, c.end, c.retrieved.map((h) => h.id)]), one.chunks.map((c) => [c.start, c.end, c.retrieved.map((h) => h.id)]));
      batch[r]!.chunks.forEach((c, i) => c.attention!.forEach((x, j) => assert.ok(Math.abs(x - one.chunks[i]!.attention![j]!) < 1e-4, `row ${r} chunk ${i}`)));
    }
    // a memory cache smaller than one step's references loses none of them
    const small = await new MemoryReader(gpu, model, tok, bank, { ...o, cacheSize: 1 }).generateBatch(prompts, { maxNew: 12, temperature: 0 });
    assert.deepEqual(small.map((r) => r.ids), batch.map((r) => r.ids));
    await assert.rejects(new MemoryReader(gpu, model, tok, bank).generateBatch([[1, 2], [3]], { maxNew: 2 }), /every prompt needs the same length/);
    bank.close();
    assert.equal(gpu.scratch.outstanding, 0);
  } finally {
    model.dispose();
  }
});

test('bf16 memories laid out on the GPU give the fronts the host builds: the same cache rows and logits after the prompt, the same tokens', async () => {
  const gpu = await testGpu();
  const { tok, model } = await setup();
  try {
    const layers = defaultMemoryLayers(model.config);
    const written = await writeMemories(gpu, model, tok, FACTS);
    const bank = await MemoryBank.open(join(root, 'onGpu'), { create: true, model: { fingerprint: 'test', layers, kvHeads: 2, tokens: 8, headDim: 8, dtype: 'bf16' } });
    await bank.add(written.map((w, i) => ({ id: `fact${i}`, text: w.text, tokens: w.tokens, memory: encodeMemory(w.memory) })));
    // chunks retrieving one memory and none (the front resized between them, the context moved)
    const prompt = Array.from(tok.encode(' the zorblat river flows where? parrots and the lighthouse of Marrow Point in the storm'));
    const o = { chunk: 8, topk: 2 };
    // inspection builds the fronts on the host
    const [onGpu, onHost] = [new MemoryReader(gpu, model, tok, bank, o), new MemoryReader(gpu, model, tok, bank, { ...o, inspect: true })];
    const [a, b] = [await onGpu.prefill(prompt, prompt.length + 4), await onHost.prefill(prompt, prompt.length + 4)];
    try {
      assert.deepEqual(a.chunks.map((c) => c.retrieved.map((h) => h.id)), b.chunks.map((c) => c.retrieved.map((h) => h.id)));
      assert.ok(new Set(a.chunks.map((c) => c.retrieved.length)).size > 1, 'chunks retrieving different numbers of memories');
      assert.deepEqual(a.cache.front, b.cache.front);
      // the fronts exactly; the context after them closely (a one-token last chunk runs the decode
      // kernel without inspection, the prefill kernel with it)
      for (const l of layers) {
        for (const [x, y] of [[a.cache.k[l]!, b.cache.k[l]!], [a.cache.v[l]!, b.cache.v[l]!]] as const) {
          const [front, rows] = [a.cache.front[l]! * 2 * 8, (a.cache.front[l]! + prompt.length) * 2 * 8];
          const [gx, gy] = [(await gpu.read(x)) as Float32Array, (await gpu.read(y)) as Float32Array];
          assert.deepEqual(gx.subarray(0, front), gy.subarray(0, front), `block ${l}'s front`);
          assertClose(`block ${l}'s context`, gx.subarray(front, rows), gy.subarray(front, rows), TOL.f32);
        }
      }
      assertClose('logits', a.logits, b.logits, TOL.f32);
    } finally {
      for (const t of [...a.cache.k, ...a.cache.v, ...b.cache.k, ...b.cache.v]) t.dispose();
    }
    const gen = async (r: MemoryReader) => (await r.generate(prompt, { maxNew: 10, temperature: 0 })).ids;
    assert.deepEqual(await gen(onGpu), await gen(onHost));
    bank.close();
    assert.equal(gpu.scratch.outstanding, 0);
  } finally {
    model.dispose();
  }
});
