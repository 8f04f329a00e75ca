// a fact drill: the small, focused corpus `engram demo` trains on, and the questions it asks.
//
// for the facts of a few relations (facts.ts), every statement phrasing of every fact, plus the
// question-and-answer form "Q: <question>\nA: <answer>" for a `taught` share of the facts (seeded
// choice). the other facts are `held out`: the model reads their statements but never sees them
// asked, so answering them means getting from the statements to the question form, which the
// taught facts demonstrate. asking a taught fact tests recall of something trained in that form.
// lines are shuffled and cut into documents of LINES_PER_DOC lines; no natural text, so that a
// few minutes on a CPU go to the facts. (issue-5 style evaluation, with question templates never
// trained on at all, is `questions()` over a corpus of statements only: corpus.ts.)

import { EngramError } from '../gpu/errors.ts';
import { Rng } from '../testing/rng.ts';
import { FACT_RELATIONS, loadFacts, questions, statements, type Question } from './facts.ts';

const LINES_PER_DOC = 16;

export interface DrillOptions {
  /** relations to drill (default capital) */
  relations?: readonly string[];
  /** share of the facts whose question form is trained, in [0, 1] (default 0.8) */
  taught?: number;
  /** at most this many facts (a seeded sample; default all) */
  limit?: number;
  seed?: number;
}

export interface Drill {
  /** training documents: statements and taught Q/A lines */
  docs: string[];
  /** validation documents: the held-out facts' Q/A lines (their loss measures generalisation to the question form) */
  val: string[];
  /** questions whose Q/A form is in docs */
  taught: Question[];
  /** questions about facts only stated in docs */
  heldOut: Question[];
}

export function buildDrill(o: DrillOptions = {}): Drill {
  const relations = o.relations ?? ['capital'];
  const taughtShare = o.taught ?? 0.8;
  const seed = o.seed ?? 1;
  for (const r of relations) {
    if (!FACT_RELATIONS.includes(r)) throw new EngramError(`drill: unknown relation '${r}'; known: ${FACT_RELATIONS.join(', ')}`);
  }
  if (!(taughtShare >= 0 && taughtShare <= 1)) throw new EngramError(`drill: taught must be a share in [0, 1], got ${taughtShare}`);
  const rng = new Rng(seed);
  const uniform = () => rng.next();
  const all = loadFacts().filter((f) => relations.includes(f.relation));
  rng.shuffle(all);
  const facts = all.slice(0, o.limit ?? all.length);
  // questions() keeps the facts with one object per (subject, relation): the askable ones
  const qs = questions(facts);
  const taught: Question[] = [];
  const heldOut: Question[] = [];
  for (const q of qs) (uniform() < taughtShare ? taught : heldOut).push(q);
  const lines: string[] = [];
  for (const f of facts) lines.push(...statements(f, uniform));
  for (const q of taught) lines.push(`${q.prompt}${q.answer}`);
  rng.shuffle(lines);
  const val = heldOut.map((q) => `${q.prompt}${q.answer}`);
  return { docs: group(lines), val: group(val), taught, heldOut };
}

function group(lines: string[]): string[] {
  const docs: string[] = [];
  for (let i = 0; i < lines.length; i += LINES_PER_DOC) docs.push(lines.slice(i, i + LINES_PER_DOC).join('\n'));
  return docs;
}

