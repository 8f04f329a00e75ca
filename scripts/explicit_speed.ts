// where does batched explicit-memory decoding spend its time? (the explicit suite's gen_tok_s rows)
//
//   node --import tsx scripts/explicit_speed.ts [--quick]
//
// the explicit suite's model (dim 384, 6 blocks, heads of 64, untrained: speed does not depend on
// the weights) and a bank of every fact's statement; batch 32, 128 tokens in (validation text), 128
// out, greedy, no stops; each way run once for 2 tokens first (pipelines compile), then the ways
// interleaved, 3 rounds, the median of each (tokens/s):
//   tok_s_none        generateBatch (infer/generate.ts)
//   tok_s_wide        generateBatch's loop against a cache made as the reader makes it (room for a
//                     front at every block, the context from position prefix + 128) but no front
//   tok_s_front       the same with a front of the reader's size (the sink and 5 memories of 8
//                     rows) of random rows at every block: the model's share of explicit memory's
//                     cost, without the reader
//   tok_s_explicit    MemoryReader.generateBatch (memory3/read.ts)
//   explicit_prefill_s, explicit_decode_s   the explicit run's time to its first new token, and after
//   interval_ms_<way>, interval_mean_ms_<way>, interval_max_ms_<way>   the whole runs' decode steps:
//                     the median, mean and longest time between one step's token and the next's
//                     (row 0's tokens, all rounds): a median near the step table's with a larger
//                     mean puts a way's extra time in a few long steps (retrievals, collections)
// and where one decode step's time goes, for none, front and rag (no memory, 64 more context tokens
// per row: RAG's longer rows), over 32 steps from 128 cached tokens (medians, milliseconds):
//   step_ms_<way>          a whole step (lastLogits: encode, submit, wait, read back)
//   step_encode_ms_<way>   recording its dispatches on the host (model.logits returning)
//   step_gpu_ms_<way>      its kernels' GPU time (timestamp queries, gpu/profiler.ts: each dispatch in a
//                          pass of its own, so no overlap between them), with the 3 largest in the log
//   readback_ms            an empty round trip: a 4-byte read with nothing else recorded
// writes bench/results/explicit_speed-<device>-<date>.json (timings: a GPU run).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { deviceName, median, writeResults } from '../bench/lib.ts';
import { readTokens, writeTokenData } from '../src/cli/commands.ts';
import { buildCorpus } from '../src/data/corpus.ts';
import { loadFacts, statements } from '../src/data/facts.ts';
import { Gpu } from '../src/gpu/device.ts';
import { formatProfile, KernelProfiler } from '../src/gpu/profiler.ts';
import { generateBatch, lastLogits, Lockstep } from '../src/infer/generate.ts';
import { MemoryBank } from '../src/memory3/bank.ts';
import { encodeMemory } from '../src/memory3/blob.ts';
import { MemoryReader } from '../src/memory3/read.ts';
import { referenceTokens, writeMemories } from '../src/memory3/write.ts';
import { denseConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { Rng } from '../src/testing/rng.ts';

const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false } } });
const quick = values.quick;
const [dim, layers, vocab, GB, IN, OUT] = quick ? [64, 2, 1024, 4, 64, 16] : [384, 6, 8192, 32, 128, 128];
const gpu = await Gpu.create();
const dir = mkdtempSync(join(tmpdir(), 'engram-speed-'));
const t0 = performance.now();
const log = (m: string) => console.error(`[speed ${((performance.now() - t0) / 1000).toFixed(0)} s] ${m}`);
try {
  const corpus = buildCorpus({ maxBytes: 2 ** 20, practice: 0.5, seed: 0 });
  const tok = await writeTokenData(join(dir, 'data'), corpus, vocab);
  const val = readTokens(join(dir, 'data', 'val.bin'));
  const config = denseConfig({ vocabSize: tok.vocabSize, dim, layers, maxSeqLen: 512, headDim: dim > 64 ? 64 : dim / 4 });
  const heads = config.heads;
  const model = await Transformer.create(gpu, config, 0);
  const memLayers = [...Array(layers).keys()];
  const bank = await MemoryBank.open(join(dir, 'bank'), { create: true, model: { fingerprint: 'speed', layers: memLayers, kvHeads: config.kvHeads, tokens: 8, headDim: dim / heads, dtype: 'bf16' } });
  const rng = new Rng(7);
  const texts = loadFacts().map((f) => statements(f, () => rng.next())[0]!).filter((t) => referenceTokens(tok, t).tokens.length >= 8);
  for (let i = 0; i < texts.length; i += 256) {
    const written = await writeMemories(gpu, model, tok, texts.slice(i, i + 256), { layers: memLayers, batch: 256 });
    await bank.add(written.map((w, j) => ({ id: `r${i + j}`, text: w.text, tokens: w.tokens, memory: encodeMemory(w.memory) })), { deferIndex: true });
  }
  await bank.reindex();
  log(`bank: ${texts.length} references`);
  const stride = Math.floor((val.length - IN) / GB);
  const ins = Array.from({ length: GB }, (_, r) => Array.from(val.subarray(r * stride, r * stride + IN)));
  const p = referenceTokens(tok, '').prefix.length;
  const frontRows = p + 5 * 8;
  const HS = dim / heads;
  // generateBatch's loop against a cache made with `o` (and, with `fill`, a random front of the reader's size at every block)
  // row 0's token times of the run going on (intervals between them: the decode steps)
  let ticks: number[] = [];
  const tick = (r: number) => void (r === 0 && ticks.push(performance.now()));
  const decode = (o: { frontMax?: number[]; pos0?: number }, fill: boolean) => async (maxNew: number) => {
    const cache = await model.createCache(Math.min(config.maxSeqLen, IN + maxNew), { ...o, batch: GB });
    try {
      const r = new Rng(3);
      for (const l of fill ? memLayers : []) {
        const k = Float32Array.from({ length: GB * frontRows * config.kvHeads * HS }, () => r.normal());
        await model.setCacheFront(cache, l, k, k.map((x) => x / 2));
      }
      const rows = new Lockstep(ins, { maxNew, temperature: 0, onToken: tick });
      let next: readonly (readonly number[])[] = ins;
      while (!rows.done && cache.length + next[0]!.length <= cache.max) next = rows.next(await lastLogits(gpu, model, next, { cache })).map((id) => [id]);
      return rows.out;
    } finally {
      for (const t of [...cache.k, ...cache.v]) t.dispose();
    }
  };
  const wide = { frontMax: memLayers.map(() => frontRows), pos0: p + 128 };
  let prefill = 0;
  const explicit = async (maxNew: number) => {
    const t = performance.now();
    let first = 0;
    const rows = await new MemoryReader(gpu, model, tok, bank).generateBatch(ins, {
      maxNew,
      temperature: 0,
      onToken: (r) => {
        first ||= performance.now();
        tick(r);
      },
    });
    prefill = ((first || performance.now()) - t) / 1000;
    return rows.map((x) => x.ids);
  };
  const ways = { none: (n: number) => generateBatch(gpu, model, ins, { maxNew: n, temperature: 0, onToken: tick }), wide: decode(wide, false), front: decode(wide, true), explicit };
  for (const f of Object.values(ways)) await f(2);
  const rates: Record<string, number[]> = { none: [], wide: [], front: [], explicit: [] };
  const prefills: number[] = [];
  const intervals: Record<string, number[]> = { none: [], wide: [], front: [], explicit: [] };
  for (let round = 0; round < 3; round++) {
    for (const [k, f] of Object.entries(ways)) {
      ticks = [];
      const t = performance.now();
      const rows = await f(OUT);
      const s = (performance.now() - t) / 1000;
      rates[k]!.push(rows.reduce((n, x) => n + x.length, 0) / s);
      if (k === 'explicit') prefills.push(prefill);
      intervals[k]!.push(...ticks.slice(1).map((x, i) => x - ticks[i]!));
    }
  }
  const stepTimes: Record<string, number> = {};
  for (const [k, xs] of Object.entries(intervals)) {
    Object.assign(stepTimes, { [`interval_ms_${k}`]: median(xs), [`interval_mean_ms_${k}`]: xs.reduce((a, b) => a + b, 0) / xs.length, [`interval_max_ms_${k}`]: Math.max(...xs) });
  }
  log(`decode steps in the whole runs (median / mean / longest, ms): ${Object.keys(intervals).map((k) => `${k} ${stepTimes[`interval_ms_${k}`]!.toFixed(1)} / ${stepTimes[`interval_mean_ms_${k}`]!.toFixed(1)} / ${stepTimes[`interval_max_ms_${k}`]!.toFixed(0)}`).join(', ')}`);
  // one step's parts: `steps` decode steps after the prompt, timed piece by piece, per way
  const parts = async (prompts: number[][], o: { frontMax?: number[]; pos0?: number }, fill: boolean, steps = 32) => {
    const cache = await model.createCache(Math.min(config.maxSeqLen, prompts[0]!.length + 2 * steps + 2), { ...o, batch: GB });
    try {
      const r = new Rng(3);
      for (const l of fill ? memLayers : []) {
        const k = Float32Array.from({ length: GB * frontRows * config.kvHeads * HS }, () => r.normal());
        await model.setCacheFront(cache, l, k, k.map((x) => x / 2));
      }
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
      for (const t of [...cache.k, ...cache.v]) t.dispose();
    }
  };
  const ragLike = ins.map((x, r) => [...Array.from(val.subarray(r * stride + IN, r * stride + IN + 64)), ...x]);
  const breakdown: Record<string, number> = {};
  for (const [way, prompts, o, fill] of [['none', ins, {}, false], ['front', ins, wide, true], ['rag', ragLike, {}, false]] as const) {
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
  const results = { tok_s_none: median(rates['none']!), tok_s_wide: median(rates['wide']!), tok_s_front: median(rates['front']!), tok_s_explicit: median(rates['explicit']!), explicit_prefill_s: median(prefills), ...stepTimes, ...breakdown };
  const run = (GB * OUT) / results.tok_s_explicit;
  Object.assign(results, { explicit_decode_s: run - results.explicit_prefill_s });
  log(JSON.stringify(results));
  bank.close();
  model.dispose();
  const path = writeResults('explicit_speed', deviceName(gpu), results, { setup: `dim ${dim}, ${layers} blocks (untrained), batch ${GB}, ${IN} in, ${OUT} out, greedy; ${texts.length} references; front: ${frontRows} random rows at every block` }, `node --import tsx scripts/explicit_speed.ts ${process.argv.slice(2).join(' ')}`.trim());
  log(`wrote ${path}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
  gpu.destroy();
}
