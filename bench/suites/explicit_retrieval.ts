// suite `explicit_retrieval`: how often the memory bank's search finds the fact a question asks about,
// with no model at all (BM25 over words, memory3/bank.ts), for the explicit suite's questions
//
//   npm run bench -- explicit_retrieval
//
// the explicit suite's held-out facts and questions (buildCorpus holdOut 0.2, seed 0; facts with one right
// answer among all facts, at most 30 per relation: bench/explicit_facts.ts) against two banks of every fact, placeholder memories
// (the search reads only the text):
//   a card per fact (data/facts.ts factCard: every statement phrasing of the fact in one text), the explicit
//   suite's references
//   one phrasing per fact (the first of statements() under the explicit suite's seeded order: that suite, with
//   --card=0, takes a later phrasing where the first has under 8 tokens, so a few of its references differ):
//   the *_one_phrasing metrics
// metrics, for the practice and the held-out question forms:
//   recall1, recall5           the fact's reference is the search's first hit / among its 5
//   same_relation5_invented    for the explicit suite's invented facts made after training (their cards added
//                              to the card bank, as that suite adds them), how many of a practice-form question's
//                              top 5 are cards of the asked relation (the rest are other relations'): what a
//                              reader must tell the asked subject's card from (per relation in the notes)
// the search is what explicit reading and RAG both use: one query per 64-token chunk, here the question.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildCorpus } from '../../src/data/corpus.ts';
import { factCard, factKey, loadFacts, practice, statements, type Fact } from '../../src/data/facts.ts';
import type { Gpu } from '../../src/gpu/device.ts';
import { MemoryBank } from '../../src/memory3/bank.ts';
import { encodeMemory } from '../../src/memory3/blob.ts';
import { Rng } from '../../src/testing/rng.ts';
import { explicitFacts, FACT_PLAN } from '../explicit_facts.ts';
import type { SuiteOutput } from '../run.ts';

export async function run(_gpu: Gpu): Promise<SuiteOutput> {
  // the explicit suite's corpus (its held-out facts and its reading documents' invented subjects) and facts
  const corpus = buildCorpus({ maxBytes: 2 ** 20, holdOut: 0.2, reading: FACT_PLAN.reading, readingGroup: FACT_PLAN.readingGroup, seed: 0 });
  const all = loadFacts();
  const index = new Map(all.map((f, i) => [factKey(f), i]));
  const { asked, fresh } = explicitFacts(corpus, all, FACT_PLAN);
  const results: Record<string, number> = {};
  const notes: Record<string, string> = {};
  const banks = [
    ['', (f: Fact, rng: Rng) => factCard(f, () => rng.next())],
    ['_one_phrasing', (f: Fact, rng: Rng) => statements(f, () => rng.next())[0]!],
  ] as const;
  for (const [suffix, reference] of banks) {
    const rng = new Rng(7);
    const texts = all.map((f) => reference(f, rng));
    const dir = mkdtempSync(join(tmpdir(), 'engram-retrieval-'));
    const model = { fingerprint: 'retrieval', layers: [0], kvHeads: 1, tokens: 1, headDim: 2, dtype: 'f32' as const };
    const memory = encodeMemory({ layers: 1, kvHeads: 1, tokens: 1, headDim: 2, dtype: 'f32', k: new Float32Array(2), v: new Float32Array(2), positions: new Uint32Array(1) });
    const bank = await MemoryBank.open(join(dir, 'bank'), { create: true, model });
    try {
      for (let i = 0; i < all.length; i += 2048) await bank.add(texts.slice(i, i + 2048).map((text, j) => ({ id: `f${i + j}`, text, tokens: [0], memory })), { deferIndex: true });
      await bank.reindex();
      for (const [form, qs] of [['practice', practice(asked.map((q) => q.fact))], ['new_form', asked]] as const) {
        let top1 = 0;
        let top5 = 0;
        for (const q of qs) {
          const hits = await bank.search(q.prompt, { k: 5 });
          const want = `f${index.get(factKey(q.fact))}`;
          if (hits[0]?.id === want) top1++;
          if (hits.some((h) => h.id === want)) top5++;
        }
        results[`recall1_${form}${suffix}`] = top1 / qs.length;
        results[`recall5_${form}${suffix}`] = top5 / qs.length;
      }
      if (suffix === '') {
        const cards = fresh.map((f) => reference(f, rng));
        await bank.add(cards.map((text, j) => ({ id: `i${j}`, text, tokens: [0], memory })));
        const relationOf = (id: string) => (id.startsWith('i') ? fresh[Number(id.slice(1))]! : all[Number(id.slice(1))]!).relation;
        const rows = new Map<string, number[]>();
        for (const q of practice(fresh)) {
          const hits = await bank.search(q.prompt, { k: 5 });
          const r = rows.get(q.fact.relation) ?? [0, 0];
          r[0]! += 1;
          r[1]! += hits.filter((h) => relationOf(h.id) === q.fact.relation).length;
          rows.set(q.fact.relation, r);
        }
        results['same_relation5_invented'] = [...rows.values()].reduce((a, r) => a + r[1]!, 0) / fresh.length;
        notes['same_relation5_invented'] = `per relation: questions, mean hits of the asked relation in the top 5: ${[...rows].map(([rel, [n, x]]) => `${rel} ${n}: ${(x! / n!).toFixed(2)}`).join('; ')}`;
      }
    } finally {
      bank.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }
  results['questions'] = asked.length;
  return {
    results,
    device: 'none',
    notes: { bank: `${all.length} references, a card (every phrasing) of each fact, or one phrasing (*_one_phrasing); BM25 (LanceDB full-text search, memory3/bank.ts); questions about held-out facts with one right answer among all facts, at most ${FACT_PLAN.perRelation} per relation; same_relation5_invented: the card bank with ${fresh.length} invented facts' cards added`, ...notes },
  };
}
