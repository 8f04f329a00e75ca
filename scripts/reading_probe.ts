// how many steps does a model need to read an invented fact out of its context?
//
//   node --import tsx scripts/reading_probe.ts [--steps 1200] [--docs 40000] [--dim 384] [--layers 6] [--corpus 0]
//
// the explicit suite's models answer held-out facts no better with the facts in their context (RAG)
// than without (BENCHMARKS.md `explicit`), and a model that cannot read its context has nothing to
// bring to reading an explicit memory. this probe trains on reading documents of invented facts
// (data/invented.ts: 6 statements, then 3 questions about them), mixed with `--corpus` bytes (MB) of
// the facts corpus (0: reading documents alone), and asks at 4 points of the run, greedy, exact match:
//   reading_em_context_<step>   200 questions about invented facts never trained on, after their
//                               document's 6 statements (the answer is one of them)
//   reading_em_bare_<step>      the same questions alone (a guess of the answer's type)
// model: the explicit suite's (dim 384, 6 blocks, heads of 64, vocab 8192, batch 32 x 256, AdamW 2e-3)
// unless the options say otherwise. writes bench/results/reading_probe-<device>-<date>.json (a GPU run).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { deviceName, writeResults } from '../bench/lib.ts';
import { readTokens, writeTokenData } from '../src/cli/commands.ts';
import { buildCorpus } from '../src/data/corpus.ts';
import { practice } from '../src/data/facts.ts';
import { inventFacts, readingDocument } from '../src/data/invented.ts';
import { acceptedForms, exactMatch, greedyAnswers } from '../src/eval/facts.ts';
import { Gpu } from '../src/gpu/device.ts';
import { denseConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { Rng } from '../src/testing/rng.ts';
import { trainLoop } from '../src/train/loop.ts';
import { AdamW } from '../src/train/optimizer.ts';

const { values } = parseArgs({
  options: {
    steps: { type: 'string', default: '1200' },
    docs: { type: 'string', default: '40000' },
    dim: { type: 'string', default: '384' },
    layers: { type: 'string', default: '6' },
    corpus: { type: 'string', default: '0' },
    batch: { type: 'string', default: '32' },
  },
});
const [steps, nDocs, dim, layers, corpusMb, B] = [values.steps, values.docs, values.dim, values.layers, values.corpus, values.batch].map(Number) as [number, number, number, number, number, number];
const T = 256;
const gpu = await Gpu.create();
const dir = mkdtempSync(join(tmpdir(), 'engram-reading-'));
const t0 = performance.now();
const log = (m: string) => console.error(`[reading ${((performance.now() - t0) / 1000).toFixed(0)} s] ${m}`);
try {
  const rng = new Rng(3);
  const QUESTIONS = 200;
  const facts = inventFacts(6 * (nDocs + QUESTIONS), rng);
  const docs = Array.from({ length: nDocs }, (_, d) => readingDocument(facts.slice(6 * d, 6 * d + 6), 3, rng));
  const corpus = corpusMb > 0 ? buildCorpus({ maxBytes: corpusMb * 2 ** 20, practice: 0.5, factRepeats: 4, seed: 0 }) : { train: [], val: [] };
  const train = rng.shuffle([...corpus.train, ...docs]);
  const tok = await writeTokenData(join(dir, 'data'), { train, val: docs.slice(0, 100) }, 8192);
  const stream = readTokens(join(dir, 'data', 'train.bin'));
  log(`${nDocs} reading documents${corpusMb > 0 ? ` and ${corpus.train.length} corpus documents` : ''}: ${stream.length} tokens`);
  // the questions: documents of unseen invented facts without their questions, then one question about one of the 6
  const held = facts.slice(6 * nDocs);
  const asked = practice(held);
  const prompts: string[] = [];
  const bare: string[] = [];
  const answers: (typeof asked)[number][] = [];
  for (let i = 0; i < QUESTIONS; i++) {
    const q = asked[6 * i + rng.int(6)]!;
    prompts.push(`${readingDocument(held.slice(6 * i, 6 * i + 6), 0, rng)}\n${q.prompt}`);
    bare.push(q.prompt);
    answers.push(q);
  }
  const config = denseConfig({ vocabSize: tok.vocabSize, dim, layers, maxSeqLen: T });
  const model = await Transformer.create(gpu, config, 0);
  const opt = await AdamW.create(gpu, model.params, { lr: 2e-3 });
  const results: Record<string, number> = { steps, tokens: stream.length };
  const em = async (ps: string[]) => {
    let right = 0;
    for (let i = 0; i < ps.length; i += 25) {
      const got = await greedyAnswers(gpu, model, tok, ps.slice(i, i + 25));
      right += got.reduce((n, x, j) => n + exactMatch(x, acceptedForms(answers[i + j]!)), 0);
    }
    return right / ps.length;
  };
  try {
    for (let k = 1; k <= 4; k++) {
      const s = Math.round((k * steps) / 4);
      await trainLoop(gpu, model, opt, { train: stream }, { steps: s, batch: B, seqLen: T, schedule: { warmup: Math.max(1, Math.round(steps / 25)), steps, minRatio: 0.1 }, evalEvery: 0 });
      results[`reading_em_context_${s}`] = await em(prompts);
      results[`reading_em_bare_${s}`] = await em(bare);
      log(`step ${s}: EM with the document ${results[`reading_em_context_${s}`]!.toFixed(3)}, without ${results[`reading_em_bare_${s}`]!.toFixed(3)}`);
    }
  } finally {
    opt.dispose();
    model.dispose();
  }
  const path = writeResults(
    'reading_probe',
    deviceName(gpu),
    results,
    { task: `${QUESTIONS} questions about invented facts never trained on, after their document's 6 statements / alone; greedy, exact match`, model: `dim ${dim}, ${layers} blocks, heads of 64, batch ${B} x ${T}, AdamW 2e-3` },
    `node --import tsx scripts/reading_probe.ts ${process.argv.slice(2).join(' ')}`.trim(),
  );
  log(`wrote ${path}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
  gpu.destroy();
}
