// TokenBm25 ranks by shared rare tokens; planRetrieval gives each chunk its best reference that
// the chunk's training context does not nearly copy.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { planRetrieval, TokenBm25 } from './bm25.ts';

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
