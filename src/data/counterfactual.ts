// counterfactual facts: real subjects stated with another object of their relation, for teaching a model
// that what its explicit memory says overrules what its weights hold.
//
// Invented subjects (invented.ts) teach reading where the weights know nothing. A real subject is
// different: the weights hold a guess (its kept facts, its neighbours', the relation's commonest answer),
// and a reader trained on invented subjects alone lets that guess win over the memory (BENCHMARKS.md
// `explicit`: the held-out currencies answered "the Euro" with the right card in memory). An asking
// document about a counterfactual fact, whose card alone states it, rewards the memory over the guess.
//
// counterfactualGroups(facts, groups, size, rng, truth): `groups` groups of `size` of the facts, each group
// of one relation (drawn uniformly among those with `size` subjects that have a counterfactual) and distinct
// subjects, each fact's object replaced by the object of another fact of the relation in `truth`, drawn by
// frequency and never one that `truth` holds for the subject. A fact may be drawn in several groups,
// with another object each time, so no one answer can be learnt into the weights. Leaving out the
// subject's own object shifts the answers away from a relation's commonest one (most elements are solid,
// so most counterfactual states are not): a model trained on them guesses by relation worse without its
// memory (BENCHMARKS.md `explicit`); swapping two subjects' objects would keep the distribution.

import { EngramError } from '../gpu/errors.ts';
import type { Rng } from '../testing/rng.ts';
import { factKey, type Fact } from './facts.ts';

const key = (subject: string, relation: string, object: string) => factKey({ subject, relation, object });

/** see the header; deterministic given the rng */
export function counterfactualGroups(facts: readonly Fact[], groups: number, size: number, rng: Rng, truth: readonly Fact[] = facts): Fact[][] {
  if (!(Number.isInteger(groups) && groups >= 0 && Number.isInteger(size) && size > 0)) throw new EngramError(`counterfactualGroups: groups ${groups} and size ${size} must be integers, groups >= 0, size > 0`);
  const held = new Set(truth.map((f) => key(f.subject, f.relation, f.object)));
  // per relation, every object in truth once per fact (draws by frequency), and its facts' subjects
  // that some object of the relation is not true of
  const objects = new Map<string, string[]>();
  for (const f of truth) (objects.get(f.relation) ?? objects.set(f.relation, []).get(f.relation)!).push(f.object);
  const pools = new Map<string, Fact[]>();
  for (const f of facts) {
    if (!(objects.get(f.relation) ?? []).some((o) => !held.has(key(f.subject, f.relation, o)))) continue;
    (pools.get(f.relation) ?? pools.set(f.relation, []).get(f.relation)!).push(f);
  }
  const relations = [...pools.keys()].filter((r) => new Set(pools.get(r)!.map((f) => f.subject)).size >= size).sort();
  if (groups > 0 && relations.length === 0) throw new EngramError(`counterfactualGroups: no relation has ${size} subjects with an object of the relation that is not theirs`);
  return Array.from({ length: groups }, () => {
    const relation = relations[rng.int(relations.length)]!;
    const pool = pools.get(relation)!;
    const answers = objects.get(relation)!;
    const subjects = new Set<string>();
    const group: Fact[] = [];
    while (group.length < size) {
      const f = pool[rng.int(pool.length)]!;
      if (subjects.has(f.subject)) continue;
      let object: string;
      do object = answers[rng.int(answers.length)]!;
      while (held.has(key(f.subject, relation, object)));
      subjects.add(f.subject);
      group.push({ subject: f.subject, relation, object });
    }
    return group;
  });
}
