// TokenBm25 ranks by shared rare tokens; planRetrieval gives each chunk its best reference that
// the chunk's training context does not nearly copy.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { planChunks, planRetrieval, TokenBm25 } from './bm25.ts';
import { planRetrievalParallel } from './plan_parallel.ts';

test('TokenBm25: rare shared tokens rank first; common tokens weigh little; ties by index', () => {
  const docs = [
    [1, 2, 3, 50, 51],
    [1, 2, 3, 60, 61],
    [1, 2, 3, 70, 71],
    [1, 2, 3, 4, 5],
  ];
  const idx = new TokenBm25(docs);
  assert.deepEqual(idx.search([1, 60, 9], 2).map((h) => h.doc), [1, 0]);
  assert.deepEqual(idx.search([70, 71], 1).map((h) => h.doc), [2]);
  assert.deepEqual(idx.search([99], 3), []);
  const s = idx.search([1, 2, 3, 50], 4);
  assert.equal(s[0]!.doc, 0);
  assert.ok(s[0]!.score > s[1]!.score && s[1]!.score === s[2]!.score && s[1]!.doc < s[2]!.doc);
});

test('TokenBm25.search equals a plain scoring of every document (Okapi BM25, k1 1.2, b 0.75), best k by score then index', () => {
  const rng = new Rng(4);
  for (let trial = 0; trial < 20; trial++) {
    // few distinct tokens, so that scores tie; documents of 1..12 tokens; some tokens past maxDf
    const docs = Array.from({ length: 5 + rng.int(60) }, () => Array.from({ length: 1 + rng.int(12) }, () => rng.int(trial % 2 ? 6 : 40)));
    const idx = new TokenBm25(docs);
    const N = docs.length;
    const avg = docs.reduce((n, d) => n + d.length, 0) / N;
    for (let q = 0; q < 5; q++) {
      const query = Array.from({ length: 1 + rng.int(8) }, () => rng.int(45));
      const k = 1 + rng.int(8);
      const maxDf = [0.25, 0.5, 1][q % 3]!;
      const want: { doc: number; score: number }[] = [];
      docs.forEach((d, doc) => {
        let score = 0;
        let hit = false;
        for (const t of new Set(query)) {
          const df = docs.filter((x) => x.includes(t)).length;
          if (df === 0 || (df > maxDf * N && N >= 8)) continue;
          const tf = d.filter((x) => x === t).length;
          if (tf === 0) continue;
          hit = true;
          score += (Math.log(1 + (N - df + 0.5) / (df + 0.5)) * tf * 2.2) / (tf + 1.2 * (1 - 0.75 + (0.75 * d.length) / avg));
        }
        if (hit) want.push({ doc, score });
      });
      want.sort((a, b) => b.score - a.score || a.doc - b.doc);
      const got = idx.search(query, k, maxDf);
      assert.deepEqual(got.map((h) => h.doc), want.slice(0, k).map((h) => h.doc), `trial ${trial} query ${query.join(' ')} k ${k}`);
      got.forEach((h, i) => assert.ok(Math.abs(h.score - want[i]!.score) < 1e-9 * Math.max(1, want[i]!.score)));
    }
  }
});

test('planRetrieval: one reference per chunk, the best that does not leak; -1 when every candidate leaks or nothing matches', () => {
  const refA = [100, 101, 102, 103, 104, 105, 106, 107, 108, 109];
  const refB = [100, 101, 102, 200, 201, 202, 203, 204, 205, 206];
  const filler = (n: number, from: number) => Array.from({ length: n }, (_, i) => from + (i % 40));
  // chunk 0 shares tokens with both and copies refA verbatim: refA leaks, refB is taken
  // chunk 1 shares nothing; chunk 2 matches refB best, and nothing in its context copies it
  const stream = [...refA, 100, 101, 102, ...filler(3, 0), ...filler(16, 300), ...filler(16, 400), 200, 201, 202, ...filler(13, 500)];
  assert.equal(stream.length, 64);
  const plan = planRetrieval(stream, [refA, refB], { chunk: 16, context: 16 });
  assert.deepEqual([...plan], [1, -1, -1, 1]);
  const wide = planRetrieval(stream, [refA, refB], { chunk: 16, context: 64 });
  assert.equal(wide[3], 1);
  assert.throws(() => planRetrieval(stream, [refA], { chunk: 0 }), /positive integers/);
  // perChunk 2: each chunk's best non-leaking references in order, -1 after the last found
  const two = planRetrieval(stream, [refA, refB], { chunk: 16, context: 64, perChunk: 2 });
  assert.deepEqual([...two], [1, -1, -1, -1, -1, -1, 1, -1]);
  const loose = planRetrieval(stream, [refA, refB], { chunk: 16, context: 16, perChunk: 2, threshold: 1.1 });
  assert.deepEqual([...loose.subarray(0, 2)], [0, 1]);
  assert.throws(() => planRetrieval(stream, [refA], { perChunk: 3, candidates: 2 }), /perChunk 3 must be a positive integer, at most candidates 2/);
});

test('planRetrievalParallel: worker threads plan exactly what planRetrieval does', async () => {
  const rng = new Rng(21);
  const refs = Array.from({ length: 300 }, () => Array.from({ length: 8 + rng.int(20) }, () => rng.int(400)));
  const stream = Uint32Array.from({ length: 64 * 5000 + 17 }, () => rng.int(400));
  for (let i = 0; i < 40; i++) stream.set(refs[i]!, 64 * 37 * i + 5); // some copies, which leak
  const o = { chunk: 64, context: 256, perChunk: 3 };
  const want = planRetrieval(stream, refs, o);
  assert.deepEqual(await planRetrievalParallel(stream, refs, o, 2), want);
  assert.deepEqual(planChunks(stream, refs, o, 100, 160), want.subarray(300, 480));
});
