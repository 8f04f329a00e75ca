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
  private readonly postings = new Map<number, { doc: number; tf: number }[]>();
  private readonly lengths: Uint32Array;
  private readonly avg: number;

  constructor(private readonly docs: readonly (readonly number[])[]) {
    this.lengths = new Uint32Array(docs.length);
    let total = 0;
    docs.forEach((d, i) => {
      this.lengths[i] = d.length;
      total += d.length;
      const tf = new Map<number, number>();
      for (const t of d) tf.set(t, (tf.get(t) ?? 0) + 1);
      for (const [t, n] of tf) {
        let p = this.postings.get(t);
        if (!p) this.postings.set(t, (p = []));
        p.push({ doc: i, tf: n });
      }
    });
    this.avg = docs.length > 0 ? total / docs.length : 0;
  }

  /**
   * the k best documents for a query of token ids (each distinct id counts once), best first;
   * ties: lower index. tokens in more than maxDf of the documents (default 0.25) are skipped: their
   * IDF is small and their postings long (the tokens of "the", " of")
   */
  search(query: ArrayLike<number>, k: number, maxDf = 0.25): { doc: number; score: number }[] {
    const N = this.docs.length;
    const scores = new Map<number, number>();
    for (const t of new Set(Array.from(query))) {
      const p = this.postings.get(t);
      if (!p || (p.length > maxDf * N && N >= 8)) continue;
      const idf = Math.log(1 + (N - p.length + 0.5) / (p.length + 0.5));
      for (const { doc, tf } of p) {
        const s = (idf * tf * (K1 + 1)) / (tf + K1 * (1 - B + (B * this.lengths[doc]!) / this.avg));
        scores.set(doc, (scores.get(doc) ?? 0) + s);
      }
    }
    return [...scores].map(([doc, score]) => ({ doc, score })).sort((a, b) => b.score - a.score || a.doc - b.doc).slice(0, k);
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
  const plan = new Int32Array(n * per).fill(-1);
  const slice = (a: number, b: number) => Array.from({ length: Math.max(0, Math.min(stream.length, b) - Math.max(0, a)) }, (_, i) => stream[Math.max(0, a) + i]!);
  for (let c = 0; c < n; c++) {
    const q = slice(c * chunk, (c + 1) * chunk);
    const around = slice((c + 1) * chunk - context, c * chunk + context);
    let found = 0;
    for (const hit of index.search(q, candidates)) {
      if (!leaks(around, refs[hit.doc]!, o.threshold ?? 0.9)) {
        plan[c * per + found++] = hit.doc;
        if (found === per) break;
      }
    }
  }
  return plan;
}
