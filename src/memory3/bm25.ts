// retrieval for Memory³ training: which reference each 64-token chunk of the training stream
// reads (spec shared/specs/memory3.md §4: each chunk retrieves 1 reference and attends to its own
// and the previous 4 chunks' references).
//
// training retrieves for every chunk of the stream, millions of queries, so it does not go
// through the bank's LanceDB search (milliseconds each): TokenBm25 is an in-memory BM25 over
// token ids (the terms are the tokenizer's ids: no text analysis, the IDF weighs common tokens
// down), Okapi BM25 with k1 = 1.2, b = 0.75. inference retrieves through the bank (BM25 over
// words): the two rank alike but not identically; planRetrieval is fixed per corpus, so a
// resumed run reads the same references.
//
// leakage: a chunk never gets a reference that its training sequence nearly copies. planRetrieval
// checks each candidate, best first, with overlap.ts against the window of `context` tokens
// around the chunk (the sequence it trains in, at most) and takes the first below the threshold.

import { EngramError } from '../gpu/errors.ts';
import { leaks } from './overlap.ts';

const K1 = 1.2;
const B = 0.75;

/** BM25 over documents of token ids */
export class TokenBm25 {
  /** per token: its documents (ascending) and term frequencies there */
  private readonly postings = new Map<number, { docs: Int32Array; tf: Float64Array }>();
  /** per document: the BM25 length normalisation K1 (1 - B + B length / avg) */
  private readonly norm: Float64Array;
  /** scratch for search: scores per document and the documents touched */
  private readonly scores: Float64Array;
  private readonly touched: Int32Array;

  constructor(private readonly docs: readonly (readonly number[])[]) {
    const lists = new Map<number, { docs: number[]; tf: number[] }>();
    let total = 0;
    docs.forEach((d, i) => {
      total += d.length;
      const tf = new Map<number, number>();
      for (const t of d) tf.set(t, (tf.get(t) ?? 0) + 1);
      for (const [t, n] of tf) {
        let p = lists.get(t);
        if (!p) lists.set(t, (p = { docs: [], tf: [] }));
        p.docs.push(i);
        p.tf.push(n);
      }
    });
    for (const [t, p] of lists) this.postings.set(t, { docs: Int32Array.from(p.docs), tf: Float64Array.from(p.tf) });
    const avg = docs.length > 0 ? total / docs.length : 0;
    this.norm = Float64Array.from(docs, (d) => K1 * (1 - B + (B * d.length) / avg));
    this.scores = new Float64Array(docs.length);
    this.touched = new Int32Array(docs.length);
  }

  /**
   * the k best documents for a query of token ids (each distinct id counts once), best first;
   * ties: lower index. tokens in more than maxDf of the documents (default 0.25) are skipped: their
   * IDF is small and their postings long (the tokens of "the", " of")
   */
  search(query: ArrayLike<number>, k: number, maxDf = 0.25): { doc: number; score: number }[] {
    const N = this.docs.length;
    if (k <= 0) return [];
    const { scores, touched, norm } = this;
    let n = 0;
    for (const t of new Set(Array.from(query))) {
      const p = this.postings.get(t);
      if (!p || (p.docs.length > maxDf * N && N >= 8)) continue;
      const idf = Math.log(1 + (N - p.docs.length + 0.5) / (p.docs.length + 0.5));
      for (let i = 0; i < p.docs.length; i++) {
        const doc = p.docs[i]!;
        const tf = p.tf[i]!;
        if (scores[doc] === 0) touched[n++] = doc; // every term's score is > 0
        scores[doc] = scores[doc]! + (idf * tf * (K1 + 1)) / (tf + norm[doc]!);
      }
    }
    // the k best by (score desc, doc asc), kept in order by insertion
    const best: { doc: number; score: number }[] = [];
    for (let i = 0; i < n; i++) {
      const doc = touched[i]!;
      const score = scores[doc]!;
      scores[doc] = 0;
      if (best.length === k && !(score > best[k - 1]!.score || (score === best[k - 1]!.score && doc < best[k - 1]!.doc))) continue;
      let j = Math.min(best.length, k - 1);
      while (j > 0 && (score > best[j - 1]!.score || (score === best[j - 1]!.score && doc < best[j - 1]!.doc))) j--;
      best.splice(j, 0, { doc, score });
      if (best.length > k) best.pop();
    }
    return best;
  }
}

export interface RetrievalPlanOptions {
  /** tokens per chunk (default 64) */
  chunk?: number;
  /** references per chunk (default 1, the paper's training scheme; more: as many as inference reads, each chunk its own) */
  perChunk?: number;
  /** candidates checked per chunk for leakage, best first (default max(5, 2 perChunk)) */
  candidates?: number;
  /** tokens around a chunk that it trains with (its training sequence length; default 2048): the leakage window */
  context?: number;
  /** overlap above which a pair leaks (default 0.9) */
  threshold?: number;
}

/**
 * the reference (an index into refs, or -1: nothing retrieved or every candidate leaks) of every
 * `chunk`-token chunk of the stream, chunk i covering tokens [i chunk, (i + 1) chunk); with
 * perChunk p, the p best that do not leak, at [i p, (i + 1) p), best first, -1 after the last found
 */
export function planRetrieval(stream: ArrayLike<number>, refs: readonly (readonly number[])[], o: RetrievalPlanOptions = {}): Int32Array {
  return planChunks(stream, refs, o, 0, Math.floor(stream.length / (o.chunk ?? 64)));
}

/**
 * planRetrieval's entries for chunks [from, to) of the stream alone ((to - from) perChunk of
 * them): the same as that slice of the whole plan (plan_parallel.ts splits the stream so)
 */
export function planChunks(stream: ArrayLike<number>, refs: readonly (readonly number[])[], o: RetrievalPlanOptions, from: number, to: number): Int32Array {
  const chunk = o.chunk ?? 64;
  const per = o.perChunk ?? 1;
  const candidates = o.candidates ?? Math.max(5, 2 * per);
  if (!(Number.isInteger(per) && per > 0 && per <= candidates)) throw new EngramError(`planRetrieval: perChunk ${per} must be a positive integer, at most candidates ${candidates}`);
  const context = o.context ?? 2048;
  if (!(Number.isInteger(chunk) && chunk > 0 && Number.isInteger(candidates) && candidates > 0 && context >= chunk)) {
    throw new EngramError(`planRetrieval: chunk ${chunk} and candidates ${candidates} must be positive integers and context ${context} at least a chunk`);
  }
  const index = new TokenBm25(refs);
  const n = Math.floor(stream.length / chunk);
  if (!(Number.isInteger(from) && Number.isInteger(to) && 0 <= from && from <= to && to <= n)) throw new EngramError(`planRetrieval: chunks [${from}, ${to}) are not within the stream's ${n}`);
  const plan = new Int32Array((to - from) * per).fill(-1);
  const slice = (a: number, b: number) => Array.from({ length: Math.max(0, Math.min(stream.length, b) - Math.max(0, a)) }, (_, i) => stream[Math.max(0, a) + i]!);
  for (let c = from; c < to; c++) {
    const q = slice(c * chunk, (c + 1) * chunk);
    const around = slice((c + 1) * chunk - context, c * chunk + context);
    let found = 0;
    for (const hit of index.search(q, candidates)) {
      if (!leaks(around, refs[hit.doc]!, o.threshold ?? 0.9)) {
        plan[(c - from) * per + found++] = hit.doc;
        if (found === per) break;
      }
    }
  }
  return plan;
}
