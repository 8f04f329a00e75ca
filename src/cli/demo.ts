// `engram demo`: the whole pipeline in one command. builds a fact drill (data/drill.ts) and its
// tokenizer, trains a small memory model on it, then asks it questions, greedy, and scores the
// answers by exact match: questions whose Q/A form was trained (recall) and questions about
// facts it only read as statements (held out). on a CPU (lavapipe) the default takes a few
// minutes; `--gpu` runs a bigger model on more relations for longer.
//
//   engram demo [--out demo] [--gpu] [--steps N] [--max-minutes M] [--seed 0]
//
// everything lands in <out>/data (corpus, tokenizer, token files, questions) and <out>/run (the
// checkpoint, with loss.png); a second run resumes the training where the first stopped.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Question } from '../data/facts.ts';
import { buildDrill } from '../data/drill.ts';
import { answer, openModel, trainCommand, writeTokenData, type TrainArgs } from './commands.ts';

interface Plan {
  relations: string[];
  /** facts drilled (a seeded sample of the relations') */
  facts: number;
  vocab: number;
  config: string;
  steps: number;
  batch: number;
  seq: number;
  lr: number;
  warmup: number;
  /** held-out and taught questions asked (taught ones sampled evenly) */
  ask: number;
}

/** sizes for a 2-core CPU (lavapipe trains the tiny model at a few hundred tokens per second): ~7 minutes of training */
const CPU_PLAN: Plan = { relations: ['capital'], facts: 80, vocab: 1024, config: 'tiny', steps: 520, batch: 8, seq: 64, lr: 3e-3, warmup: 20, ask: 40 };
const GPU_PLAN: Plan = {
  relations: ['capital', 'continent', 'currency', 'symbol', 'atomic number', 'demonym'],
  facts: 2000,
  vocab: 2048,
  config: 'small',
  steps: 3000,
  batch: 32,
  seq: 128,
  lr: 2e-3,
  warmup: 100,
  ask: 200,
};

export interface DemoArgs {
  out: string;
  gpu: boolean;
  steps: number | null;
  maxMinutes: number;
  seed: number;
}

export interface DemoResult {
  /** exact-match shares */
  taught: number;
  heldOut: number;
  /** questions asked */
  asked: { taught: number; heldOut: number };
  /** mean training tokens per second */
  trainTokS: number;
  /** the plan, in words */
  plan: string;
}

export async function demoCommand(a: DemoArgs): Promise<DemoResult> {
  const plan = a.gpu ? GPU_PLAN : CPU_PLAN;
  const t0 = performance.now();
  const data = join(a.out, 'data');
  const run = join(a.out, 'run');

  console.log(`1. data: ${plan.facts} facts of ${plan.relations.join(', ')} (statements, and Q/A for 80% of them)`);
  const drill = buildDrill({ relations: plan.relations, limit: plan.facts, seed: a.seed + 1 });
  await writeTokenData(data, { train: drill.docs, val: drill.val }, plan.vocab);
  writeFileSync(join(data, 'questions.json'), JSON.stringify({ taught: drill.taught, heldOut: drill.heldOut }, null, 1));
  console.log(`   ${drill.taught.length} facts taught with their question, ${drill.heldOut.length} held out (statements only)`);

  console.log(`2. train: the '${plan.config}' model, ${a.steps ?? plan.steps} steps of ${plan.batch} x ${plan.seq} tokens`);
  const train: TrainArgs = {
    data,
    out: run,
    config: plan.config,
    steps: a.steps ?? plan.steps,
    batch: plan.batch,
    seq: plan.seq,
    accum: 1,
    lr: plan.lr,
    warmup: plan.warmup,
    evalEvery: Math.max(1, Math.round((a.steps ?? plan.steps) / 5)),
    saveEvery: Math.max(1, Math.round((a.steps ?? plan.steps) / 4)),
    seed: a.seed,
    maxMinutes: a.maxMinutes,
  };
  const trainTokS = await trainCommand(train);

  console.log('3. ask: greedy answers, exact match');
  const { gpu, model, tok } = await openModel(run);
  const asked = { taught: 0, heldOut: 0 };
  const score = async (qs: Question[], n: number, label: string): Promise<number> => {
    const pick = qs.filter((_, i) => i % Math.max(1, Math.floor(qs.length / n)) === 0).slice(0, n);
    let right = 0;
    for (const [i, q] of pick.entries()) {
      const r = await answer(gpu, model, tok, q);
      if (r.ok) right++;
      if (i < 6) console.log(`   ${r.ok ? '✓' : '✗'} ${q.prompt.replace('\n', ' ')} ${r.text}${r.ok ? '' : `   (expected ${q.answer.trim()})`}`);
    }
    console.log(`   ${label}: ${right}/${pick.length} exact`);
    asked[qs === drill.taught ? 'taught' : 'heldOut'] = pick.length;
    return right / Math.max(1, pick.length);
  };
  try {
    const taught = await score(drill.taught, plan.ask, 'taught (question form trained)');
    const heldOut = await score(drill.heldOut, plan.ask, 'held out (only read as statements)');
    console.log(`done in ${((performance.now() - t0) / 60000).toFixed(1)} min: ${run} (loss curve: ${join(run, 'loss.png')})`);
    const steps = a.steps ?? plan.steps;
    const words = `${plan.facts} facts of ${plan.relations.join(', ')}, vocab ${plan.vocab}, model '${plan.config}', ${steps} steps of ${plan.batch} x ${plan.seq} tokens, lr ${plan.lr}`;
    return { taught, heldOut, asked, trainTokS, plan: words };
  } finally {
    model.dispose();
    gpu.destroy();
  }
}
