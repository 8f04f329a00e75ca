// the commands behind `engram data | train | generate | ask`: corpus and tokens, training with a
// progress line and checkpoints, streaming generation, and factual questions against a model.

import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import { buildCorpus, writeCorpus } from '../data/corpus.ts';
import { loadFacts, questions, type Question } from '../data/facts.ts';
import { Tokenizer, trainTokenizer } from '../data/tokenizer.ts';
import { generate } from '../infer/generate.ts';
import { greedyAnswer } from '../eval/facts.ts';
import { loadModel } from '../model/checkpoint.ts';
import { parseModelConfig, type ModelConfig } from '../model/config.ts';
import type { ValueSharding } from '../model/sharded_values.ts';
import { Transformer } from '../model/transformer.ts';
import { historyOf, resumeTraining, trainLoop } from '../train/loop.ts';
import type { CurvePoint } from '../train/plot.ts';
import { optimizerFor, type Optimizer } from '../train/trainer.ts';
import { TrainProgress } from './progress.ts';
import { openTrainGpus, shardPlacement, type ValueGpuArgs } from './value_gpus.ts';
import { planRetrievalParallel } from '../memory3/plan_parallel.ts';
import { MemoryBatcher } from '../memory3/train.ts';
import { referenceTokens } from '../memory3/write.ts';

const EOT = '<|endoftext|>';

/** `engram data`: corpus text, a tokenizer trained on it, token files and held-out questions */
export async function dataCommand(o: { out: string; maxMb: number; vocab: number; seed: number; practice?: number; reading?: number; readingGroup?: number }): Promise<void> {
  const t0 = performance.now();
  const corpus = buildCorpus({ maxBytes: Math.round(o.maxMb * 2 ** 20), seed: o.seed, practice: o.practice ?? 0, reading: o.reading ?? 0, readingGroup: o.readingGroup ?? 1 });
  console.log(`corpus: ${(corpus.bytes / 2 ** 20).toFixed(1)} MB, ${corpus.train.length} train / ${corpus.val.length} validation documents (${Object.entries(corpus.counts).map(([k, v]) => `${k} ${v}`).join(', ')})`);
  await writeTokenData(o.out, corpus, o.vocab);
  writeFileSync(join(o.out, 'questions.json'), JSON.stringify(questions(loadFacts()), null, 1));
  if (corpus.practised.length) writeFileSync(join(o.out, 'practised.json'), JSON.stringify(corpus.practised, null, 1));
  console.log(`data in ${o.out} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
}

/** train.txt / val.txt, a byte-level BPE tokenizer trained on train.txt, and the token files train.bin / val.bin (u32, documents ended by EOT) */
export async function writeTokenData(dir: string, docs: { train: string[]; val: string[] }, vocab: number): Promise<Tokenizer> {
  mkdirSync(dir, { recursive: true });
  const files = await writeCorpus(dir, docs);
  const json = await trainTokenizer([files.train], { vocabSize: vocab, special: [EOT] });
  writeFileSync(join(dir, 'tokenizer.json'), json);
  const tok = await Tokenizer.fromJson(json);
  for (const [split, list] of [['train', docs.train], ['val', docs.val]] as const) {
    const ids = encodeDocuments(tok, list);
    writeFileSync(join(dir, `${split}.bin`), new Uint8Array(ids.buffer));
    console.log(`${split}.bin: ${ids.length} tokens`);
  }
  return tok;
}

/** documents as one token stream, each ended by EOT (as train.bin holds them); `starts`, when given, gets each document's first token's index */
export function encodeDocuments(tok: Tokenizer, docs: readonly string[], starts?: number[]): Uint32Array {
  const eot = tok.tokenId(EOT);
  if (eot === undefined) throw new EngramError(`the tokenizer has no ${EOT} token: train it with writeTokenData`);
  const ids: number[] = [];
  for (const d of docs) {
    starts?.push(ids.length);
    for (const id of tok.encode(d)) ids.push(id);
    ids.push(eot);
  }
  return Uint32Array.from(ids);
}

/** a token file that writeTokenData wrote (u32 ids) */
export function readTokens(path: string): Uint32Array {
  if (!existsSync(path)) throw new EngramError(`${path} is missing: run 'engram data' first`);
  const b = readFileSync(path);
  return new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

/** model sizes the CLI knows by name; a JSON file gives any other */
export const PRESETS: Record<string, (vocab: number) => unknown> = {
  // a few minutes on a 2-core CPU (lavapipe): 4 blocks, one Memory+ layer in the middle
  tiny: (vocab) => ({
    vocabSize: vocab,
    dim: 128,
    layers: 4,
    heads: 4,
    kvHeads: 2,
    ffnHidden: 344,
    maxSeqLen: 128,
    memory: { layers: [2], nKeys: 64, heads: 4, topk: 8, keyDim: 64, valueDtype: 'f32' },
  }),
  // the GPU demo: 6 blocks of 384, one Memory+ layer (128^2 slots) in the middle
  small: (vocab) => ({
    vocabSize: vocab,
    dim: 384,
    layers: 6,
    heads: 6,
    kvHeads: 2,
    ffnHidden: 1024,
    maxSeqLen: 256,
    memory: { layers: [3], nKeys: 128, heads: 4, topk: 16, keyDim: 192, valueDtype: 'f32' },
  }),
  // a GPU run: 12 blocks of 768, three Memory+ layers (256^2 values) centred at stride 4
  base: (vocab) => ({
    vocabSize: vocab,
    dim: 768,
    layers: 12,
    heads: 12,
    kvHeads: 4,
    ffnHidden: 2048,
    maxSeqLen: 1024,
    memory: { count: 3, stride: 4, nKeys: 256, heads: 4, topk: 32, keyDim: 384, valueDtype: 'bf16' },
  }),
};

export interface TrainArgs extends ValueGpuArgs {
  data: string;
  out: string;
  config: string;
  steps: number;
  batch: number;
  seq: number;
  accum: number;
  lr: number;
  warmup: number;
  evalEvery: number;
  saveEvery: number;
  seed: number;
  /** stop (saving a checkpoint) after this many minutes of training; 0: no limit */
  maxMinutes?: number;
  /** start from this checkpoint's weights (a warmed-up model) instead of `config` */
  init?: string;
  /**
   * Memory³'s second stage: every 64-token chunk reads explicit memories of references from this
   * knowledge base (a text file, one reference per line), encoded on the fly (memory3/train.ts)
   */
  memoryKb?: string;
  /** memories per chunk (own + previous chunks' references; default 5) and tokens kept per head (default 8) */
  memoryWindow?: number;
  /** each chunk reads its own best memoryWindow references (MemoryBatcher own) */
  memoryOwn?: boolean;
  /**
   * gradients through the references' encoding (MemoryBatcher gradient); default: on for a dense model
   * (memoryGradientDefault), where BENCHMARKS.md `explicit` measured it reading its memories far better
   */
  memoryGradient?: boolean;
  memoryTokens?: number;
}

/** `engram train`: trains (or resumes) into `out`, with a progress bar; returns the mean training tokens per second */
export async function trainCommand(a: TrainArgs): Promise<number> {
  const tokJson = readFileSync(join(a.data, 'tokenizer.json'), 'utf8');
  const tok = await Tokenizer.fromJson(tokJson);
  const train = readTokens(join(a.data, 'train.bin'));
  const val = readTokens(join(a.data, 'val.bin'));
  const { gpu, sharding, all } = await openTrainGpus(a);
  let run: Awaited<ReturnType<typeof startRun>> | undefined;
  try {
    console.log(`adapter: ${gpu.adapterName}`);
    run = await startRun(gpu, a, tokJson, tok.vocabSize, sharding);
    const { model, opt } = run;
    const params = model.params.reduce((n, p) => n + p.value.size, 0);
    console.log(`model: ${(params / 1e6).toFixed(2)} M parameters, ${model.memoryLayers.length} memory layers; ${train.length} training tokens`);
    for (const line of shardPlacement(model)) console.log(line);
    const mem = a.memoryKb ? await memoryBatches(gpu, model, tok, train, val, a) : undefined;
    const progress = new TrainProgress({ total: a.steps, start: opt.step });
    const started = performance.now();
    let stop = false;
    const onInt = () => {
      stop = true;
      progress.message('stopping: saving a checkpoint after this step (Ctrl-C again to quit at once)');
      process.once('SIGINT', () => process.exit(130));
    };
    process.once('SIGINT', onInt);
    let tokS = 0;
    try {
      await trainLoop(gpu, model, opt, { train, val }, {
        steps: a.steps,
        batch: a.batch,
        seqLen: a.seq,
        accum: a.accum,
        schedule: { warmup: a.warmup, steps: a.steps, minRatio: 0.1 },
        seed: a.seed,
        evalEvery: a.evalEvery,
        dir: a.out,
        saveEvery: a.saveEvery,
        files: { 'tokenizer.json': tokJson },
        history: run.history,
        ...(mem ? { batches: mem.train, ...(mem.val ? { valBatches: mem.val } : {}) } : {}),
        stop: () => stop || (a.maxMinutes !== undefined && a.maxMinutes > 0 && performance.now() - started > a.maxMinutes * 60000),
        log: (l) => {
          tokS = l.tokensPerSecond;
          progress.update(l);
        },
      });
    } finally {
      progress.stop();
      process.removeListener('SIGINT', onInt);
    }
    return tokS;
  } finally {
    run?.opt.dispose();
    run?.model.dispose();
    for (const g of all) g.destroy();
  }
}

/** the run's model and optimizer: resumed from `out`, started from --init's weights, or new from the config */
async function startRun(
  gpu: Gpu,
  a: TrainArgs,
  tokJson: string,
  vocabSize: number,
  shard: ValueSharding,
): Promise<{ model: Transformer; opt: Optimizer; history: CurvePoint[] }> {
  if (existsSync(join(a.out, 'trainer.json'))) {
    const { model, opt, files } = await resumeTraining(gpu, a.out, { lr: a.lr }, shard);
    console.log(`resuming ${a.out} at step ${opt.step}`);
    return { model, opt, history: historyOf(files) };
  }
  let model: Transformer;
  if (a.init) {
    const { model: m, files } = await loadModel(gpu, a.init, shard);
    model = m;
    const tj = files['tokenizer.json'];
    if (tj && new TextDecoder().decode(tj) !== tokJson) {
      model.dispose();
      throw new EngramError(`--init ${a.init} was trained with another tokenizer than ${a.data}'s`);
    }
    console.log(`starting from ${a.init}`);
  } else {
    const preset = PRESETS[a.config];
    const json: unknown = preset ? preset(vocabSize) : JSON.parse(readFileSync(a.config, 'utf8'));
    const config: ModelConfig = parseModelConfig(json);
    if (config.vocabSize !== vocabSize) throw new EngramError(`config vocabSize ${config.vocabSize} differs from the tokenizer's ${vocabSize}`);
    model = await Transformer.create(gpu, config, a.seed, shard);
  }
  try {
    return { model, opt: await optimizerFor(gpu, model, { lr: a.lr }), history: [] };
  } catch (e) {
    model.dispose();
    throw e;
  }
}

/**
 * Memory³ stage 2's default for gradients through the references' encoding: on where the model can take
 * them (every block dense: the encoding's backward runs through every block, whose sink rows take gradients
 * too), off with Memory+ blocks (the paper's training, memories constants of the step)
 */
export function memoryGradientDefault(model: Transformer): boolean {
  return !model.blocks.some((b) => b.memory);
}

/**
 * Memory³'s second stage for `engram train --memory-kb`: the knowledge base's references, one per
 * chunk of the training stream (planRetrieval: BM25 over token ids, leaking pairs dropped), and
 * the batches with their memories (MemoryBatcher); validation reads memories the same way, with
 * references planned for the validation stream (none when it is shorter than a sequence)
 */
async function memoryBatches(
  gpu: Gpu,
  model: Transformer,
  tok: Tokenizer,
  train: Uint32Array,
  val: Uint32Array | undefined,
  a: TrainArgs,
): Promise<{ train: (s: number, j: number) => ReturnType<MemoryBatcher['batch']>; val?: (j: number) => ReturnType<MemoryBatcher['batch']> }> {
  const tokens = a.memoryTokens ?? 8;
  const lines = readFileSync(a.memoryKb!, 'utf8').split('\n').map((l) => l.trim()).filter((l) => l !== '');
  const refs = lines.map((l) => referenceTokens(tok, l).tokens).filter((r) => r.length >= tokens);
  if (refs.length === 0) throw new EngramError(`--memory-kb ${a.memoryKb}: no reference of at least ${tokens} tokens`);
  if (a.seq % 64 !== 0) throw new EngramError(`--memory-kb: --seq ${a.seq} must be a whole number of 64-token chunks`);
  const t0 = performance.now();
  const window = a.memoryWindow ?? 5;
  const perChunk = a.memoryOwn ? window : 1;
  const plan = await planRetrievalParallel(train, refs, { chunk: 64, context: a.seq, perChunk });
  const found = plan.reduce((n, r) => n + (r >= 0 ? 1 : 0), 0);
  console.log(`memory: ${refs.length} references (${lines.length - refs.length} too short); ${found} references planned for ${plan.length / perChunk} chunks (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  const gradient = a.memoryGradient ?? memoryGradientDefault(model);
  console.log(`memory: gradients through the references' encoding ${gradient ? 'on' : 'off'}${a.memoryGradient === undefined ? ` (the default for ${gradient ? 'a dense model' : 'a model with Memory+ blocks'})` : ''}`);
  const o = { prefix: referenceTokens(tok, '').prefix, window, tokens, seed: a.seed, own: a.memoryOwn ?? false, gradient };
  const batcher = new MemoryBatcher(gpu, model, refs, plan, o);
  const accum = a.accum;
  const out: Awaited<ReturnType<typeof memoryBatches>> = { train: (s, j) => batcher.batch(train, a.batch, a.seq, s * accum + j) };
  if (val && val.length > a.seq) {
    const vb = new MemoryBatcher(gpu, model, refs, await planRetrievalParallel(val, refs, { chunk: 64, context: a.seq, perChunk }), { ...o, seed: 0x5eed });
    out.val = (j) => vb.batch(val, a.batch, a.seq, j);
  }
  return out;
}

export async function openModel(dir: string): Promise<{ gpu: Gpu; model: Transformer; tok: Tokenizer }> {
  const gpu = await Gpu.create();
  const { model, files } = await loadModel(gpu, dir);
  const tj = files['tokenizer.json'];
  if (!tj) throw new EngramError(`${dir} has no tokenizer.json`);
  return { gpu, model, tok: await Tokenizer.fromJson(new TextDecoder().decode(tj)) };
}

/** `engram generate`: the prompt's continuation, streamed to stdout */
export async function generateCommand(a: { model: string; prompt: string; maxNew: number; temperature: number; topP: number; topK: number; seed: number; stop: string }): Promise<void> {
  const { gpu, model, tok } = await openModel(a.model);
  try {
    process.stdout.write(a.prompt);
    const stream = streamText(tok, a.stop, (t) => process.stdout.write(t));
    const eot = tok.tokenId(EOT);
    await generate(gpu, model, Array.from(tok.encode(a.prompt)), {
      maxNew: a.maxNew,
      temperature: a.temperature,
      topP: a.topP,
      topK: a.topK,
      seed: a.seed,
      ...(eot !== undefined ? { stopIds: [eot] } : {}),
      ...stream.hooks,
    });
    process.stdout.write('\n');
  } finally {
    model.dispose();
    gpu.destroy();
  }
}

/**
 * streams generated ids as text through `write`, up to a stop string (which ends the text and is
 * not written): hooks for generate()'s onToken and shouldStop, and the text so far
 */
export function streamText(tok: Tokenizer, stop: string, write: (s: string) => void): { hooks: { onToken: (id: number) => void; shouldStop: () => boolean }; text: () => string } {
  const ids: number[] = [];
  let text = '';
  let stopped = false;
  return {
    hooks: {
      onToken: (id) => {
        if (stopped) return;
        ids.push(id);
        const now = tok.decode(ids);
        const cut = stop ? now.indexOf(stop) : -1;
        const upto = cut >= 0 ? now.slice(0, cut) : now;
        if (upto.length > text.length) write(upto.slice(text.length));
        text = upto;
        stopped = cut >= 0;
      },
      shouldStop: () => stopped,
    },
    text: () => text,
  };
}

/** the model's greedy answer to a question: its first line, without a final full stop */
export async function answer(gpu: Gpu, model: Transformer, tok: Tokenizer, q: Question): Promise<{ text: string; ok: boolean }> {
  const text = await greedyAnswer(gpu, model, tok, q.prompt, 12);
  return { text, ok: text.toLowerCase() === q.answer.trim().replace(/\.$/, '').toLowerCase() };
}

/** `engram ask`: held-out factual questions, greedy answers, exact-match accuracy */
export async function askCommand(a: { model: string; data: string; n: number }): Promise<number> {
  const qs = JSON.parse(readFileSync(join(a.data, 'questions.json'), 'utf8')) as Question[];
  const { gpu, model, tok } = await openModel(a.model);
  let right = 0;
  try {
    const pick = qs.filter((_, i) => i % Math.max(1, Math.floor(qs.length / a.n)) === 0).slice(0, a.n);
    for (const q of pick) {
      const { text, ok } = await answer(gpu, model, tok, q);
      if (ok) right++;
      console.log(`${ok ? '✓' : '✗'} ${q.prompt.replace(/\n/g, ' ')} ${text}   (expected ${q.answer.trim()})`);
    }
    console.log(`${right}/${pick.length} answered exactly`);
  } finally {
    model.dispose();
    gpu.destroy();
  }
  return right;
}
