// suite `explicit`: does explicit memory (Memory³) answer facts the model never trained on?
//
//   npm run bench -- explicit [--quick]
//
// one process (or several commands, --save1 then --load1: below): data with a share of the facts held out of the corpus entirely
// (buildCorpus holdOut) and reading documents about invented facts (data/invented.ts), the first
// training stage (no memory), the second (memories of the kept facts' references, of invented
// facts that only the memories state and of counterfactual ones that overrule the weights, asked about in
// the stream; encoded on the fly: memory3/train.ts), a bank of every real fact's reference (a fact card: every statement phrasing of
// the fact; memory3/write.ts, bank.ts), then questions about held-out facts (one right answer each) three ways:
//   qa_em_no_memory      the model alone
//   qa_em_explicit       the model reading the bank's memories (memory3/read.ts; 64-token chunks, top 5)
//   qa_em_rag            the model with the same bank search's 5 references' text before the question
//   retrieval_recall5    how often that search's top 5 holds the question's fact at all
//   qa_em_majority       no model: each question answered with its relation's commonest answer in the corpus
// asked in the practice form (the corpus has questions of that form about other facts); the
// *_new_form metrics ask in the held-out form, a wording the corpus never has; the *_invented ones
// ask about invented facts made after training (new subjects, their statements in the bank only:
// nothing in the corpus hints at their answers, as it can for a real held-out fact). whether the model
// reads its memories at all: stage{1,2}_loss_memory / _other_memory, the loss on the same training
// sequences with their own references and with other chunks', before and after stage 2;
// edit_*: the facts behind the right explicit answers removed from the live bank (asked again:
// edit_em_removed), then added back (edit_em_readded)
// and what memories cost:
//   bytes_per_memory_raw     the whole reference's keys and values at every block and KV head, bf16
//   memory_answer_kept       per held-out fact's memory, the share of (block, KV head) whose kept tokens
//                            include a token of the answer (the token selection's effect on what can be read)
//   bytes_per_memory_sparse  a stored memory (memory3/blob.ts: 8 tokens per KV head at the memory blocks, bf16)
//   bytes_per_memory_vq      the same memory product-quantised (memory3/quantize.ts: 8 bytes per 64-dim vector),
//                            and qa_em_explicit_vq, the practice-form questions read from a bank of those
//   bank_write_refs_s        references written per second (encoding and selection in batches of 256, blobs, bank adds)
//   gen_tok_s_*              generated tokens per second at batch 32, 128 in / 128 out, as the paper
//                            measured (infer/generate.ts generateBatch, MemoryReader.generateBatch), with
//                            a knowledge base of 128-token references (the spec's length) for explicit
//                            and RAG; gen_tok_s_rag_facts: RAG with the fact bank's one-line references
//   gen_bank_s_explicit      seconds of an explicit run's bank work alone (its 3 searches per row and
//                            memory loads), against the run's GB * OUT / gen_tok_s_explicit
// --quick: a tiny model and a few steps (a smoke run on lavapipe: not the suite's figures). the full
// plan takes several 10-minute device commands on an H100: `explicit --save1=DIR` (stage 1: reading a fact
// out of the context appears only after ~2,000 steps, scripts/reading_probe.ts), then stage 2 in parts,
// `explicit --load1=DIR --save2=DIR2 --stop2s=500` (saved with the optimizer after ~500 s of it), and
// the same from DIR2 to DIR3 and so on, until a command's stage 2 ends (the same batches and schedule as
// one run): that one saves it and measures (the logs in BENCHMARKS.md `explicit` give the times). the
// commands that stop before the measurements print their figures but write no result file.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeDocuments, readTokens, writeTokenData } from '../../src/cli/commands.ts';
import { buildCorpus } from '../../src/data/corpus.ts';
import { counterfactualGroups } from '../../src/data/counterfactual.ts';
import { askingDocument } from '../../src/data/invented.ts';
import { factCard, factKey, loadFacts, practice, statements, type Fact, type Question } from '../../src/data/facts.ts';
import { Tokenizer } from '../../src/data/tokenizer.ts';
import { acceptedForms, answerStopIds, answerText, evalFacts, exactMatch, greedyAnswers } from '../../src/eval/facts.ts';
import type { Gpu } from '../../src/gpu/device.ts';
import { generateBatch } from '../../src/infer/generate.ts';
import { writeAndAdd } from '../../src/memory3/add.ts';
import { planRetrievalParallel } from '../../src/memory3/plan_parallel.ts';
import { adjustPlan } from '../../src/memory3/plan_adjust.ts';
import { MemoryBank, type NewReference } from '../../src/memory3/bank.ts';
import { decodeMemory, encodeMemory, type SparseMemory } from '../../src/memory3/blob.ts';
import { quantizeMemories, trainMemoryCodebooks } from '../../src/memory3/quantize.ts';
import { MemoryReader } from '../../src/memory3/read.ts';
import { MemoryBatcher } from '../../src/memory3/train.ts';
import { defaultMemoryLayers, referenceTokens, writeMemories } from '../../src/memory3/write.ts';
import { readCheckpoint } from '../../src/io/checkpoint.ts';
import { loadModel, saveModel } from '../../src/model/checkpoint.ts';
import { denseConfig } from '../../src/model/config.ts';
import { Transformer } from '../../src/model/transformer.ts';
import { Rng } from '../../src/testing/rng.ts';
import { resumeTraining, saveTraining, trainLoop } from '../../src/train/loop.ts';
import { AdamW } from '../../src/train/optimizer.ts';
import { explicitFacts, FACT_PLAN, realGroups } from '../explicit_facts.ts';
import { median } from '../lib.ts';
import { ragPrompt, ragRows, windowTexts } from '../rag.ts';
import type { SuiteOutput } from '../run.ts';

export async function run(gpu: Gpu, args: string[]): Promise<SuiteOutput> {
  const quick = args.includes('--quick');
  // gradient: stage 2 with gradients through the references' encoding (MemoryBatcher gradient; the lookup probe
  // learns far faster with them, and in this suite they lifted explicit reading well above the run without:
  // BENCHMARKS.md `explicit`); --gradient=0 trains as the paper describes, the references encoded without.
  // card: a fact's reference (in stage 2 and in the bank) is its fact card, every statement phrasing of it in
  // one text (data/facts.ts factCard), so that a question's words meet one of them: BM25 finds
  // 0.97 of the questions' facts in its top 5 against 0.76 with one phrasing (`explicit_retrieval`);
  // --card=0: one phrasing per fact. stage2: 1,600 steps; 2,000 read worse (explicit, RAG and no memory
  // alike: BENCHMARKS.md `explicit`). group: each asking document asks about 3 invented facts of one relation
  // (data/invented.ts inventGroups), so its chunks' memories are mostly that relation's cards, as a question's
  // search returns (its words are the relation's): reading must find the asked subject's card among them, not
  // just the relation's (--group=0: 3 facts of any relations, which a reader tells apart by relation alone).
  // readingGroup: stage 1's reading documents state their 6 invented facts as 2 relations' 3 each (corpus.ts
  // readingGroup), which teaches the same in the context (--readingGroup=1: 6 facts of any relations).
  // realAsking: that many asking documents more about real held-out facts that are never asked after training
  // (3 of one relation each, their cards in stage 2's knowledge base): real subjects, whose answers the weights do
  // not hold but often guess (a relation's commonest answer, what the corpus says of the subject), so that reading
  // a memory learns to overrule such a guess, as the questions after training need (default 0: 1,000 of them read
  // no better: BENCHMARKS.md `explicit`, `real_asking`).
  // counterfactual: that many asking documents more about kept facts stated with another object of their
  // relation (data/counterfactual.ts: 3 real subjects of one relation each, a fresh object per draw), each in a
  // card of its own in stage 2's knowledge base that its document's chunks read (not searched: memory3/
  // plan_adjust.ts), and whose subject's true card those chunks do not read: the memory against what the
  // weights hold, the conflict a real held-out subject's question meets. 10,000 took real held-out facts from
  // 0.729 to 0.925 and lowered the model's answers without memory from 0.257 to 0.137 (BENCHMARKS.md
  // `explicit`); --counterfactual=0 trains without them
  const P: { mb: number; vocab: number; dim: number; layers: number; stage1: number; stage2: number; reading: number; allLayers: boolean; own: boolean; gradient: boolean; card: boolean; group: boolean; readingGroup: number; asking: number; realAsking: number; counterfactual: number; corpus2: number; batch: number; seq: number; perRelation: number; lr: number } = quick
    ? { mb: 1.6, vocab: 1024, dim: 64, layers: 4, stage1: 30, stage2: 10, reading: 200, allLayers: true, own: false, gradient: false, card: true, group: true, readingGroup: 3, asking: 100, realAsking: 0, counterfactual: 30, corpus2: 0.5, batch: 4, seq: 128, perRelation: 2, lr: 3e-3 }
    : { ...FACT_PLAN, mb: 2, vocab: 8192, dim: 384, layers: 6, stage1: 3000, stage2: 1600, allLayers: true, own: true, gradient: true, card: true, realAsking: 0, counterfactual: 10000, corpus2: 0.3, batch: 32, seq: 256, lr: 2e-3 };
  // --<key>=<number> overrides a size of the plan (e.g. --stage1=1100 --reading=25000 --mb=2); --no-vq skips the pq bank.
  // --save1=<dir>: stop after stage 1, with the model and tokenizer saved there; --load1=<dir>: take stage 1
  // from such a folder (reading appears late in stage 1, and both stages do not fit one 10-minute device command).
  // --save2=<dir> --stop2=<n>: stop stage 2 after n of its steps, saved with the optimizer; --load1 of that
  // folder goes on from there (the same batches and schedule), so stage 2 can span several commands;
  // --stop2s=<seconds> instead of (or with) --stop2: stop after the first step that ends past that many
  // seconds of stage 2 in this command (a device command's time limit, whatever a step costs). a command
  // whose --save2 run reaches the end of stage 2 saves it and goes on to the measurements, which
  // --load1 of that folder can then repeat without training
  const folder = (k: string) => args.find((a) => a.startsWith(`--${k}=`))?.slice(k.length + 3);
  const [save1, load1, save2, stop2, stop2s] = [folder('save1'), folder('load1'), folder('save2'), folder('stop2'), folder('stop2s')];
  const positive = (x: string | undefined) => x === undefined || (Number.isInteger(Number(x)) && Number(x) > 0);
  if ((save2 === undefined && (stop2 !== undefined || stop2s !== undefined)) || !positive(stop2) || !positive(stop2s)) {
    throw new Error(`explicit: --stop2=<steps> and --stop2s=<seconds> (positive integers) need --save2=<dir> to save the run to (got ${save2 ?? 'no --save2'}, ${stop2 ?? 'no --stop2'}, ${stop2s ?? 'no --stop2s'})`);
  }
  for (const a of args) {
    const m = /^--(\w+)=(.+)$/.exec(a);
    if (!m || ['save1', 'load1', 'save2', 'stop2', 'stop2s'].includes(m[1]!)) continue;
    if (!(m[1]! in P)) throw new Error(`explicit: unknown option ${a}; sizes: ${Object.keys(P).join(', ')}`);
    const x = m[2] === 'true' ? 1 : m[2] === 'false' ? 0 : Number(m[2]);
    if (!Number.isFinite(x)) throw new Error(`explicit: ${a} is not a number`);
    (P as Record<string, number | boolean>)[m[1]!] = typeof P[m[1]! as keyof typeof P] === 'boolean' ? x !== 0 : x;
  }
  const vqOn = !args.includes('--no-vq');
  const dir = mkdtempSync(join(tmpdir(), 'engram-explicit-'));
  const notes: Record<string, string> = {};
  const t0 = performance.now();
  const log = (m: string) => console.error(`[explicit ${((performance.now() - t0) / 1000).toFixed(0)} s] ${m}`);
  try {
    // data: 20% of the facts nowhere in the corpus; reading documents (statements, then questions
    // answered by them: corpus.ts) teach reading a fact out of the context, which an explicit
    // memory (and RAG) needs and fact lines alone never reward
    const corpus = buildCorpus({ maxBytes: P.mb * 2 ** 20, practice: 0.5, holdOut: 0.2, factRepeats: quick ? 1 : 4, reading: P.reading, readingGroup: P.readingGroup, seed: 0 });
    // stage 1 (and part of stage 2) from a folder: its plan must be this one's (the corpus and the model depend on it)
    const loaded = load1 ? await loadStage(gpu, load1, P.lr) : undefined;
    const stage1 = loaded && (JSON.parse(new TextDecoder().decode(loaded.files['stage1.json'])) as { plan: typeof P; note: string });
    const part2 = loaded?.files['stage2.json'] && (JSON.parse(new TextDecoder().decode(loaded.files['stage2.json'])) as Stage2Part);
    const same = ['mb', 'vocab', 'dim', 'layers', 'reading', 'readingGroup', 'seq', 'stage1', ...(part2 ? ['stage2', 'asking', 'corpus2', 'own', 'gradient', 'card', 'group', 'realAsking', 'counterfactual', 'allLayers', 'batch', 'lr'] : [])] as const;
    // a folder from before readingGroup, realAsking or counterfactual was a plan's: 1 (each reading fact's relation drawn alone), 0, 0
    const was = (k: keyof typeof P) => stage1!.plan[k] ?? ({ readingGroup: 1, realAsking: 0, counterfactual: 0 } as Partial<typeof P>)[k];
    const differs = stage1 ? (same as readonly (keyof typeof P)[]).filter((k) => was(k) !== P[k]) : [];
    if (differs.length > 0) throw new Error(`explicit: ${load1} holds a run of another plan (${differs.map((k) => `${k} ${String(was(k))}, not ${String(P[k])}`).join('; ')}): pass the same sizes`);
    const tok = loaded ? await Tokenizer.fromJson(new TextDecoder().decode(loaded.files['tokenizer.json'])) : await writeTokenData(join(dir, 'data'), corpus, P.vocab);
    const tokenizerJson = loaded ? loaded.files['tokenizer.json']! : readFileSync(join(dir, 'data', 'tokenizer.json'));
    log(`data: ${corpus.heldOut.length} facts held out, ${P.reading} reading documents`);
    const train = loaded ? encodeDocuments(tok, corpus.train) : readTokens(join(dir, 'data', 'train.bin'));
    const val = loaded ? encodeDocuments(tok, corpus.val) : readTokens(join(dir, 'data', 'val.bin'));
    // heads of 64 (--quick's dim 64: 4 of 16)
    // maxSeqLen (RoPE's table; training runs P.seq): room for the speed rows' RAG prompts (5
    // references of up to 128 tokens before 128 tokens in, and 128 out)
    const config = denseConfig({ vocabSize: tok.vocabSize, dim: P.dim, layers: P.layers, maxSeqLen: Math.max(2 * P.seq, 1024), headDim: P.dim > 64 ? 64 : P.dim / 4 });
    const model = loaded?.model ?? (await Transformer.create(gpu, config, 0));
    // a loaded stage 1 starts stage 2 with fresh optimizer moments (its folder holds the weights alone); part of stage 2, with its own
    const opt = loaded?.opt ?? (await AdamW.create(gpu, model.params, { lr: P.lr }));
    try {
      // memory blocks: the spec's first half, or every block (P.allLayers): a 6-block model has room in
      // its first 3 for few of the heads that read from the context (they need earlier blocks to
      // compose with), and a memory is read only where its blocks are
      const layers = P.allLayers ? [...Array(config.layers).keys()] : defaultMemoryLayers(config);
      const schedule = (steps: number) => ({ warmup: Math.max(1, Math.round(steps / 25)), steps, minRatio: 0.1 });
      // stage 1: no memory
      const t1 = performance.now();
      if (!stage1) await trainLoop(gpu, model, opt, { train, val }, { steps: P.stage1, batch: P.batch, seqLen: P.seq, schedule: schedule(P.stage1), evalEvery: 0 });
      notes['stage1'] = stage1 ? `${stage1.note} (from ${load1})` : `${P.stage1} steps of ${P.batch} x ${P.seq} (${train.length} tokens), ${((performance.now() - t1) / 1000).toFixed(0)} s`;
      log(`stage 1: ${notes['stage1']}`);
      const stage1Json = JSON.stringify({ plan: P, note: stage1?.note ?? notes['stage1'] });
      if (save1) {
        await saveModel(gpu, save1, model, { 'tokenizer.json': tokenizerJson, 'stage1.json': stage1Json });
        log(`stage 1 saved to ${save1}: go on with --load1=${save1}`);
        return { results: { stage1_steps: P.stage1, stage1_seconds: (performance.now() - t1) / 1000 }, notes, partial: true };
      }
      // stage 2: every chunk reads memories of the kept facts' and invented facts' references
      const heldOut = new Set(corpus.heldOut.map((f) => factKey(f)));
      // a fact's reference: its card (P.card), or one phrasing, the first of at least 8 tokens (a memory keeps 8 tokens per KV head)
      const rng = new Rng(7);
      const phrase = (f: Fact) => {
        if (P.card) return factCard(f, () => rng.next());
        const all = statements(f, () => rng.next());
        return all.find((t) => referenceTokens(tok, t).tokens.length >= 8) ?? all[0]!;
      };
      const all = loadFacts();
      const texts = all.map(phrase);
      const index = new Map(all.map((f, i) => [factKey(f), i]));
      // the questions after training (held-out facts with one right answer among all facts, at most P.perRelation
      // per relation); stage 2's invented facts; the invented facts asked about after training (explicit_facts.ts)
      const { askable, asked, invented, fresh } = explicitFacts(corpus, all, P);
      // P.realAsking: asking documents about the askable held-out facts never asked (see the plan's comment)
      const askedKeys = new Set(asked.map((q) => factKey(q.fact)));
      const real = realGroups(askable.map((q) => q.fact).filter((f) => !askedKeys.has(factKey(f))), P.realAsking, new Rng(23));
      const realFacts = [...new Set(real.flat())];
      const kept = [...all.keys()].filter((i) => !heldOut.has(factKey(all[i]!)));
      // P.counterfactual: asking documents about kept facts with another object (see the plan's comment)
      const counter = counterfactualGroups(kept.map((i) => all[i]!), P.counterfactual, 3, new Rng(29), all);
      const prefix = referenceTokens(tok, '').prefix;
      // stage 2's stream: the corpus's train documents and P.asking asking documents (data/invented.ts):
      // questions and answers about 3 invented facts each, whose statements only the knowledge base holds.
      // a memory of a kept fact tells the model what its weights already know, so only these reward
      // reading a memory (BENCHMARKS.md `explicit`: without them a model learns to ignore its memories).
      // the invented facts asked about after training (fresh) have new subjects, their statements in the bank
      // only. a real held-out fact can be guessed from what the corpus says of its subject's neighbours (a
      // country's language from its continent); these cannot
      const asking = Array.from({ length: P.asking }, (_, d) => askingDocument(invented.slice(3 * d, 3 * d + 3)));
      // and a share (P.corpus2) of the corpus's, so that language modelling goes on (and planning stays short)
      const mix = new Rng(17);
      const docs2 = mix.shuffle<{ text: string; counter?: Fact[] }>([
        ...mix.shuffle([...corpus.train]).slice(0, Math.round(P.corpus2 * corpus.train.length)).map((text) => ({ text })),
        ...[...asking, ...real.map((g) => askingDocument(g))].map((text) => ({ text })),
        ...counter.map((g) => ({ text: askingDocument(g), counter: g })),
      ]);
      const starts: number[] = [];
      const train2 = encodeDocuments(tok, docs2.map((d) => d.text), starts);
      // the knowledge base: kept facts' references, the real held-out facts' of P.realAsking, the invented
      // facts', then the counterfactual facts' (each once), with the fact each states
      const counterFacts = [...new Map(counter.flat().map((f) => [factKey(f), f])).values()];
      const cards = (facts: readonly { fact: Fact; text: string }[]) => facts.map((e) => ({ fact: e.fact, tokens: referenceTokens(tok, e.text).tokens })).filter((e) => e.tokens.length >= 8);
      const searched = cards([
        ...kept.map((i) => ({ fact: all[i]!, text: texts[i]! })),
        ...realFacts.map((f) => ({ fact: f, text: texts[index.get(factKey(f))!]! })),
        ...invented.map((f) => ({ fact: f, text: phrase(f) })),
      ]);
      const entries = [...searched, ...cards(counterFacts.map((f) => ({ fact: f, text: phrase(f) })))];
      const kb = entries.map((e) => e.tokens);
      // P.own: each chunk reads its own 5 best references (MemoryBatcher own), not the paper's 1 + the previous 4 chunks'
      const per = P.own ? 5 : 1;
      const tp = performance.now();
      // the counterfactual cards (last in kb) are not searched: their documents' chunks read them (counterfactualPlan)
      let plan = await planRetrievalParallel(train2, kb.slice(0, searched.length), { chunk: 64, context: P.seq, perChunk: counter.length > 0 ? 2 * per : per });
      if (counter.length > 0) plan = counterfactualPlan(plan, { per, entries: entries.map((e) => e.fact), docs: docs2, starts, stream: train2.length });
      log(`stage 2 stream: ${train2.length} tokens (${P.asking} asking documents${real.length > 0 ? `, ${real.length} more about ${realFacts.length} real held-out facts never asked` : ''}${counter.length > 0 ? `, ${counter.length} about ${counterFacts.length} counterfactual facts` : ''}), ${kb.length} references, planned in ${((performance.now() - tp) / 1000).toFixed(1)} s`);
      const batcher = new MemoryBatcher(gpu, model, kb, plan, { prefix, layers, seed: 1, own: P.own, gradient: P.gradient });
      // does the model read its memories? the loss on the same sequences with their own
      // references and with other chunks' (the plan's references permuted; chunks without one
      // keep none, so both draw the same sequences), before and after stage 2
      const permuted = Int32Array.from(plan);
      const has = [...permuted.keys()].filter((i) => permuted[i]! >= 0);
      const shuffled = new Rng(11).shuffle(has.map((i) => permuted[i]!));
      has.forEach((i, j) => (permuted[i] = shuffled[j]!));
      const other = new MemoryBatcher(gpu, model, kb, permuted, { prefix, layers, seed: 1, own: P.own });
      const memoryLoss = async (b: MemoryBatcher) => {
        let sum = 0;
        for (let j = 0; j < 4; j++) {
          const x = await b.batch(train2, P.batch, P.seq, 1e6 + j);
          const loss = await model.forward(x.ids, x.targets, x.memory);
          sum += (await gpu.read(loss))[0]!;
          loss.dispose();
          model.release();
          x.dispose();
        }
        return sum / 4;
      };
      const lossBefore = part2?.before ?? { memory: await memoryLoss(batcher), other: await memoryLoss(other) };
      // a fresh warmup and decay for stage 2 (stage 1 ended at minRatio): lrFactor counts the optimizer's steps,
      // from `from` (the optimizer's step where stage 2 began: kept across --save2 / --load1)
      const from = part2?.from ?? opt.step;
      const stage2 = from + P.stage2;
      const schedule2 = { warmup: from + Math.max(1, Math.round(P.stage2 / 20)), steps: stage2, minRatio: 0.1 };
      const t2 = performance.now();
      Object.assign(batcher.time, { batches: 0, seconds: 0, encodeSeconds: 0, references: 0 }); // the loss measurement's batches not counted
      const until = stop2 !== undefined ? Math.min(stage2, from + Number(stop2)) : stage2;
      const stop = stop2s !== undefined ? () => (performance.now() - t2) / 1000 >= Number(stop2s) : undefined;
      await trainLoop(gpu, model, opt, { train, val }, { steps: until, batch: P.batch, seqLen: P.seq, schedule: schedule2, evalEvery: 0, batches: (s, j) => batcher.batch(train2, P.batch, P.seq, s + j), ...(stop ? { stop } : {}) });
      const seconds2 = (part2?.seconds ?? 0) + (performance.now() - t2) / 1000;
      const bt = batcher.time;
      log(`stage 2 batches (this command): ${bt.batches} in ${bt.seconds.toFixed(0)} s of ${((performance.now() - t2) / 1000).toFixed(0)}, encoding ${bt.references} references in ${bt.encodeSeconds.toFixed(0)} s`);
      if (save2) {
        const part: Stage2Part = { from, done: opt.step - from, before: lossBefore, seconds: seconds2 };
        await saveTraining(gpu, save2, model, opt, { 'tokenizer.json': tokenizerJson, 'stage1.json': stage1Json, 'stage2.json': JSON.stringify(part) });
        log(`stage 2: ${part.done} of ${P.stage2} steps saved to ${save2}: ${part.done < P.stage2 ? 'go on' : 'measure again'} with --load1=${save2}`);
        if (part.done < P.stage2) return { results: { stage2_steps_done: part.done, stage2_seconds: seconds2 }, notes, partial: true };
      }
      notes['stage2'] = `${P.stage2} steps with memory on the corpus and ${P.asking} asking documents${real.length > 0 ? ` and ${real.length} about ${realFacts.length} real held-out facts never asked` : ''}${counter.length > 0 ? ` and ${counter.length} about ${counterFacts.length} counterfactual facts (kept facts with another object)` : ''} (${kb.length} references: kept${real.length > 0 ? ', those held-out' : ''}${counter.length > 0 ? ', counterfactual' : ''} and invented facts; ${plan.filter((x) => x >= 0).length} references planned for ${plan.length / per} chunks)${P.gradient ? ', gradients through the references\' encoding' : ''}, ${seconds2.toFixed(0)} s${part2 ? ` (from step ${part2.done} in ${load1})` : ''}`;
      const lossAfter = { memory: await memoryLoss(batcher), other: await memoryLoss(other) };
      log(`stage 2: ${notes['stage2']}; loss with own / other chunks' memories: before ${lossBefore.memory.toFixed(3)} / ${lossBefore.other.toFixed(3)}, after ${lossAfter.memory.toFixed(3)} / ${lossAfter.other.toFixed(3)}`);
      // the bank: every fact's statement, held-out ones included; id f<index into loadFacts()>
      const bank = await MemoryBank.open(join(dir, 'bank'), { create: true, model: { fingerprint: 'explicit-suite', layers, kvHeads: config.kvHeads, tokens: 8, headDim: config.dim / config.heads, dtype: 'bf16' } });
      const bankIds = all.flatMap((_, i) => (referenceTokens(tok, texts[i]!).tokens.length >= 8 ? [i] : []));
      const stored = new Map<number, NewReference>();
      const sample: SparseMemory[] = []; // every 4th memory: the pq codebooks' training set
      const tw = performance.now();
      let blobBytes = 0;
      let refTokens = 0;
      for (let i = 0; i < bankIds.length; i += 256) {
        const ids = bankIds.slice(i, i + 256);
        const written = await writeMemories(gpu, model, tok, ids.map((j) => texts[j]!), { layers, batch: 256 });
        const refs = written.map((w, r) => {
          if ((i + r) % 4 === 0) sample.push(w.memory);
          const memory = encodeMemory(w.memory);
          blobBytes += memory.byteLength;
          refTokens += prefix.length + w.tokens.length;
          const ref = { id: `f${ids[r]}`, text: w.text, tokens: w.tokens, memory };
          if (heldOut.has(factKey(all[ids[r]!]!))) stored.set(ids[r]!, ref);
          return ref;
        });
        await bank.add(refs, { deferIndex: true });
      }
      await bank.reindex();
      const writeSeconds = (performance.now() - tw) / 1000;
      const freshTexts = fresh.map(phrase);
      const freshIds = fresh.flatMap((_, j) => (referenceTokens(tok, freshTexts[j]!).tokens.length >= 8 ? [j] : []));
      await writeAndAdd({ gpu, model, tok }, bank, freshIds.map((j) => ({ id: `i${j}`, text: freshTexts[j]!, where: `invented fact ${j}` })), { batch: 256, deferIndex: false });
      log(`bank: ${bankIds.length} references of ${all.length} facts in ${writeSeconds.toFixed(1)} s, and ${freshIds.length} of ${fresh.length} new invented facts`);
      // are the answers in the memories? per held-out askable fact, the share of (block, KV head)
      // whose 8 kept tokens include a token of the object (the answer) in its reference
      let covered = 0;
      let slots = 0;
      for (const q of practice(corpus.heldOut)) {
        const ref = stored.get(index.get(factKey(q.fact))!);
        if (!ref) continue;
        // every place the answer is written (a card writes it once per phrasing)
        const text = ref.text.toLowerCase();
        const want = q.answer.trim().toLowerCase();
        const places: number[] = [];
        for (let x = text.indexOf(want); x >= 0; x = text.indexOf(want, x + 1)) places.push(x);
        if (places.length === 0) continue;
        const mem = decodeMemory(ref.memory);
        const at = (i: number) => tok.decode(ref.tokens.slice(0, i)).length; // characters before token i
        const answer = new Set(ref.tokens.flatMap((_, i) => (places.some((from) => at(i + 1) > from && at(i) < from + want.length) ? [prefix.length + i] : [])));
        const K = mem.tokens;
        for (let lh = 0; lh < mem.layers * mem.kvHeads; lh++) {
          slots++;
          if (mem.positions.subarray(lh * K, (lh + 1) * K).some((pos) => answer.has(pos))) covered++;
        }
      }
      log(`answers kept in the memories: ${((100 * covered) / Math.max(1, slots)).toFixed(1)}% of (block, KV head) of the held-out facts' references`);
      // questions about held-out facts only, in two forms: the practice template (the question
      // form the corpus trains on, for other facts) and the held-out template (a form the corpus
      // never has: the model must also understand a new question)
      const stopIds = answerStopIds(tok);
      const reader = new MemoryReader(gpu, model, tok, bank);
      // explicit answers: questions of one token length decode together (lockstep batches)
      const explicitAnswers = async (qs: readonly Question[], r = reader) => {
        const prompts = qs.map((q) => Array.from(tok.encode(q.prompt)));
        const byLength = new Map<number, number[]>();
        prompts.forEach((p, i) => byLength.set(p.length, [...(byLength.get(p.length) ?? []), i]));
        const answers: string[] = new Array(qs.length);
        for (const group of byLength.values()) {
          for (let i = 0; i < group.length; i += 64) {
            const rows = group.slice(i, i + 64);
            const outs = await r.generateBatch(rows.map((x) => prompts[x]!), { maxNew: 12, temperature: 0, stopIds });
            rows.forEach((x, j) => (answers[x] = answerText(tok, outs[j]!.ids)));
          }
        }
        return answers;
      };
      const qa = async (qs: readonly Question[], idOf = (f: Fact) => `f${index.get(factKey(f))}`) => {
        const plain = await evalFacts(gpu, model, tok, qs);
        const ex = await explicitAnswers(qs);
        const exRight = qs.map((q, i) => exactMatch(ex[i]!, acceptedForms(q)));
        const right = qs.filter((_, i) => exRight[i] === 1);
        const hits = await Promise.all(qs.map((q) => bank.search(q.prompt, { k: 5 })));
        const ragAnswers = await greedyAnswers(gpu, model, tok, qs.map((q, i) => ragPrompt(hits[i]!, q.prompt)));
        const ragRight = qs.map((q, i) => exactMatch(ragAnswers[i]!, acceptedForms(q)));
        // how often the search (the question's text, as both read it) has the fact's reference in its top 5
        const found = qs.map((q, i) => hits[i]!.some((h) => h.id === idOf(q.fact)));
        // per relation: "relation n none/explicit/RAG recall" right answers and search hits
        const rows = new Map<string, number[]>();
        qs.forEach((q, i) => {
          const r = rows.get(q.fact.relation) ?? [0, 0, 0, 0, 0];
          [1, plain.items[i]!.em, exRight[i]!, ragRight[i]!, found[i] ? 1 : 0].forEach((x, j) => (r[j]! += x));
          rows.set(q.fact.relation, r);
        });
        const byRelation = [...rows].map(([rel, [n, ...c]]) => `${rel} ${n}: ${c.join('/')}`).join('; ');
        const mean = (xs: number[]) => xs.reduce((a, x) => a + x, 0) / qs.length;
        // the first 40 wrong explicit answers whose fact the search found: what reading gets wrong
        const wrong = qs.flatMap((q, i) => (exRight[i] === 0 && found[i] ? [`${q.fact.relation}: ${q.fact.subject} -> ${JSON.stringify(ex[i])}, not ${JSON.stringify(q.answer.trim())}`] : [])).slice(0, 40).join('; ');
        return { none: plain.em, explicit: right.length / qs.length, rag: mean(ragRight), right, recall5: mean(found.map(Number)), byRelation, wrong };
      };
      // the questions (`asked`, above) in the practice form
      const practised = practice(asked.map((q) => q.fact));
      const main = await qa(practised);
      // what knowing only each relation's commonest answer among the corpus's facts gets right (a country's religion:
      // Christianity; an element's state: solid): the part of no memory's score a prior alone explains
      const common = new Map<string, Map<string, number>>();
      for (const f of all) {
        if (heldOut.has(factKey(f))) continue;
        const m = common.get(f.relation) ?? new Map<string, number>();
        m.set(f.object, (m.get(f.object) ?? 0) + 1);
        common.set(f.relation, m);
      }
      // each relation's commonest object (ties: the first in code-point order)
      const guess = new Map([...common].map(([rel, m]) => [rel, [...m].sort((x, y) => y[1] - x[1] || (x[0] < y[0] ? -1 : 1))[0]![0]]));
      const majority = practised.reduce((n, q) => n + exactMatch(guess.get(q.fact.relation) ?? '', acceptedForms(q)), 0) / practised.length;
      log(`EM over ${practised.length} questions (practice form): no memory ${main.none.toFixed(3)}, explicit ${main.explicit.toFixed(3)}, RAG ${main.rag.toFixed(3)}`);
      const unseen = await qa(asked);
      log(`EM (held-out form): no memory ${unseen.none.toFixed(3)}, explicit ${unseen.explicit.toFixed(3)}, RAG ${unseen.rag.toFixed(3)}`);
      const freshIndex = new Map(fresh.map((f, j) => [factKey(f), j]));
      const made = await qa(practice(fresh), (f) => `i${freshIndex.get(factKey(f))}`);
      log(`EM over ${fresh.length} new invented facts (practice form): no memory ${made.none.toFixed(3)}, explicit ${made.explicit.toFixed(3)}, RAG ${made.rag.toFixed(3)}; recall ${made.recall5.toFixed(3)}`);
      // product quantisation (memory3/quantize.ts): codebooks per memory block and K/V from the
      // sample, 8 code bytes per 64-dim vector (16x below bf16), a second bank of every memory so
      // coded, and the practice-form questions read from it
      let pqBytes = NaN;
      let vq = NaN;
      if (vqOn) {
        const tq = performance.now();
        const codebooks = await trainMemoryCodebooks(gpu, sample, { subvectors: Math.max(1, (config.dim / config.heads) / 8) });
        const pqBank = await MemoryBank.open(join(dir, 'bank-pq'), { create: true, codebooks, model: { ...MemoryBank.modelOf(bank.manifest), dtype: 'pq' } });
        pqBytes = 0;
        for (let i = 0; i < bankIds.length; i += 256) {
          const ids = bankIds.slice(i, i + 256);
          const written = await writeMemories(gpu, model, tok, ids.map((j) => texts[j]!), { layers, batch: 256 });
          const coded = await quantizeMemories(gpu, codebooks, written.map((w) => w.memory));
          const refs = written.map((w, r) => ({ id: `f${ids[r]}`, text: w.text, tokens: w.tokens, memory: encodeMemory(coded[r]!) }));
          for (const r of refs) pqBytes += r.memory.byteLength;
          await pqBank.add(refs, { deferIndex: true });
        }
        await pqBank.reindex();
        const vqEx = await explicitAnswers(practised, new MemoryReader(gpu, model, tok, pqBank));
        vq = practised.reduce((n, q, i) => n + exactMatch(vqEx[i]!, acceptedForms(q)), 0) / practised.length;
        pqBank.close();
        log(`pq: codebooks from ${sample.length} memories and a bank of ${bankIds.length} in ${((performance.now() - tq) / 1000).toFixed(1)} s; explicit EM ${vq.toFixed(3)} (bf16 ${main.explicit.toFixed(3)})`);
      }
      // editing a live bank: the facts behind the questions explicit memory got right are
      // removed (their answers should go), then added back (they should return), asked each time
      // (a fact whose statement is too short for a memory is not in the bank: such right answers came without one)
      const right = main.right.filter((q) => stored.has(index.get(factKey(q.fact))!));
      const score = async (qs: readonly Question[]) => (await explicitAnswers(qs)).reduce((n, a, i) => n + exactMatch(a, acceptedForms(qs[i]!)), 0);
      const edited = [...new Set(right.map((q) => index.get(factKey(q.fact))!))];
      await bank.remove(edited.map((i) => `f${i}`));
      const afterRemove = await score(right);
      await bank.add(edited.map((i) => stored.get(i)!));
      const afterAdd = await score(right);
      log(`editing: ${right.length} answered; ${afterRemove} after their facts were removed, ${afterAdd} after they were added back`);
      // generation speed as the paper measured it: batch 32, 128 tokens in (windows of the
      // validation text), 128 out, greedy, no stops, against a knowledge base of references of
      // the spec's length: 128-token windows of the training text (the paper's knowledge base is
      // part of its pretraining data), a bank of their memories. explicit: a fresh reader (no
      // decoded memory cached), 3 retrievals per row (2 prompt chunks, then after 64 new tokens);
      // RAG: each row's search's 5 references' text before its 128 tokens (about 770 tokens in),
      // rows cut from the front to the shortest (lockstep rows share one length). also RAG with
      // the fact bank's one-statement references (rag_facts: about 26 tokens more per row).
      // each way is run once untimed for 2 tokens first (pipelines compile)
      const GB = quick ? 4 : 32;
      const IN = quick ? 64 : 128;
      const OUT = quick ? 32 : 128;
      const REF = 128; // tokens per speed reference: the spec's longest
      const refCount = quick ? 64 : 2048;
      const speedBank = await MemoryBank.open(join(dir, 'bank-speed'), { create: true, model: MemoryBank.modelOf(bank.manifest) });
      const refTexts = windowTexts(tok, train, refCount, REF);
      await writeAndAdd({ gpu, model, tok }, speedBank, refTexts.map((text, i) => ({ id: `w${i}`, text, where: `window ${i}` })), { batch: 256, deferIndex: true });
      await speedBank.reindex();
      const stride = Math.floor((val.length - IN) / GB);
      const ins = Array.from({ length: GB }, (_, r) => Array.from(val.subarray(r * stride, r * stride + IN)));
      const ragIns = await ragRows(speedBank, tok, ins, config.maxSeqLen - OUT);
      const ragFactIns = await ragRows(bank, tok, ins, config.maxSeqLen - OUT);
      // the ways interleaved, 3 rounds, the median of each: per-step host overhead dominates at this
      // model size, and a single pass moved with its place in the order (BENCHMARKS.md `explicit`)
      const speed = async (f: (maxNew: number) => Promise<number[][]>) => {
        const t = performance.now();
        const rows = await f(OUT);
        return rows.reduce((n, r) => n + r.length, 0) / ((performance.now() - t) / 1000);
      };
      const greedy = { temperature: 0 };
      const runs = {
        none: (maxNew: number) => generateBatch(gpu, model, ins, { maxNew, ...greedy }),
        explicit: async (maxNew: number) => (await new MemoryReader(gpu, model, tok, speedBank).generateBatch(ins, { maxNew, ...greedy })).map((r) => r.ids),
        rag: (maxNew: number) => generateBatch(gpu, model, ragIns, { maxNew, ...greedy }),
        rag_facts: (maxNew: number) => generateBatch(gpu, model, ragFactIns, { maxNew, ...greedy }),
      };
      for (const f of Object.values(runs)) await f(2);
      const rates: Record<keyof typeof runs, number[]> = { none: [], explicit: [], rag: [], rag_facts: [] };
      for (let round = 0; round < 3; round++) for (const [k, f] of Object.entries(runs)) rates[k as keyof typeof runs].push(await speed(f));
      const [genNone, genExplicit, genRag, genRagFacts] = [median(rates.none), median(rates.explicit), median(rates.rag), median(rates.rag_facts)];
      log(`tokens/s at batch ${GB}, ${IN} in, ${OUT} out: no memory ${genNone.toFixed(0)}, explicit ${genExplicit.toFixed(0)}, RAG ${genRag.toFixed(0)} (${ragIns[0]!.length} tokens in), RAG on the fact bank ${genRagFacts.toFixed(0)} (${ragFactIns[0]!.length} tokens in)`);
      // how much of an explicit run is the bank's work: its 3 retrievals (each row's search, then one
      // load of their memories), as the reader does them, without the model (median of 3 rounds)
      const outs = await generateBatch(gpu, model, ins, { maxNew: OUT, ...greedy });
      const queries = [ins.map((x) => x.slice(0, 64)), ins.map((x) => x.slice(64)), outs.map((x) => x.slice(0, 64))].map((rows) => rows.map((x) => tok.decode(x)));
      const bankSeconds = async () => {
        const t = performance.now();
        for (const qs of queries) {
          const found = await Promise.all(qs.map((q) => speedBank.search(q, { k: 5 })));
          await speedBank.get([...new Set(found.flat().map((h) => h.id))]);
        }
        return (performance.now() - t) / 1000;
      };
      const retrievalSeconds = median([await bankSeconds(), await bankSeconds(), await bankSeconds()]);
      log(`the bank's share of an explicit run: ${retrievalSeconds.toFixed(3)} s of ${((GB * OUT) / genExplicit).toFixed(3)} s`);
      speedBank.close();
      const n = bankIds.length;
      const HS = config.dim / config.heads;
      bank.close();
      notes['by_relation'] = `practice form, per relation: questions: right answers with no memory / explicit / RAG, and the search's top 5 holding the fact: ${main.byRelation}`;
      notes['by_relation_invented'] = `the same for the invented facts: ${made.byRelation}`;
      notes['explicit_wrong'] = `wrong explicit answers (practice form) where the search found the fact, the first 40: ${main.wrong}`;
      notes['questions_invented'] = `qa_em_*_invented: ${fresh.length} invented facts (new subjects, in no training document; their references in the bank), practice form`;
      notes['questions'] = `${practised.length} questions (at most ${P.perRelation} per relation) about facts among ${corpus.heldOut.length} that appear nowhere in the corpus, each with one right answer among all facts, greedy, exact match: qa_em_* ask in the practice form (the corpus has questions of that form about other facts), qa_em_*_new_form in the held-out form (a wording the corpus never has)`;
      notes['bank'] = `${n} references (${P.card ? 'a fact card per fact: every statement phrasing of it' : 'one statement per fact'}), memory blocks [${layers.join(', ')}], 8 tokens per KV head, bf16`;
      notes['bytes_per_memory_raw'] = `mean reference length with its prefix (${(refTokens / n).toFixed(1)} tokens) x ${config.layers} blocks x 2 (K, V) x ${config.kvHeads} KV heads x ${HS} dims x 2 bytes`;
      notes['gen_tok_s'] = `batch ${GB}, ${IN} tokens in (validation text), ${OUT} out, greedy; a bank of ${refCount} references of ${REF} tokens (windows of the training text); RAG: ${ragIns[0]!.length} tokens in (the 5 references' text, cut from the front to the shortest row); rag_facts: the same with the fact bank (${ragFactIns[0]!.length} tokens in); explicit: 3 retrievals per row, no memory cached; the four interleaved, median of 3 rounds`;
      if (quick) notes['quick'] = '--quick: a tiny model and a few steps (a smoke run): not the suite\'s figures';
      return {
        results: {
          qa_em_no_memory: main.none,
          qa_em_explicit: main.explicit,
          qa_em_rag: main.rag,
          qa_em_majority: majority,
          qa_em_no_memory_new_form: unseen.none,
          qa_em_explicit_new_form: unseen.explicit,
          qa_em_rag_new_form: unseen.rag,
          retrieval_recall5: main.recall5,
          retrieval_recall5_new_form: unseen.recall5,
          qa_em_no_memory_invented: made.none,
          qa_em_explicit_invented: made.explicit,
          qa_em_rag_invented: made.rag,
          retrieval_recall5_invented: made.recall5,
          stage2_loss_memory: lossAfter.memory,
          stage2_loss_other_memory: lossAfter.other,
          stage1_loss_memory: lossBefore.memory,
          stage1_loss_other_memory: lossBefore.other,
          edit_questions: right.length,
          edit_em_removed: right.length > 0 ? afterRemove / right.length : 0,
          edit_em_readded: right.length > 0 ? afterAdd / right.length : 0,
          gen_tok_s_no_memory: genNone,
          gen_tok_s_explicit: genExplicit,
          gen_tok_s_rag: genRag,
          gen_tok_s_rag_facts: genRagFacts,
          gen_bank_s_explicit: retrievalSeconds,
          bytes_per_memory_raw: (refTokens / n) * config.layers * 2 * config.kvHeads * HS * 2,
          bytes_per_memory_sparse: blobBytes / n,
          ...(vqOn ? { bytes_per_memory_vq: pqBytes / n, qa_em_explicit_vq: vq } : {}),
          memory_answer_kept: covered / Math.max(1, slots),
          bank_write_refs_s: n / writeSeconds,
          questions: practised.length,
        },
        notes,
      };
    } finally {
      opt.dispose();
      model.dispose();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** where a stage-2 run saved with --save2 stopped: the optimizer's step where stage 2 began, the steps done, the losses before it, its seconds so far */
interface Stage2Part {
  from: number;
  done: number;
  before: { memory: number; other: number };
  seconds: number;
}

/** a --save1 folder (the weights: stage 2 starts with a fresh optimizer) or a --save2 one (the optimizer too) */
async function loadStage(gpu: Gpu, dir: string, lr: number): Promise<{ model: Transformer; opt?: AdamW; files: Record<string, Uint8Array> }> {
  const files = await readCheckpoint(dir);
  if (!files['stage1.json']) throw new Error(`explicit: ${dir} holds no stage1.json, so it is not this suite's stage 1: make one with --save1=${dir}`);
  if (files['stage2.json']) return resumeTraining(gpu, dir, { lr });
  return loadModel(gpu, dir);
}

/**
 * the plan (2 per references per chunk) adjusted for the counterfactual asking documents (memory3/plan_adjust.ts), per
 * kept: a document's chunks read its facts' counterfactual cards, and no other card of their subjects and
 * relations (the true card, another counterfactual's)
 */
function counterfactualPlan(plan: Int32Array, o: { per: number; entries: readonly Fact[]; docs: readonly { counter?: Fact[] }[]; starts: readonly number[]; stream: number }): Int32Array {
  const slot = (f: Fact) => `${f.subject}\u0000${f.relation}`;
  const at = new Map<string, number>();
  const bySlot = new Map<string, number[]>();
  o.entries.forEach((f, i) => {
    at.set(factKey(f), i);
    (bySlot.get(slot(f)) ?? bySlot.set(slot(f), []).get(slot(f))!).push(i);
  });
  const spans = o.docs.flatMap((d, j) => {
    if (!d.counter) return [];
    const add = d.counter.flatMap((f) => (at.has(factKey(f)) ? [at.get(factKey(f))!] : []));
    const deny = d.counter.flatMap((f) => bySlot.get(slot(f))!.filter((i) => !add.includes(i)));
    return [{ start: o.starts[j]!, end: o.starts[j + 1] ?? o.stream, add, deny }];
  });
  return adjustPlan(plan, { perChunk: 2 * o.per, keep: o.per, chunk: 64, spans });
}
