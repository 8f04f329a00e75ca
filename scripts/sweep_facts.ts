// issue 5, "does memory beat compute?": five models trained on the same data, tokenizer, batches
// and schedule for the same number of tokens, then asked held-out factual questions.
//
//   node --import tsx scripts/sweep_facts.ts --dir <sweep folder> [--minutes 9] [--runs dense,memory] [--quick]
//       first call only: [--tokens 20e6] [--corpus-mb 8] [--fact-repeats 1] [--batch 16] [--vocab 8192]
//       [--per-relation 10]
//   node --import tsx scripts/sweep_facts.ts --plot bench/results/facts-<device>-<date>.json [<majority file>]
//       redraws a result file's plot (on a machine with fonts), with the majority baseline of a
//       --majority result file when the result file has none
//   node --import tsx scripts/sweep_facts.ts --majority <questions per relation>
//       the no-model baseline: bench/results/facts_majority-none-<date>.json
//
// data: the CLI's corpus (WordNet, Brown, GCIDE when installed, fact statements) with half of the
// askable facts also in a practice question form (buildCorpus `practice`, plan.practice), so the
// models can learn to answer questions; the questions asked are the held-out templates, which
// appear nowhere in training. --fact-repeats n puts the training split's fact lines in n times
// (buildCorpus `factRepeats`): facts are seen n times as often as the rest of the text.
//
// runs, in order: dense (dim 512, 8 blocks); memory (dense with the middle block's FFN a plain
// memory layer: no Ws/Wo gating, out = the read); memory_plus (3 Memory+ layers centred at stride
// L/3); dense_2x and dense_4x (dense, width and depth grown to get close to 2x and 4x dense's
// training FLOPs per token). memory tables 256^2 values (bf16). --quick: dim 32, 2 blocks, a tiny
// table, a 2 MB corpus (the fact statements alone take ~1.3 MB) and a few steps (a smoke run on
// lavapipe; memory_plus gets 2 layers, one per block, as 2 blocks cannot hold 3).
//
// the folder: data/ (corpus, tokenizer, token files: built by the first call with the CLI's
// pipeline), plan.json (the configs, token budget, batch, sequence, lr schedule, questions per
// relation: written by the first call, read by every later one), runs/<run>/ (training
// checkpoints; progress.json: the step of its last checkpoint and the training wall seconds up to
// it; record.json: the finished run's measurements). a run's files are its own, so calls with
// disjoint --runs may work at once, e.g. one process per GPU (scripts/on_gpu.sh); a call with
// --minutes 0 only prepares the folder.
// a call works through its runs in order: it resumes (or starts) the first unfinished one and
// trains until its token budget is reached or the call's minutes are spent (then it saves and
// exits, saying what is left); a run that reaches its budget is evaluated (validation loss from
// its last validation, exact match and token F1 on a fixed, evenly spaced subset of the held-out
// questions, and for memory runs the share of memory slots read on one validation batch) unless
// too little time is left, in which case the next call evaluates it; then the next run. after
// every finished run the result file bench/results/facts-<device>-<date>.json (ENGRAM_BENCH_DIR
// overrides the folder) and its plot (.png beside it: exact match against training FLOPs) are
// rewritten from all the records in the folder.

import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { deviceName, writeResults } from '../bench/lib.ts';
import { flopsPerToken } from '../bench/suites/train.ts';
import { readTokens, writeTokenData } from '../src/cli/commands.ts';
import { buildCorpus } from '../src/data/corpus.ts';
import { loadFacts, questions } from '../src/data/facts.ts';
import { Tokenizer } from '../src/data/tokenizer.ts';
import { evalFacts, majorityBaseline, selectQuestions, type FactsScore } from '../src/eval/facts.ts';
import { Gpu } from '../src/gpu/device.ts';
import { centredLayers, denseConfig, parseModelConfig, type MemoryConfig, type ModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { historyOf, resumeTraining, trainLoop } from '../src/train/loop.ts';
import { AdamW, type OptimizerConfig } from '../src/train/optimizer.ts';
import { scatterPng } from '../src/train/plot.ts';

export const RUNS = ['dense', 'memory', 'memory_plus', 'dense_2x', 'dense_4x'] as const;

/**
 * variants of memory_plus, each changing one thing (what the issue asks to try when Memory+ does
 * not win): how the value table learns (weight decay, which under dense AdamW shrinks every row
 * every step; the values' learning rate, 10x the model's by default), its size, and where the
 * layers sit. same data, batches, schedule and token budget as the five runs; run on request
 * (--runs), never by default.
 */
export const ABLATIONS = {
  memory_plus_wd0: { about: 'no weight decay (against 0.1 on every group: under dense AdamW a value row decays every step, read or not)', opt: { weightDecay: 0 } },
  memory_plus_vlr3e3: { about: 'values learning rate 3e-3 (3x the model lr, against 10x)', opt: { valueLr: 3e-3 } },
  memory_plus_vlr3e2: { about: 'values learning rate 3e-2 (30x the model lr, against 10x)', opt: { valueLr: 3e-2 } },
  memory_plus_keys512: { about: '512^2 values (4x the slots)', memory: { nKeys: 512 } },
  memory_plus_early: { about: 'Memory+ layers in blocks 1,3,5 (against 2,4,6)', memory: { layers: [1, 3, 5] } },
} as const satisfies Record<string, { about: string; opt?: Partial<OptimizerConfig>; memory?: Partial<MemoryConfig> }>;
export type AblationName = keyof typeof ABLATIONS;
export type MainRun = (typeof RUNS)[number];
export type RunName = MainRun | AblationName;
export const ALL_RUNS: readonly RunName[] = [...RUNS, ...(Object.keys(ABLATIONS) as AblationName[])];
const isAblation = (n: string): n is AblationName => n in ABLATIONS;

/** the runs a call works on, in order: the plan's five, then the ablations (configs derived from memory_plus's) */
export function runsOf(plan: Plan): { name: RunName; config: ModelConfig; flopsPerToken: number; opt: Partial<OptimizerConfig> }[] {
  const plus = plan.runs.find((r) => r.name === 'memory_plus')!;
  const ablations = (Object.keys(ABLATIONS) as AblationName[]).map((name) => {
    const a: { memory?: Partial<MemoryConfig>; opt?: Partial<OptimizerConfig> } = ABLATIONS[name];
    const config = a.memory ? parseModelConfig({ ...plus.config, memory: { ...plus.config.memory!, ...a.memory } }) : plus.config;
    return { name, config, flopsPerToken: flopsPerToken(config, plan.seq), opt: a.opt ?? {} };
  });
  return [...plan.runs.map((r) => ({ ...r, opt: {} })), ...ablations];
}

export interface Plan {
  quick: boolean;
  seed: number;
  corpusMb: number;
  /** share of the facts also trained in a practice question form (buildCorpus `practice`) */
  practice: number;
  /** times the training split's fact lines appear (buildCorpus `factRepeats`) */
  factRepeats: number;
  vocab: number;
  /** training tokens of every run: steps x batch x seq (the requested budget rounded up to whole steps) */
  tokens: number;
  batch: number;
  seq: number;
  steps: number;
  lr: number;
  warmup: number;
  minRatio: number;
  evalEvery: number;
  evalBatches: number;
  saveEvery: number;
  /** held-out questions per relation (selectQuestions, evenly spaced) */
  perRelation: number;
  runs: { name: MainRun; config: ModelConfig; flopsPerToken: number }[];
}

export interface RunRecord {
  run: RunName;
  params: number;
  memoryParams: number;
  flopsPerToken: number;
  trainTokens: number;
  trainSeconds: number;
  valLoss: number;
  em: number;
  f1: number;
  questions: number;
  byRelation: Record<string, FactsScore>;
  evalSeconds: number;
  /** memory runs: share of the memory slots read at least once on one validation batch, mean over the memory layers */
  memoryUsage?: number;
  date: string;
}

interface Shape {
  dim: number;
  layers: number;
}

/**
 * the width and depth whose FLOPs per token come closest to `target` x the baseline's (log
 * distance), widths in steps of dimStep (whole kv groups of heads) up to 2.5x, depths up to 4x; among near ties the
 * one that grows width and depth most evenly (a small penalty on their log difference)
 */
export function scaledShape(flops: (s: Shape) => number, base: Shape, dimStep: number, target: number): Shape {
  const f0 = flops(base);
  let best: { s: Shape; cost: number } | null = null;
  for (let dim = base.dim; dim <= 2.5 * base.dim; dim += dimStep) {
    for (let layers = base.layers; layers <= 4 * base.layers; layers++) {
      const s = { dim, layers };
      const cost = Math.abs(Math.log(flops(s) / f0 / target)) + 0.02 * Math.abs(Math.log(layers / base.layers) - Math.log(dim / base.dim));
      if (!best || cost < best.cost) best = { s, cost };
    }
  }
  return best!.s;
}

/** the five models' configs for a tokenizer of `vocab` ids and sequences of `seq` */
export function modelFamily(quick: boolean, vocab: number, seq: number): Record<MainRun, ModelConfig> {
  const base: Shape = quick ? { dim: 32, layers: 2 } : { dim: 512, layers: 8 };
  const fam = { vocabSize: vocab, maxSeqLen: seq, headDim: quick ? 16 : 64, kvGroup: 2, ffnMultiple: quick ? 16 : 64 };
  const dense = denseConfig({ ...fam, ...base });
  const mem = quick
    ? { nKeys: 8, heads: 2, topk: 4, keyDim: 16, valueDtype: 'f32' }
    : { nKeys: 256, heads: 4, topk: 32, keyDim: 256, valueDtype: 'bf16' };
  const plusCount = Math.min(3, base.layers);
  const plusStride = Math.max(1, Math.floor(base.layers / 3));
  const flops = (s: Shape) => flopsPerToken(denseConfig({ ...fam, ...s }), seq);
  return {
    dense,
    memory: parseModelConfig({ ...dense, memory: { ...mem, layers: centredLayers(base.layers, 1, 1), gated: false } }),
    memory_plus: parseModelConfig({ ...dense, memory: { ...mem, layers: centredLayers(base.layers, plusCount, plusStride), gated: true } }),
    dense_2x: denseConfig({ ...fam, ...scaledShape(flops, base, fam.headDim * fam.kvGroup, 2) }),
    dense_4x: denseConfig({ ...fam, ...scaledShape(flops, base, fam.headDim * fam.kvGroup, 4) }),
  };
}

export interface PlanOptions {
  quick: boolean;
  vocab: number;
  tokens?: number;
  corpusMb?: number;
  practice?: number;
  factRepeats?: number;
  batch?: number;
  perRelation?: number;
  seed?: number;
}

/** the sweep's plan for a tokenizer of `o.vocab` ids (the token budget rounded up to whole steps) */
export function makePlan(o: PlanOptions): Plan {
  const q = o.quick;
  const batch = o.batch ?? (q ? 4 : 16);
  const seq = q ? 64 : 256;
  const tokens = o.tokens ?? (q ? 40 * 4 * 64 : 20e6);
  const steps = Math.max(1, Math.ceil(tokens / (batch * seq)));
  const family = modelFamily(q, o.vocab, seq);
  return {
    quick: q,
    seed: o.seed ?? 0,
    corpusMb: o.corpusMb ?? (q ? 2 : 8),
    practice: o.practice ?? 0.5,
    factRepeats: o.factRepeats ?? 1,
    vocab: o.vocab,
    tokens: steps * batch * seq,
    batch,
    seq,
    steps,
    lr: q ? 3e-3 : 1e-3,
    warmup: Math.max(1, Math.round(steps / 25)),
    minRatio: 0.1,
    evalEvery: Math.max(1, Math.round(steps / 10)),
    evalBatches: q ? 2 : 16,
    saveEvery: q ? 0 : 500,
    perRelation: o.perRelation ?? (q ? 1 : 10),
    runs: RUNS.map((name) => ({ name, config: family[name], flopsPerToken: flopsPerToken(family[name], seq) })),
  };
}

/** the result file's metrics: one set per finished run, in run order */
export function metricsOf(records: Partial<Record<RunName, RunRecord>>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const name of ALL_RUNS) {
    const r = records[name];
    if (!r) continue;
    Object.assign(out, {
      [`qa_em_${name}`]: r.em,
      [`qa_f1_${name}`]: r.f1,
      [`flops_per_token_${name}`]: r.flopsPerToken,
      [`params_${name}`]: r.params,
      [`memory_params_${name}`]: r.memoryParams,
      [`val_loss_${name}`]: r.valLoss,
      [`train_tokens_${name}`]: r.trainTokens,
      [`train_seconds_${name}`]: r.trainSeconds,
      ...(r.memoryUsage !== undefined ? { [`memory_usage_${name}`]: r.memoryUsage } : {}),
    });
  }
  return out;
}

export function describe(c: ModelConfig): string {
  const mem = c.memory ? `, ${c.memory.gated ? 'Memory+' : 'plain memory'} in blocks ${c.memory.layers.join(',')} (${c.memory.nKeys}^2 values, ${c.memory.heads} heads, top-${c.memory.topk}, key dim ${c.memory.keyDim}, ${c.memory.valueDtype})` : '';
  return `dim ${c.dim}, ${c.layers} blocks, ${c.heads} heads (${c.kvHeads} kv), SwiGLU ${c.ffnHidden}${mem}`;
}

// ---- the folder ----

function readJson<T>(path: string, dflt: T): T {
  return existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as T) : dflt;
}

/** through path.tmp and a rename: a call killed half-way leaves the previous file whole */
function writeJson(path: string, value: unknown): void {
  writeFileSync(`${path}.tmp`, JSON.stringify(value, null, 1) + '\n');
  renameSync(`${path}.tmp`, path);
}

interface Progress {
  step: number;
  trainSeconds: number;
}

/** data and plan: built by the first call, reused after */
async function preparePlan(dir: string, o: PlanOptions & { vocabRequest: number }): Promise<Plan> {
  const planPath = join(dir, 'plan.json');
  if (existsSync(planPath)) {
    const plan = readJson<Plan>(planPath, null as unknown as Plan);
    plan.factRepeats ??= 1;
    for (const r of plan.runs) r.config = parseModelConfig(r.config);
    if (plan.quick !== o.quick) console.log(`note: ${planPath} is a ${plan.quick ? '--quick' : 'full'} plan; it is used as it is`);
    return plan;
  }
  const data = join(dir, 'data');
  const corpusMb = o.corpusMb ?? (o.quick ? 2 : 8);
  const corpus = buildCorpus({ maxBytes: Math.round(corpusMb * 2 ** 20), seed: o.seed ?? 0, practice: o.practice ?? 0.5, factRepeats: o.factRepeats ?? 1 });
  console.log(`corpus: ${(corpus.bytes / 2 ** 20).toFixed(2)} MB, ${corpus.train.length} train / ${corpus.val.length} validation documents (${Object.entries(corpus.counts).map(([k, v]) => `${k} ${v}`).join(', ')})`);
  const tok = await writeTokenData(data, corpus, o.vocabRequest);
  const plan = makePlan({ ...o, corpusMb, vocab: tok.vocabSize });
  writeJson(planPath, plan);
  return plan;
}

/** the finished runs' records in the folder (runs/<run>/record.json) */
function readRecords(dir: string): Partial<Record<RunName, RunRecord>> {
  const out: Partial<Record<RunName, RunRecord>> = {};
  for (const name of ALL_RUNS) {
    const r = readJson<RunRecord | null>(join(dir, 'runs', name, 'record.json'), null);
    if (r) out[name] = r;
  }
  return out;
}

// ---- one call ----

interface Args {
  dir: string;
  minutes: number;
  quick: boolean;
  runs: RunName[];
  tokens?: number;
  corpusMb?: number;
  factRepeats?: number;
  batch?: number;
  vocab: number;
  perRelation?: number;
}

function parse(argv: string[]): Args {
  const { values } = parseArgs({
    args: argv,
    options: {
      dir: { type: 'string' },
      minutes: { type: 'string' },
      runs: { type: 'string' },
      quick: { type: 'boolean' },
      'fact-repeats': { type: 'string' },
      batch: { type: 'string' },
      tokens: { type: 'string' },
      'corpus-mb': { type: 'string' },
      vocab: { type: 'string' },
      'per-relation': { type: 'string' },
    },
    strict: true,
  });
  if (!values.dir) throw new Error('usage: node --import tsx scripts/sweep_facts.ts --dir <sweep folder> [--minutes 9] [--runs dense,memory,...] [--quick] [--tokens 20e6] [--corpus-mb 8] [--fact-repeats 1] [--batch 16] [--vocab 8192] [--per-relation 10]');
  const num = (k: string, v: string | undefined, zeroOk = false): number | undefined => {
    if (v === undefined) return undefined;
    const x = Number(v);
    if (!(Number.isFinite(x) && (x > 0 || (zeroOk && x === 0)))) throw new Error(`--${k}: expected a ${zeroOk ? 'non-negative' : 'positive'} number, got '${v}'`);
    return x;
  };
  const runs = (values.runs ?? RUNS.join(',')).split(',').filter(Boolean);
  const unknown = runs.filter((r) => !(ALL_RUNS as readonly string[]).includes(r));
  if (unknown.length > 0 || runs.length === 0) throw new Error(`--runs: ${unknown.length ? `unknown run ${unknown.join(', ')}` : 'no runs'}; the runs are ${RUNS.join(', ')} and the ablations ${Object.keys(ABLATIONS).join(', ')}`);
  const int = (k: string, v: string | undefined) => {
    const x = num(k, v);
    if (x !== undefined && !Number.isInteger(x)) throw new Error(`--${k}: expected a whole number, got '${v}'`);
    return x;
  };
  const quick = values.quick ?? false;
  return {
    dir: values.dir,
    minutes: num('minutes', values.minutes, true) ?? 9,
    quick,
    runs: runs as RunName[],
    vocab: num('vocab', values.vocab) ?? (quick ? 512 : 8192),
    ...(values.tokens !== undefined ? { tokens: num('tokens', values.tokens)! } : {}),
    ...(values['corpus-mb'] !== undefined ? { corpusMb: num('corpus-mb', values['corpus-mb'])! } : {}),
    ...(values['per-relation'] !== undefined ? { perRelation: Math.round(num('per-relation', values['per-relation'])!) } : {}),
    ...(values['fact-repeats'] !== undefined ? { factRepeats: int('fact-repeats', values['fact-repeats'])! } : {}),
    ...(values.batch !== undefined ? { batch: int('batch', values.batch)! } : {}),
  };
}

const lastValLoss = (h: readonly { valLoss?: number }[]): number => [...h].reverse().find((p) => p.valLoss !== undefined)?.valLoss ?? NaN;

async function main(): Promise<void> {
  const plotAt = process.argv.indexOf('--plot');
  if (plotAt > 0 && process.argv[plotAt + 1]) {
    const extra = process.argv[plotAt + 2];
    console.log(`plot: ${await plotResults(process.argv[plotAt + 1]!, extra && !extra.startsWith('--') ? extra : undefined)}`);
    return;
  }
  const majorityAt = process.argv.indexOf('--majority');
  if (majorityAt > 0 && process.argv[majorityAt + 1]) {
    writeMajority(Number(process.argv[majorityAt + 1]));
    return;
  }
  const a = parse(process.argv.slice(2));
  const started = performance.now();
  const deadline = started + a.minutes * 60_000;
  const left = () => (deadline - performance.now()) / 1000;
  mkdirSync(a.dir, { recursive: true });
  const plan = await preparePlan(a.dir, {
    quick: a.quick,
    vocab: a.vocab,
    vocabRequest: a.vocab,
    ...(a.tokens !== undefined ? { tokens: a.tokens } : {}),
    ...(a.corpusMb !== undefined ? { corpusMb: a.corpusMb } : {}),
    ...(a.perRelation !== undefined ? { perRelation: a.perRelation } : {}),
    ...(a.factRepeats !== undefined ? { factRepeats: a.factRepeats } : {}),
    ...(a.batch !== undefined ? { batch: a.batch } : {}),
  });
  if (a.minutes === 0) {
    console.log(`prepared ${a.dir}: data and plan (--minutes 0 trains nothing)`);
    return;
  }
  const base = plan.runs[0]!.flopsPerToken;
  console.log(`plan: ${plan.tokens} training tokens per run (${plan.steps} steps of ${plan.batch} x ${plan.seq}), lr ${plan.lr}, warmup ${plan.warmup}, ${plan.perRelation} questions per relation`);
  for (const r of plan.runs) console.log(`  ${r.name.padEnd(11)} ${(r.flopsPerToken / 1e6).toFixed(2)} MFLOP/token (${(r.flopsPerToken / base).toFixed(2)}x dense): ${describe(r.config)}`);

  const data = join(a.dir, 'data');
  const tokJson = readFileSync(join(data, 'tokenizer.json'), 'utf8');
  const tok = await Tokenizer.fromJson(tokJson);
  const train = readTokens(join(data, 'train.bin'));
  const val = readTokens(join(data, 'val.bin'));
  const pool = questions(loadFacts());
  const qs = selectQuestions(pool, { perRelation: plan.perRelation });
  const majority = majorityBaseline(qs, pool);
  const records = readRecords(a.dir);
  const gpu = await Gpu.create();
  const device = deviceName(gpu);
  console.log(`adapter: ${device}`);
  const command = `node --import tsx scripts/sweep_facts.ts ${process.argv.slice(2).join(' ')}`;
  // seconds an evaluation took (the last one), or a guess: what a call keeps for it after training
  let evalGuess = Math.max(...Object.values(records).map((r) => r.evalSeconds), qs.length * (plan.quick ? 0.5 : 0.05));
  let inProgress = '';
  try {
    for (const { name, config, flopsPerToken: fpt, opt: optOverrides } of runsOf(plan)) {
      if (records[name] || !a.runs.includes(name)) continue;
      if (left() <= 0) {
        inProgress = `${name}: not started`;
        break;
      }
      const runDir = join(a.dir, 'runs', name);
      const progressPath = join(runDir, 'progress.json');
      let progress = readJson<Progress | null>(progressPath, null);
      const optCfg = { lr: plan.lr, ...optOverrides };
      let model: Transformer;
      let opt: AdamW;
      let history: { step: number; valLoss?: number }[] = [];
      if (existsSync(join(runDir, 'trainer.json'))) {
        let files: Record<string, Uint8Array>;
        ({ model, opt, files } = await resumeTraining(gpu, runDir, optCfg));
        history = historyOf(files);
        console.log(`${name}: resuming at step ${opt.step} of ${plan.steps}`);
      } else {
        model = await Transformer.create(gpu, config, plan.seed);
        opt = await AdamW.create(gpu, model.params, optCfg);
        console.log(`${name}: starting, ${plan.steps} steps`);
      }
      try {
        const prior = progress?.trainSeconds ?? 0;
        if (opt.step < plan.steps) {
          const t0 = performance.now();
          let lastLog = t0;
          let rate = 0;
          await trainLoop(gpu, model, opt, { train, val }, {
            steps: plan.steps,
            batch: plan.batch,
            seqLen: plan.seq,
            schedule: { warmup: plan.warmup, steps: plan.steps, minRatio: plan.minRatio },
            seed: plan.seed,
            evalEvery: plan.evalEvery,
            evalBatches: plan.evalBatches,
            dir: runDir,
            saveEvery: plan.saveEvery,
            files: { 'tokenizer.json': tokJson },
            history,
            stop: () => left() <= 0,
            log: (l) => {
              rate = l.tokensPerSecond;
              if (l.valLoss !== undefined) history.push({ step: l.step, valLoss: l.valLoss });
              if (l.saved) {
                progress = { step: l.step, trainSeconds: prior + (performance.now() - t0) / 1000 };
                writeJson(progressPath, progress);
              }
              const now = performance.now();
              if (l.valLoss !== undefined || l.saved || now - lastLog > 30_000) {
                lastLog = now;
                console.log(`${name}: step ${l.step}/${l.steps} loss ${l.loss.toFixed(3)}${l.valLoss !== undefined ? ` val ${l.valLoss.toFixed(3)}` : ''} ${Math.round(l.tokensPerSecond)} tok/s${l.saved ? ' (saved)' : ''}`);
              }
            },
          });
          if (opt.step < plan.steps) {
            const rest = plan.steps - opt.step;
            inProgress = `${name}: step ${opt.step}/${plan.steps} (${((100 * opt.step) / plan.steps).toFixed(1)}% of its tokens), ${progress?.trainSeconds.toFixed(0)} s of training so far`;
            console.log(`time is up: ${inProgress}; ${rest} steps left${rate > 0 ? `, ~${((rest * plan.batch * plan.seq) / rate / 60).toFixed(1)} min at ${Math.round(rate)} tok/s` : ''}`);
            break;
          }
        }
        if (left() < evalGuess) {
          inProgress = `${name}: trained, not yet evaluated`;
          console.log(`${name}: trained; ${Math.max(0, left()).toFixed(0)} s left, an evaluation takes ~${evalGuess.toFixed(0)} s: the next call evaluates it`);
          break;
        }
        const e0 = performance.now();
        const memoryUsage = await slotUsage(gpu, model, val, plan.batch, plan.seq);
        const ev = await evalFacts(gpu, model, tok, qs);
        const evalSeconds = (performance.now() - e0) / 1000;
        evalGuess = evalSeconds;
        const memoryParams = [...model.memoryLayers.flatMap((m) => m.params), ...model.params.filter((p) => p.group === 'values')].reduce((n, p) => n + p.value.size, 0);
        records[name] = {
          run: name,
          params: model.params.reduce((n, p) => n + p.value.size, 0),
          memoryParams,
          flopsPerToken: fpt,
          trainTokens: opt.step * plan.batch * plan.seq,
          trainSeconds: progress?.trainSeconds ?? 0,
          valLoss: lastValLoss(history),
          em: ev.em,
          f1: ev.f1,
          questions: ev.n,
          byRelation: ev.byRelation,
          evalSeconds,
          ...(memoryUsage !== undefined ? { memoryUsage } : {}),
          date: new Date().toISOString(),
        };
        writeJson(join(runDir, 'record.json'), records[name]);
        const r = records[name];
        console.log(`${name}: done: val loss ${r.valLoss.toFixed(3)}, EM ${(100 * r.em).toFixed(1)}%, F1 ${(100 * r.f1).toFixed(1)}% on ${r.questions} questions (${evalSeconds.toFixed(0)} s), ${r.trainSeconds.toFixed(0)} s of training${memoryUsage !== undefined ? `, ${(100 * memoryUsage).toFixed(1)}% of memory slots read on a validation batch` : ''}`);
        // the folder's records, this call's and any other process's
        await writeResultFiles(device, plan, readRecords(a.dir), majority, '', command);
      } finally {
        opt.dispose();
        model.dispose();
        gpu.scratch.trim();
      }
    }
    const all = readRecords(a.dir);
    if (inProgress) await writeResultFiles(device, plan, all, majority, inProgress, command);
    const done = RUNS.filter((n) => all[n]);
    const mine = a.runs.filter((n) => !all[n]);
    console.log(`${done.length}/${RUNS.length} of the five runs finished${mine.length ? `; this call's runs left: ${mine.join(', ')}: call again to go on` : ''}`);
  } finally {
    gpu.destroy();
  }
}

/**
 * the share of memory slots read at least once on one validation batch (B x T tokens from the
 * start of val), mean over the model's memory layers; undefined for a dense model
 */
async function slotUsage(gpu: Gpu, model: Transformer, val: Uint32Array, B: number, T: number): Promise<number | undefined> {
  if (model.memoryLayers.length === 0) return undefined;
  const rows = Math.min(B, Math.floor((val.length - 1) / T));
  const ids: number[] = [];
  const targets: number[] = [];
  for (let b = 0; b < rows; b++) for (let t = 0; t < T; t++) {
    ids.push(val[b * T + t]!);
    targets.push(val[b * T + t + 1]!);
  }
  const idsT = await gpu.tensorFrom(ids, [rows, T], 'u32', 'ids');
  const targetsT = await gpu.tensorFrom(targets, [rows, T], 'u32', 'targets');
  try {
    (await model.forward(idsT, targetsT)).dispose();
    let sum = 0;
    for (const m of model.memoryLayers) sum += (await m.stats()).usage;
    return sum / model.memoryLayers.length;
  } finally {
    model.release();
    idsT.dispose();
    targetsT.dispose();
  }
}

/** the result file from all records, and the plot beside it; nothing when no run has finished */
async function writeResultFiles(device: string, plan: Plan, records: Partial<Record<RunName, RunRecord>>, majority: FactsScore, inProgress: string, command: string): Promise<void> {
  const done = ALL_RUNS.filter((n) => records[n]);
  if (done.length === 0) return;
  const base = plan.runs[0]!.flopsPerToken;
  const notes: Record<string, string> = {
    plan: `every run: ${plan.tokens} training tokens (${plan.steps} steps of ${plan.batch} x ${plan.seq}) from the same ${plan.corpusMb} MB corpus (its training fact lines ${plan.factRepeats}x) and ${plan.vocab}-token tokenizer, same batches (seed ${plan.seed}), AdamW lr ${plan.lr} (values 10x), linear warmup ${plan.warmup} steps then linear decay to ${plan.minRatio}x; validation loss over ${plan.evalBatches} fixed batches at the last step; questions: ${plan.perRelation} per relation, evenly spaced (selectQuestions), greedy answers`,
    flops_per_token: 'bench/suites/train.ts flopsPerToken: 6 Nmm + 6 L T d at T = the training sequence length (a plain memory layer has no Ws/Wo projections)',
    ratios: plan.runs.map((r) => `${r.name} ${(r.flopsPerToken / base).toFixed(2)}x`).join(', '),
    train_seconds: 'wall seconds of training steps, validation and checkpoints, summed over the calls (not the evaluation, nor loading)',
    memory_usage: 'memory runs: share of the memory slots read at least once (any weight) on one validation batch, mean over the memory layers',
  };
  for (const r of runsOf(plan)) {
    if (!records[r.name]) continue;
    notes[`config_${r.name}`] = describe(r.config) + (isAblation(r.name) ? `; ablation of memory_plus: ${ABLATIONS[r.name].about}` : '');
  }
  if (inProgress) notes['in_progress'] = inProgress;
  if (plan.quick) notes['quick'] = '--quick: tiny models, corpus and step count on whatever adapter (a smoke run): not the sweep\'s metrics';
  notes['majority'] = 'qa_em_majority, qa_f1_majority: no model; every question answered with its relation\'s most common answer (majorityBaseline in src/eval/facts.ts): what knowing only the answer types scores';
  const path = writeResults('facts', device, { ...metricsOf(records), qa_em_majority: majority.em, qa_f1_majority: majority.f1 }, notes, command);
  const pngPath = await plotResults(path);
  console.log(`results in ${path} and ${pngPath}`);
}

/**
 * `--majority <per relation>`: the majority-answer baseline of the questions a plan with that many
 * questions per relation asks, overall and per relation, printed and written as
 * bench/results/facts_majority-none-<date>.json (no model, no GPU: a statistic of the questions)
 */
function writeMajority(perRelation: number): void {
  if (!(Number.isInteger(perRelation) && perRelation > 0)) throw new Error(`--majority: expected a whole number of questions per relation, got '${perRelation}'`);
  const pool = questions(loadFacts());
  const b = majorityBaseline(selectQuestions(pool, { perRelation }), pool);
  const metrics: Record<string, number> = { qa_em_majority: b.em, qa_f1_majority: b.f1, questions: b.n };
  for (const [r, sc] of Object.entries(b.byRelation)) metrics[`qa_em_majority_${r.replace(/ /g, '_')}`] = sc.em;
  const guesses = Object.fromEntries(Object.keys(b.byRelation).map((r) => [`guess_${r.replace(/ /g, '_')}`, b.items.find((i) => i.relation === r)!.answer]));
  const path = writeResults('facts_majority', 'none', metrics, { about: `no model: each of ${perRelation} questions per relation (selectQuestions) answered with the most common answer of its relation's questions`, ...guesses }, `node --import tsx scripts/sweep_facts.ts --majority ${perRelation}`);
  for (const [r, sc] of Object.entries(b.byRelation)) console.log(`${r.padEnd(18)} ${(100 * sc.em).toFixed(1).padStart(5)}%  (${sc.n} questions, guess '${guesses[`guess_${r.replace(/ /g, '_')}`]}')`);
  console.log(`all                ${(100 * b.em).toFixed(1).padStart(5)}%  (${b.n} questions): ${path}`);
}

/**
 * the plot of a result file (exact match against training FLOPs), written beside it as .png.
 * `--plot <result.json>` redraws it on another machine: resvg draws text with the system's fonts,
 * and a GPU host without fonts gets a plot without labels.
 */
async function plotResults(resultPath: string, majorityPath?: string): Promise<string> {
  const read = (p: string) => (JSON.parse(readFileSync(p, 'utf8')) as { results: Record<string, number> }).results;
  const m: Record<string, number> = { ...(majorityPath ? { qa_em_majority: read(majorityPath)['qa_em_majority']! } : {}), ...read(resultPath) };
  const points = RUNS.filter((n) => m[`qa_em_${n}`] !== undefined).map((n) => ({
    x: m[`train_tokens_${n}`]! * m[`flops_per_token_${n}`]!,
    y: m[`qa_em_${n}`]!,
    label: n,
  }));
  const png = await scatterPng(points, {
    title: `held-out facts: exact match against training FLOPs (${m[`train_tokens_${RUNS[0]}`]} tokens per run)`,
    xTitle: 'training FLOPs (tokens x FLOPs per token)',
    yTitle: 'exact match',
    yDomain: [0, Math.min(1, Math.max(0.05, 1.2 * Math.max(...points.map((p) => p.y), m['qa_em_majority'] ?? 0)))],
    yFormat: '.1~%',
    ...(m['qa_em_majority'] !== undefined ? { rules: [{ y: m['qa_em_majority'], label: 'no model: each relation\'s most common answer' }] } : {}),
  });
  const pngPath = resultPath.replace(/\.json$/, '.png');
  writeFileSync(pngPath, png);
  return pngPath;
}

// run only as a script (the test imports the pure parts)
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e: unknown) => {
    console.error(e);
    process.exit(1);
  });
}
