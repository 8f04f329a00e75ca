// the leakage filter: overlap() against its definition written out the slow way (every window of
// 2|r| + 1 tokens, a plain LCS each), on seeded small alphabets where matches are common; and the
// cases that matter in training (a verbatim copy, a scattered copy, unrelated text).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { leaks, overlap } from './overlap.ts';

function lcs(a: number[], b: number[]): number {
  const d = Array.from({ length: a.length + 1 }, () => new Array<number>(b.length + 1).fill(0));
  for (let i = 1; i <= a.length; i++) for (let j = 1; j <= b.length; j++) d[i]![j] = a[i - 1] === b[j - 1] ? d[i - 1]![j - 1]! + 1 : Math.max(d[i - 1]![j]!, d[i]![j - 1]!);
  return d[a.length]![b.length]!;
}

function slow(t: number[], r: number[]): number {
  if (r.length === 0) return 0;
  let best = 0;
  for (let s = 0; s < Math.max(1, t.length); s++) best = Math.max(best, lcs(t.slice(s, s + 2 * r.length + 1), r));
  return best / r.length;
}

test('overlap equals the windowed-LCS definition on random sequences', () => {
  const rng = new Rng(5);
  for (let trial = 0; trial < 300; trial++) {
    const alphabet = 2 + rng.int(5);
    const t = Array.from({ length: rng.int(40) }, () => rng.int(alphabet));
    const r = Array.from({ length: rng.int(12) }, () => rng.int(alphabet));
    assert.equal(overlap(t, r), slow(t, r), JSON.stringify({ t, r }));
    assert.equal(leaks(t, r, 0.5), slow(t, r) > 0.5);
  }
});

test('a verbatim copy leaks, a copy spread wider than 2|r| does not, unrelated text does not', () => {
  const r = Array.from({ length: 20 }, (_, i) => 100 + i);
  const filler = (n: number, from: number) => Array.from({ length: n }, (_, i) => from + i);
  assert.equal(overlap([...filler(30, 0), ...r, ...filler(30, 50)], r), 1);
  assert.ok(leaks([...filler(30, 0), ...r, ...filler(30, 50)], r));
  // every token of r, but three filler tokens between neighbours: the window holds 11 of them
  const spread = r.flatMap((x, i) => [x, ...filler(3, 200 + 3 * i)]);
  assert.equal(overlap(spread, r), 11 / 20);
  assert.ok(!leaks(spread, r));
  // 19 of 20 in order, one replaced: 0.95 > 0.9
  assert.ok(leaks([...r.slice(0, 7), 999, ...r.slice(8)], r));
  assert.equal(overlap(filler(100, 0), r), 0);
  assert.equal(overlap([1, 2, 3], []), 0);
});

test('leaks() agrees with the definition at several thresholds (its start pruning is exact)', () => {
  const rng = new Rng(9);
  for (let trial = 0; trial < 300; trial++) {
    const alphabet = 2 + rng.int(4);
    const t = Array.from({ length: rng.int(50) }, () => rng.int(alphabet));
    const r = Array.from({ length: 1 + rng.int(12) }, () => rng.int(alphabet));
    for (const th of [0.3, 0.6, 0.9]) assert.equal(leaks(t, r, th), slow(t, r) > th, JSON.stringify({ t, r, th }));
  }
});
