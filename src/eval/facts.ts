// `engram eval facts`: how many held-out factual questions a model answers, scored the way reading-comprehension
// benchmarks (SQuAD) score short answers.
//
// Questions come from src/data/facts.ts: real knowledge bases (countries' capitals, currencies, languages,
// continents, ...; elements' symbols, atomic numbers, categories, ...). Each relation has one question template
// that no training statement uses (questions() asks "What money is used in France?" while the statements say
// "France uses the Euro as its currency."), so a right answer means the model got from a new phrasing to the fact.
//
// Answering: greedy decoding of the prompt "Q: <question>\nA:", stopping at end-of-text or a newline (or after
// maxNew tokens); the answer is the first line of the decoded text, trimmed, without a final full stop
// (answerText). evalFacts decodes `batch` questions at once (greedyBatch in src/infer/generate.ts: one uncached
// step for the whole batch per new token, ~B times fewer round trips than one question at a time); greedyAnswer,
// one prompt with the KV cache, gives the same answers up to float near-ties between the two paths.
//
// Scoring, against every accepted form of the answer (acceptedForms: the object as the statements write it,
// " the Euro", the raw object from the knowledge base, "Euro", and both without a leading article):
//   normalizeAnswer  lowercase, NFC; punctuation and symbols deleted (Unicode P and S classes: "+33" -> "33",
//                    "Guinea-Bissau" -> "guineabissau"); the articles a / an / the dropped as words; whitespace
//                    collapsed. Letters with diacritics and digits are kept.
//   exact match      1 when the normalized prediction equals some normalized form, else 0
//   token F1         over the normalized words: 2PR / (P + R) with P = common / predicted words and
//                    R = common / form words (common counted as a multiset); the best over the forms;
//                    1 when both are empty, 0 when only one is
// Totals and per-relation scores are means over questions (EM and F1 in [0, 1]).

import { writeFileSync } from 'node:fs';
import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import { FACT_RELATIONS, loadFacts, questions as allQuestions, type Question } from '../data/facts.ts';
import type { Tokenizer } from '../data/tokenizer.ts';
import { generate, greedyBatch } from '../infer/generate.ts';
import type { Transformer } from '../model/transformer.ts';

const EOT = '<|endoftext|>';

// ---- answering ----

/** the ids answering stops at: end-of-text and a newline, where the tokenizer has them as single tokens */
export function answerStopIds(tok: Tokenizer): number[] {
  const eot = tok.tokenId(EOT);
  const nl = tok.encode('\n');
  return [...(eot !== undefined ? [eot] : []), ...(nl.length === 1 ? [nl[0]!] : [])];
}

/** the answer in a generated continuation: decoded, end-of-text dropped, its first line, trimmed, without a final full stop */
export function answerText(tok: Tokenizer, ids: readonly number[]): string {
  return tok.decode(ids).replace(EOT, '').split('\n')[0]!.trim().replace(/\.$/, '');
}

/** the model's greedy continuation of a prompt (KV cache): stops at EOT or a newline; its answerText */
export async function greedyAnswer(gpu: Gpu, model: Transformer, tok: Tokenizer, prompt: string, maxNew = 12): Promise<string> {
  const out = await generate(gpu, model, Array.from(tok.encode(prompt)), { maxNew, temperature: 0, stopIds: answerStopIds(tok) });
  return answerText(tok, out);
}

/** greedyAnswer for many prompts, decoded together (greedyBatch): the answers in prompt order */
export async function greedyAnswers(gpu: Gpu, model: Transformer, tok: Tokenizer, prompts: readonly string[], maxNew = 12): Promise<string[]> {
  const outs = await greedyBatch(gpu, model, prompts.map((p) => Array.from(tok.encode(p))), { maxNew, stopIds: answerStopIds(tok) });
  return outs.map((ids) => answerText(tok, ids));
}

// ---- scoring ----

const ARTICLE = /^(the|a|an)\s+/i;
const ARTICLES = new Set(['a', 'an', 'the']);

/** every accepted form of a question's answer: as rendered (" the Euro" -> "the Euro"), the raw object, both without a leading article; deduplicated, in that order */
export function acceptedForms(q: Question): string[] {
  const rendered = q.answer.trim();
  const raw = q.fact.object.trim();
  const forms = [rendered, raw, rendered.replace(ARTICLE, ''), raw.replace(ARTICLE, '')].filter((f) => f !== '');
  return [...new Set(forms)];
}

/** the words of an answer after SQuAD-style normalization (see the header) */
function words(s: string): string[] {
  const plain = s.normalize('NFC').toLowerCase().replace(/[\p{P}\p{S}]/gu, '');
  return plain.split(/\s+/).filter((w) => w !== '' && !ARTICLES.has(w));
}

/** SQuAD-style normalization: lowercase, no punctuation or symbols, no articles, single spaces; diacritics and digits kept */
export function normalizeAnswer(s: string): string {
  return words(s).join(' ');
}

/** 1 when the normalized prediction equals the normalized form of any accepted answer */
export function exactMatch(pred: string, forms: readonly string[]): 0 | 1 {
  const p = normalizeAnswer(pred);
  return forms.some((f) => normalizeAnswer(f) === p) ? 1 : 0;
}

function f1Of(pred: string[], gold: string[]): number {
  if (pred.length === 0 || gold.length === 0) return pred.length === gold.length ? 1 : 0;
  const left = new Map<string, number>();
  for (const w of gold) left.set(w, (left.get(w) ?? 0) + 1);
  let common = 0;
  for (const w of pred) {
    const k = left.get(w) ?? 0;
    if (k > 0) {
      common++;
      left.set(w, k - 1);
    }
  }
  if (common === 0) return 0;
  const precision = common / pred.length;
  const recall = common / gold.length;
  return (2 * precision * recall) / (precision + recall);
}

/** SQuAD token F1 of the prediction, the best over the accepted forms (0 when there are none) */
export function tokenF1(pred: string, forms: readonly string[]): number {
  const p = words(pred);
  return forms.reduce((best, f) => Math.max(best, f1Of(p, words(f))), 0);
}

// ---- evaluation ----

export interface FactsItem {
  prompt: string;
  /** the model's answer */
  answer: string;
  accepted: string[];
  em: 0 | 1;
  f1: number;
  relation: string;
}

export interface FactsScore {
  n: number;
  /** mean exact match, in [0, 1] */
  em: number;
  /** mean token F1, in [0, 1] */
  f1: number;
}

export interface FactsEval extends FactsScore {
  byRelation: Record<string, FactsScore>;
  items: FactsItem[];
}

export interface EvalFactsOptions {
  /** new tokens per answer at most (default 12) */
  maxNew?: number;
  /** questions decoded together (default 64); the answers do not depend on it beyond float near-ties */
  batch?: number;
  /** called with each scored item, in question order, as its batch finishes */
  onItem?: (item: FactsItem) => void;
}

/** greedy answers to the questions (decoded `batch` at a time), each scored by exact match and token F1 against its accepted forms */
export async function evalFacts(gpu: Gpu, model: Transformer, tok: Tokenizer, questions: readonly Question[], opts: EvalFactsOptions = {}): Promise<FactsEval> {
  const batch = opts.batch ?? 64;
  if (!(Number.isInteger(batch) && batch > 0)) throw new EngramError(`eval facts: batch must be a positive integer, got ${batch}`);
  const items: FactsItem[] = [];
  for (let i = 0; i < questions.length; i += batch) {
    const chunk = questions.slice(i, i + batch);
    const answers = await greedyAnswers(gpu, model, tok, chunk.map((q) => q.prompt), opts.maxNew ?? 12);
    for (const [j, q] of chunk.entries()) {
      const item = scoreAnswer(q, answers[j]!);
      items.push(item);
      opts.onItem?.(item);
    }
  }
  return summarize(items);
}

/**
 * what a model that knows no facts, only each relation's most common answer, scores: every question is answered
 * with the answer that most of its relation's questions in `pool` have (ties: the first in pool order). Relations
 * with few distinct answers ("a solid", "Europe") are guessable this way; a model's exact match above this
 * baseline is what it knows of the facts themselves.
 */
export function majorityBaseline(questions: readonly Question[], pool: readonly Question[]): FactsEval {
  const counts = new Map<string, Map<string, number>>();
  for (const q of pool) {
    const c = counts.get(q.fact.relation) ?? new Map<string, number>();
    c.set(q.answer, (c.get(q.answer) ?? 0) + 1);
    counts.set(q.fact.relation, c);
  }
  const guess = new Map<string, string>();
  for (const [r, c] of counts) {
    let best = '';
    let n = -1;
    for (const [a, k] of c) if (k > n) [best, n] = [a, k];
    guess.set(r, best.trim());
  }
  return summarize(questions.map((q) => scoreAnswer(q, guess.get(q.fact.relation) ?? '')));
}

function scoreAnswer(q: Question, answer: string): FactsItem {
  const accepted = acceptedForms(q);
  return { prompt: q.prompt, answer, accepted, em: exactMatch(answer, accepted), f1: tokenF1(answer, accepted), relation: q.fact.relation };
}

function summarize(items: FactsItem[]): FactsEval {
  const groups = new Map<string, FactsItem[]>();
  for (const it of items) groups.set(it.relation, [...(groups.get(it.relation) ?? []), it]);
  const byRelation: Record<string, FactsScore> = {};
  for (const [r, g] of groups) byRelation[r] = score(g);
  return { ...score(items), byRelation, items };
}

function score(items: readonly FactsItem[]): FactsScore {
  const n = items.length;
  const mean = (f: (it: FactsItem) => number) => (n === 0 ? 0 : items.reduce((s, it) => s + f(it), 0) / n);
  return { n, em: mean((it) => it.em), f1: mean((it) => it.f1) };
}

/**
 * the questions of the given relations (all when absent; an unknown one throws, listing the known ones), at most
 * perRelation of each, evenly spaced through the relation's questions (deterministic), in relation order
 */
export function selectQuestions(qs: readonly Question[], o: { relations?: readonly string[]; perRelation?: number } = {}): Question[] {
  const relations = o.relations ?? FACT_RELATIONS;
  const unknown = relations.filter((r) => !FACT_RELATIONS.includes(r));
  if (unknown.length > 0) {
    throw new EngramError(`eval facts: unknown relation${unknown.length > 1 ? 's' : ''} ${unknown.map((r) => `'${r}'`).join(', ')}; known relations: ${FACT_RELATIONS.join(', ')}`);
  }
  if (o.perRelation !== undefined && !(Number.isInteger(o.perRelation) && o.perRelation > 0)) {
    throw new EngramError(`eval facts: questions per relation must be a positive integer, got ${o.perRelation}`);
  }
  const out: Question[] = [];
  for (const r of new Set(relations)) {
    const of = qs.filter((q) => q.fact.relation === r);
    const k = Math.min(o.perRelation ?? of.length, of.length);
    for (let i = 0; i < k; i++) out.push(of[Math.floor((i * of.length) / k)]!);
  }
  return out;
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

/** a table: one row per relation (relation, n, EM, F1) and the totals */
export function factsTable(r: FactsEval): string {
  const rows: string[][] = [['relation', 'n', 'EM', 'F1']];
  for (const [rel, s] of Object.entries(r.byRelation)) rows.push([rel, String(s.n), pct(s.em), pct(s.f1)]);
  rows.push(['total', String(r.n), pct(r.em), pct(r.f1)]);
  const width = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  const line = (row: string[]) => row.map((cell, c) => (c === 0 ? cell.padEnd(width[c]!) : cell.padStart(width[c]!))).join('  ');
  const rule = '-'.repeat(width.reduce((a, b) => a + b + 2, -2));
  return [line(rows[0]!), rule, ...rows.slice(1, -1).map(line), rule, line(rows.at(-1)!)].join('\n');
}

export interface EvalFactsArgs {
  checkpoint: string;
  /** relations to ask about (default: all) */
  relations?: string[];
  /** at most this many questions per relation (default: all) */
  n?: number;
  /** write the results here as JSON */
  out?: string;
}

type Open = (dir: string) => Promise<{ gpu: Gpu; model: Transformer; tok: Tokenizer }>;

/** `engram eval facts`: the table on stdout, the JSON (FactsEval, checkpoint, date) in a.out; `open` loads the checkpoint (commands.ts openModel) */
export async function evalFactsCommand(a: EvalFactsArgs, open: Open): Promise<FactsEval> {
  const qs = selectQuestions(allQuestions(loadFacts()), { ...(a.relations ? { relations: a.relations } : {}), ...(a.n !== undefined ? { perRelation: a.n } : {}) });
  const { gpu, model, tok } = await open(a.checkpoint);
  try {
    let done = 0;
    const result = await evalFacts(gpu, model, tok, qs, {
      onItem: () => {
        done++;
        if (process.stderr.isTTY) process.stderr.write(`\r${done}/${qs.length} questions`);
      },
    });
    if (process.stderr.isTTY) process.stderr.write('\r\x1b[K');
    console.log(factsTable(result));
    if (a.out) {
      writeFileSync(a.out, JSON.stringify({ checkpoint: a.checkpoint, date: new Date().toISOString(), ...result }, null, 1));
      console.log(`results in ${a.out}`);
    }
    return result;
  } finally {
    model.dispose();
    gpu.destroy();
  }
}
