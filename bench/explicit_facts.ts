// the explicit benchmarks' facts (bench/suites/explicit.ts trains on them and asks; explicit_retrieval.ts
// searches for the same questions without a model): which held-out facts are asked after training, the
// invented facts of stage 2's asking documents, the invented facts made after training, and groups of the
// held-out facts that are never asked (explicit's --realAsking)

import type { Corpus } from '../src/data/corpus.ts';
import { questions, type Fact, type Question } from '../src/data/facts.ts';
import { inventFacts, inventGroups } from '../src/data/invented.ts';
import { selectQuestions } from '../src/eval/facts.ts';
import { Rng } from '../src/testing/rng.ts';

/** the full explicit plan's sizes that decide these facts (the corpus's reading documents among them) */
export const FACT_PLAN = { reading: 40000, readingGroup: 3, asking: 40000, group: true, perRelation: 30 };

export interface ExplicitFacts {
  /** the held-out facts with one right answer among all facts, as questions in the held-out form */
  askable: Question[];
  /** the questions asked after training: at most perRelation of askable per relation */
  asked: Question[];
  /** stage 2's asking documents' facts, 3 per document (of one relation with `group`): subjects new beside the corpus's */
  invented: Fact[];
  /** invented facts asked about after training: 18 x perRelation, subjects in no document of either stage */
  fresh: Fact[];
}

/** the facts of a corpus built with the plan's reading and readingGroup (buildCorpus holdOut, seed 0) */
export function explicitFacts(corpus: Pick<Corpus, 'heldOut' | 'invented'>, all: readonly Fact[], p: { asking: number; group: boolean; perRelation: number }): ExplicitFacts {
  const askable = questions(corpus.heldOut, { among: all });
  const asked = selectQuestions(askable, { perRelation: p.perRelation });
  const known = new Set(corpus.invented.map((f) => f.subject));
  const invented = p.group ? inventGroups(p.asking, 3, new Rng(13), known).flat() : inventFacts(3 * p.asking, new Rng(13), known);
  const fresh = inventFacts(18 * p.perRelation, new Rng(19), new Set([...corpus.invented, ...invented].map((f) => f.subject)));
  return { askable, asked, invented, fresh };
}

/**
 * n groups of 3 of the facts, each of one relation (drawn uniformly among the relations with at least 3 facts), the
 * 3 distinct within a group; a fact may be in several groups
 */
export function realGroups(facts: readonly Fact[], n: number, rng: Rng): Fact[][] {
  const pools = new Map<string, Fact[]>();
  for (const f of facts) {
    const pool = pools.get(f.relation);
    if (pool) pool.push(f);
    else pools.set(f.relation, [f]);
  }
  const relations = [...pools.keys()].filter((r) => pools.get(r)!.length >= 3);
  if (n > 0 && relations.length === 0) throw new Error('explicit: --realAsking needs a relation with at least 3 held-out facts that are never asked');
  return Array.from({ length: n }, () => {
    const pool = pools.get(relations[rng.int(relations.length)]!)!;
    const picked = new Set<number>();
    while (picked.size < 3) picked.add(rng.int(pool.length));
    return [...picked].map((i) => pool[i]!);
  });
}
