// invented facts: made-up subjects with real objects, for teaching a model to read.
//
// A fact the model has memorised can be answered from its weights, so documents that state kept facts
// and then ask about them never reward reading (a model trained on them learns no lookup; BENCHMARKS.md
// `explicit`). An invented subject ("Dravonia", "keltrium", "Sorbeck") appears in no other document,
// so a question about it can only be answered from what the document (or its explicit memory) states.
//
// inventFacts(n, rng): n facts, relations uniform over FACT_RELATIONS, each subject new (unique among
// the n, and no real fact's subject), its object drawn uniformly from the distinct objects the relation
// has among the real facts (so the answers look like real ones, and no object is more likely than
// another: guessing the type alone rarely hits). Subjects are 2-3 syllables and an ending by kind:
// countries "-ia", "-stan", ...; elements "-ium", ... (written in lower case, as facts.ts writes
// elements); cities "-burg", "-vik", ... Every invented fact is askable (one object per subject).
//
// inventGroups(groups, size, rng): the same, in groups of one relation each.
//
// readingDocument(facts, asked, rng): the facts' statements (one phrasing each), then practice questions
// and answers about `asked` of them. askingDocument(facts, rng): practice questions and answers alone,
// the statements left to an explicit memory (memory3/). Both deterministic given the rng.

import type { Rng } from '../testing/rng.ts';
import { FACT_RELATIONS, loadFacts, practice, statements, subjectKind, type Fact } from './facts.ts';

const ONSETS = ['b', 'd', 'f', 'g', 'k', 'l', 'm', 'n', 'p', 'r', 's', 't', 'v', 'z', 'br', 'dr', 'gr', 'kr', 'tr', 'st', 'sl', 'th'];
const VOWELS = ['a', 'e', 'i', 'o', 'u', 'ai', 'ei', 'ou'];
const CODAS = ['', '', 'n', 'r', 'l', 's', 'm'];
const ENDINGS = {
  country: ['ia', 'ar', 'stan', 'land', 'ova', 'ea', 'esh'],
  element: ['ium', 'on', 'ine', 'ite', 'en'],
  city: ['burg', 'ton', 'vik', 'ford', 'ville', 'os', 'ay', 'heim'],
} as const;

let pools: Map<string, string[]> | undefined;

/** per relation, the distinct objects of the real facts, sorted */
function objectPools(): Map<string, string[]> {
  if (pools) return pools;
  const sets = new Map<string, Set<string>>(FACT_RELATIONS.map((r) => [r, new Set()]));
  const real = loadFacts();
  for (const f of real) sets.get(f.relation)!.add(f.object);
  pools = new Map([...sets].map(([r, s]) => [r, [...s].sort()]));
  return pools;
}

let realSubjects: Set<string> | undefined;

/** a new subject of the kind (one draw of inventName), or undefined when it is taken: in `used` (then added), a real fact's, or in `avoid` */
function newSubject(kind: keyof typeof ENDINGS, rng: Rng, used: Set<string>, avoid: ReadonlySet<string>): string | undefined {
  realSubjects ??= new Set(loadFacts().map((f) => f.subject.toLowerCase()));
  const subject = inventName(kind, rng);
  const key = subject.toLowerCase();
  if (used.has(key) || realSubjects.has(key) || avoid.has(subject)) return undefined;
  used.add(key);
  return subject;
}

function inventName(kind: keyof typeof ENDINGS, rng: Rng): string {
  const syllables = 2 + rng.int(2);
  let s = '';
  for (let i = 0; i < syllables; i++) s += ONSETS[rng.int(ONSETS.length)]! + VOWELS[rng.int(VOWELS.length)]! + (i < syllables - 1 ? CODAS[rng.int(CODAS.length)]! : '');
  const endings = ENDINGS[kind];
  const name = s + endings[rng.int(endings.length)]!;
  return name.charAt(0).toUpperCase() + name.slice(1);
}

/** n invented facts (see the header); subjects unique among them and never a real fact's subject, nor one in `avoid` */
export function inventFacts(n: number, rng: Rng, avoid: ReadonlySet<string> = new Set()): Fact[] {
  const objects = objectPools();
  const used = new Set<string>();
  const out: Fact[] = [];
  while (out.length < n) {
    const relation = FACT_RELATIONS[rng.int(FACT_RELATIONS.length)]!;
    const subject = newSubject(subjectKind(relation), rng, used, avoid);
    if (subject === undefined) continue;
    const pool = objects.get(relation)!;
    out.push({ subject, relation, object: pool[rng.int(pool.length)]! });
  }
  return out;
}

/**
 * `groups` groups of `size` invented facts, each group's facts of one relation (drawn uniformly per
 * group) about `size` different new subjects (unique among all, as inventFacts'): asking documents of
 * such a group ask about several facts of one relation, so that a reader that finds only the relation's
 * statements (a search by the question's words returns those) must still tell the subjects apart
 */
export function inventGroups(groups: number, size: number, rng: Rng, avoid: ReadonlySet<string> = new Set()): Fact[][] {
  const objects = objectPools();
  const used = new Set<string>();
  return Array.from({ length: groups }, () => {
    const relation = FACT_RELATIONS[rng.int(FACT_RELATIONS.length)]!;
    const pool = objects.get(relation)!;
    const group: Fact[] = [];
    while (group.length < size) {
      const subject = newSubject(subjectKind(relation), rng, used, avoid);
      if (subject === undefined) continue;
      group.push({ subject, relation, object: pool[rng.int(pool.length)]! });
    }
    return group;
  });
}

/** one statement of each fact (a phrasing drawn by rng), then practice questions and answers about `asked` of them, in a shuffled order */
export function readingDocument(facts: readonly Fact[], asked: number, rng: Rng): string {
  const lines = facts.map((f) => statements(f, () => rng.next())[0]!);
  return [...lines, ...askingLines(rng.shuffle([...facts]).slice(0, asked))].join('\n');
}

/** practice questions and answers about the facts, in their order: no statement (the facts are to come from elsewhere) */
export function askingDocument(facts: readonly Fact[]): string {
  return askingLines(facts).join('\n');
}

function askingLines(facts: readonly Fact[]): string[] {
  return practice([...facts]).map((q) => `${q.prompt}${q.answer}`);
}
