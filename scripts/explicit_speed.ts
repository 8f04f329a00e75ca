// where does batched explicit-memory decoding spend its time, against no memory and RAG? (the
// explicit suite's gen_tok_s rows, and the same at the paper's model shape)
//
//   node --import tsx scripts/explicit_speed.ts [--shape=small|paper] [--quick]
//
// shapes (untrained: speed does not depend on the weights; greedy, no stops, so every way makes
// the same number of tokens):
//   small   the explicit suite's model: dim 384, 6 blocks, heads of 64, memory at every block
//           (writes explicit_speed-<device>-<date>.json)
//   paper   Memory³-2.4B's (spec §3): dim 3200, 44 blocks, 40 heads of 80, 8 KV heads, SwiGLU
//           width 3200, memory in blocks 0-21; the vocabulary is this corpus's tokenizer's (8192,
//           not 60416: the reader searches with generated text, which must decode; the paper's LM
//           head would add about 4% to every way's decode FLOPs alike) and embeddings are tied (the
//           paper does not say; the head's FLOPs are the same either way). The paper's speeds
//           (Table 21: 733 tokens/s with retrieval against 501.5 for its nearest RAG peer) are of
//           this shape (writes explicit_speed_paper-<device>-<date>.json)
// batch 32, 128 tokens in (validation text), 128 out, against a bank of 2048 references of 128
// tokens (windows of the training text, bench/rag.ts: the spec's longest reference); each way run
// once for 2 tokens first (pipelines compile), then the ways interleaved, 3 rounds, the median of
// each (tokens/s, all rows' new tokens over the whole run's wall clock, prompt included):
//   tok_s_none        generateBatch (infer/generate.ts)
//   tok_s_wide        generateBatch's loop against a cache made as the reader makes it (room for a
//                     front at every memory block, the context from position prefix + 128) but no front
//   tok_s_front       the same with a front of the reader's size (the sink and 5 memories of 8
//                     rows) of random rows at every memory block: the model's share of explicit
//                     memory's cost, without the reader
//   tok_s_explicit    MemoryReader.generateBatch (memory3/read.ts): 3 retrievals per row (2 prompt
//                     chunks, then after 64 new tokens), no memory cached, loads from the bank on disk
//   tok_s_rag         generateBatch on each row's search's 5 references' text before its 128 tokens
//                     (about 770 tokens in; bench/rag.ts), the search not timed
//   prefill_s_<way>   time to a run's first new token (medians)
//   explicit_decode_s the explicit run's time after its first new token
//   interval_ms_<way>, interval_mean_ms_<way>, interval_max_ms_<way>   the whole runs' decode steps:
//                     the median, mean and longest time between one step's token and the next's
//                     (row 0's tokens, all rounds): a median near the step table's with a larger
//                     mean puts a way's extra time in a few long steps (retrievals, collections)
// and where one decode step's time goes, for none, front and rag, over 32 steps after the prompt
// (medians, milliseconds):
//   step_ms_<way>          a whole step (lastLogits: encode, submit, wait, read back)
//   step_encode_ms_<way>   recording its dispatches on the host (model.logits returning)
//   step_gpu_ms_<way>      its kernels' GPU time (timestamp queries, gpu/profiler.ts: each dispatch in a
//                          pass of its own, so no overlap between them), with the 3 largest in the log
//   readback_ms            an empty round trip: a 4-byte read with nothing else recorded
// timings: a GPU run.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { deviceName, median, writeResults } from '../bench/lib.ts';
import { ragRows, windowTexts } from '../bench/rag.ts';
import { readTokens, writeTokenData } from '../src/cli/commands.ts';
import { buildCorpus } from '../src/data/corpus.ts';
import { Gpu } from '../src/gpu/device.ts';
import { formatProfile, KernelProfiler } from '../src/gpu/profiler.ts';
import { generateBatch, lastLogits, Lockstep } from '../src/infer/generate.ts';
import { writeAndAdd } from '../src/memory3/add.ts';
import { MemoryBank } from '../src/memory3/bank.ts';
import { MemoryReader } from '../src/memory3/read.ts';
import { defaultMemoryLayers } from '../src/memory3/write.ts';
import { denseConfig, parseModelConfig, type ModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { Rng } from '../src/testing/rng.ts';

// --ways=a,b,...: a subset of the ways (default all); --rounds=N (default 3); --parts=0: no step breakdown
// (the paper shape's runs are long: none, explicit and rag over 2 rounds fit a 10-minute command)
const { values } = parseArgs({
  options: { quick: { type: 'boolean', default: false }, shape: { type: 'string', default: 'small' }, ways: { type: 'string', default: 'none,wide,front,explicit,rag' }, rounds: { type: 'string', default: '3' }, parts: { type: 'string', default: '1' } },
});
const { quick, shape } = values;
const rounds = Number(values.rounds);
if (!(Number.isInteger(rounds) && rounds >= 1)) throw new Error(`explicit_speed: --rounds=${values.rounds} is not a whole number >= 1`);
if (shape !== 'small' && shape !== 'paper') throw new Error(`explicit_speed: --shape=${shape} is not a shape: use small (the explicit suite's model) or paper (Memory³-2.4B's)`);
const [vocab, GB, IN, OUT, REF, refCount] = quick ? [1024, 4, 64, 16, 128, 64] : [8192, 32, 128, 128, 128, 2048];
const maxSeqLen = 1024; // RAG's rows: 5 references of up to 128 tokens before 128 in, and 128 out
const configOf = (vocabSize: number): ModelConfig =>
  shape === 'paper'
    ? quick
      ? parseModelConfig({ vocabSize, dim: 320, layers: 4, heads: 4, kvHeads: 2, ffnHidden: 320, maxSeqLen, tiedEmbeddings: true })
      : parseModelConfig({ vocabSize, dim: 3200, layers: 44, heads: 40, kvHeads: 8, ffnHidden: 3200, maxSeqLen, tiedEmbeddings: true })
    : quick
      ? denseConfig({ vocabSize, dim: 64, layers: 2, maxSeqLen, headDim: 16 })
      : denseConfig({ vocabSize, dim: 384, layers: 6, maxSeqLen, headDim: 64 });
const gpu = await Gpu.create();
const dir = mkdtempSync(join(tmpdir(), 'engram-speed-'));
const t0 = performance.now();
const log = (m: string) => console.error(`[speed ${((performance.now() - t0) / 1000).toFixed(0)} s] ${m}`);
try {
  const corpus = buildCorpus({ maxBytes: 2 ** 20, practice: 0.5, seed: 0 });
  const tok = await writeTokenData(join(dir, 'data'), corpus, vocab);
  const [train, val] = [readTokens(join(dir, 'data', 'train.bin')), readTokens(join(dir, 'data', 'val.bin'))];
  const config = configOf(tok.vocabSize);
  const { dim, layers, heads } = config;
  const model = await Transformer.create(gpu, config, 0);
  // memory blocks: the suite's (every block) for small, the spec's first half for paper
  const memLayers = shape === 'paper' ? defaultMemoryLayers(config) : [...Array(layers).keys()];
  const HS = dim / heads;
  const bank = await MemoryBank.open(join(dir, 'bank'), { create: true, model: { fingerprint: `speed-${shape}`, layers: memLayers, kvHeads: config.kvHeads, tokens: 8, headDim: HS, dtype: 'bf16' } });
  const refTexts = windowTexts(tok, train, refCount, REF);
  await writeAndAdd({ gpu, model, tok }, bank, refTexts.map((text, i) => ({ id: `w${i}`, text, where: `window ${i}` })), { batch: 256, deferIndex: true });
  await bank.reindex();
  log(`${shape}: ${model.params.reduce((n, p) => n + p.value.size, 0) / 1e6} M parameters; bank: ${refCount} references of ${REF} tokens`);
  const stride = Math.floor((val.length - IN) / GB);
  const ins = Array.from({ length: GB }, (_, r) => Array.from(val.subarray(r * stride, r * stride + IN)));
  const ragIns = await ragRows(bank, tok, ins, maxSeqLen - OUT);
  // the reader's cache: the sink's rows in front of every block, and 5 memories' more at the memory blocks
  const reader = new MemoryReader(gpu, model, tok, bank);
  const wide = { frontMax: reader.frontRows(), pos0: reader.contextStart() };
  // a cache for `prompts` and `extra` more tokens made with `o` (and, with `fill`, random rows in every front)
  const cacheFor = async (prompts: readonly (readonly number[])[], extra: number, o: { frontMax?: number[]; pos0?: number }, fill: boolean) => {
    const cache = await model.createCache(Math.min(maxSeqLen, prompts[0]!.length + extra), { ...o, batch: GB });
    const r = new Rng(3);
    for (const [l, rows] of (fill ? cache.frontMax : []).entries()) {
      const k = Float32Array.from({ length: GB * rows * config.kvHeads * HS }, () => r.normal());
      await model.setCacheFront(cache, l, k, k.map((x) => x / 2));
    }
    return cache;
  };
  const dispose = (cache: { k: { dispose(): void }[]; v: { dispose(): void }[] }) => {
    for (const t of [...cache.k, ...cache.v]) t.dispose();
  };
  // row 0's token times of the run going on (the first: the prompt's end; intervals between them: the decode steps)
  let ticks: number[] = [];
  const tick = (r: number) => void (r === 0 && ticks.push(performance.now()));
  // generateBatch's loop against a cache made with `o`
  const decode = (o: { frontMax?: number[]; pos0?: number }, fill: boolean) => async (maxNew: number) => {
    const cache = await cacheFor(ins, maxNew, o, fill);
    try {
      const rows = new Lockstep(ins, { maxNew, temperature: 0, onToken: tick });
      let next: readonly (readonly number[])[] = ins;
      while (!rows.done && cache.length + next[0]!.length <= cache.max) next = rows.next(await lastLogits(gpu, model, next, { cache })).map((id) => [id]);
      return rows.out;
    } finally {
      dispose(cache);
    }
  };
  const greedy = { temperature: 0, onToken: tick };
  const ways = {
    none: (maxNew: number) => generateBatch(gpu, model, ins, { maxNew, ...greedy }),
    wide: decode(wide, false),
    front: decode(wide, true),
    explicit: async (maxNew: number) => (await new MemoryReader(gpu, model, tok, bank).generateBatch(ins, { maxNew, ...greedy })).map((x) => x.ids),
    rag: (maxNew: number) => generateBatch(gpu, model, ragIns, { maxNew, ...greedy }),
  };
  type Way = keyof typeof ways;
  const names = values.ways.split(',') as Way[];
  const unknown = names.filter((k) => !(k in ways));
  if (unknown.length > 0) throw new Error(`explicit_speed: --ways names ${unknown.join(', ')}: the ways are ${Object.keys(ways).join(', ')}`);
  for (const k of names) await ways[k](2);
  log(`compiled; RAG rows of ${ragIns[0]!.length} tokens`);
  const perWay = () => Object.fromEntries(names.map((k) => [k, [] as number[]])) as Record<Way, number[]>;
  const [rates, prefills, intervals] = [perWay(), perWay(), perWay()];
  for (let round = 0; round < rounds; round++) {
    for (const k of names) {
      ticks = [];
      const t = performance.now();
      const rows = await ways[k](OUT);
      const s = (performance.now() - t) / 1000;
      rates[k].push(rows.reduce((n, x) => n + x.length, 0) / s);
      prefills[k].push((ticks[0]! - t) / 1000);
      intervals[k].push(...ticks.slice(1).map((x, i) => x - ticks[i]!));
    }
    log(`round ${round + 1}: ${names.map((k) => `${k} ${rates[k].at(-1)!.toFixed(0)}`).join(', ')} tokens/s`);
  }
  const stepTimes: Record<string, number> = {};
  for (const k of names) {
    const xs = intervals[k];
    Object.assign(stepTimes, { [`prefill_s_${k}`]: median(prefills[k]), [`interval_ms_${k}`]: median(xs), [`interval_mean_ms_${k}`]: xs.reduce((a, b) => a + b, 0) / xs.length, [`interval_max_ms_${k}`]: Math.max(...xs) });
  }
  log(`decode steps in the whole runs (median / mean / longest, ms): ${names.map((k) => `${k} ${stepTimes[`interval_ms_${k}`]!.toFixed(1)} / ${stepTimes[`interval_mean_ms_${k}`]!.toFixed(1)} / ${stepTimes[`interval_max_ms_${k}`]!.toFixed(0)}`).join(', ')}`);
  // one step's parts: `steps` decode steps after the prompt, timed piece by piece, per way
  const parts = async (prompts: number[][], o: { frontMax?: number[]; pos0?: number }, fill: boolean, steps = 32) => {
    const cache = await cacheFor(prompts, 2 * steps + 2, o, fill);
    try {
      await lastLogits(gpu, model, prompts, { cache });
      const next = prompts.map((x) => [x[x.length - 1]!]);
      const whole: number[] = [];
      const encode: number[] = [];
      for (let s = 0; s < steps; s++) {
        const t = performance.now();
        const ids = await gpu.tensorFrom(new Uint32Array(next.flat()), [GB, 1], 'u32', 'ids');
        const logits = await model.logits(ids, cache);
        encode.push(performance.now() - t);
        await gpu.readRanges(logits.buffer, next.map((_, b) => ({ offset: logits.offset + b * config.vocabSize * 4, size: config.vocabSize * 4 })));
        whole.push(performance.now() - t);
        logits.dispose();
        ids.dispose();
      }
      const prof = KernelProfiler.attach(gpu);
      for (let s = 0; s < 8; s++) {
        const ids = await gpu.tensorFrom(new Uint32Array(next.flat()), [GB, 1], 'u32', 'ids');
        const logits = await model.logits(ids, cache);
        await gpu.readRanges(logits.buffer, [{ offset: logits.offset, size: 4 }]);
        logits.dispose();
        ids.dispose();
      }
      const table = await prof.report();
      return { step: median(whole), encode: median(encode), gpu: table.reduce((n, x) => n + x.ms, 0) / 8, table };
    } finally {
      dispose(cache);
    }
  };
  const breakdown: Record<string, number> = {};
  for (const [way, prompts, o, fill] of values.parts === '0' ? [] : ([['none', ins, {}, false], ['front', ins, wide, true], ['rag', ragIns, {}, false]] as const)) {
    const x = await parts(prompts as number[][], o, fill);
    Object.assign(breakdown, { [`step_ms_${way}`]: x.step, [`step_encode_ms_${way}`]: x.encode, [`step_gpu_ms_${way}`]: x.gpu });
    log(`${way}: step ${x.step.toFixed(2)} ms, encode ${x.encode.toFixed(2)} ms, kernels ${x.gpu.toFixed(2)} ms per step\n${formatProfile(x.table.slice(0, 3))}`);
  }
  const tiny = await gpu.tensorFrom([1], [1], 'f32', 'tiny');
  const trips: number[] = [];
  for (let i = 0; i < 50; i++) {
    const t = performance.now();
    await gpu.read(tiny);
    trips.push(performance.now() - t);
  }
  tiny.dispose();
  breakdown['readback_ms'] = median(trips);
  const results: Record<string, number> = { ...Object.fromEntries(names.map((k) => [`tok_s_${k}`, median(rates[k])])), ...stepTimes, ...breakdown };
  if (names.includes('explicit')) results['explicit_decode_s'] = (GB * OUT) / results['tok_s_explicit']! - results['prefill_s_explicit']!;
  log(JSON.stringify(results));
  bank.close();
  model.dispose();
  const setup = `${shape} shape: dim ${dim}, ${layers} blocks, ${heads} heads of ${HS}, ${config.kvHeads} KV heads, SwiGLU ${config.ffnHidden}, vocabulary ${config.vocabSize} (untrained); memory blocks ${memLayers[0]}-${memLayers.at(-1)}; batch ${GB}, ${IN} in, ${OUT} out, greedy; ways ${names.join(', ')}, ${rounds} rounds; a bank of ${refCount} references of ${REF} tokens; RAG ${ragIns[0]!.length} tokens in; front: the reader's rows (${wide.frontMax.join(', ')}) of random values`;
  const suite = shape === 'paper' ? 'explicit_speed_paper' : 'explicit_speed';
  const path = writeResults(suite, deviceName(gpu), results, { setup }, `node --import tsx scripts/explicit_speed.ts ${process.argv.slice(2).join(' ')}`.trim());
  log(`wrote ${path}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
  gpu.destroy();
}
