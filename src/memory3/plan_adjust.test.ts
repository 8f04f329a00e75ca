import assert from 'node:assert/strict';
import { test } from 'node:test';
import { adjustPlan } from './plan_adjust.ts';

test('adjustPlan: a span\'s added references first in the chunks it overlaps, its denied ones in none of them, the rest moved up', () => {
  // 4 chunks of 10 tokens, 4 planned per chunk, 2 kept; the span [12, 25) (chunks 1, 2) adds 9 and denies 3
  const plan = Int32Array.from([3, 1, -1, -1, 3, 2, 5, 6, 9, 3, 4, 5, 3, 4, -1, -1]);
  const spans = [{ start: 12, end: 25, add: [9], deny: [3] }];
  assert.deepEqual([...adjustPlan(plan, { perChunk: 4, keep: 2, chunk: 10, spans })], [3, 1, 9, 2, 9, 4, 3, 4]);
  // no spans, keep = perChunk: the plan itself
  assert.deepEqual([...adjustPlan(plan, { perChunk: 4, keep: 4, chunk: 10, spans: [] })], [...plan]);
});

test('adjustPlan: a span over several chunks, spans in any order, more added than kept; clear errors', () => {
  const plan = Int32Array.from([7, 1, 7, 1, 7, 1, 7, 1]);
  const spans = [{ start: 30, end: 31, add: [8, 9, 10], deny: [] }, { start: 5, end: 15, add: [], deny: [1] }];
  assert.deepEqual([...adjustPlan(plan, { perChunk: 2, keep: 2, chunk: 10, spans })], [7, -1, 7, -1, 7, 1, 8, 9]);
  assert.throws(() => adjustPlan(plan, { perChunk: 2, keep: 3, chunk: 10, spans: [] }), /keep <= perChunk/);
  assert.throws(() => adjustPlan(Int32Array.from([1, 2, 3]), { perChunk: 2, keep: 1, chunk: 10, spans: [] }), /multiple of perChunk/);
  assert.throws(() => adjustPlan(plan, { perChunk: 2, keep: 1, chunk: 10, spans: [{ start: 0, end: 10, add: [], deny: [] }, { start: 5, end: 12, add: [], deny: [] }] }), /overlap/);
});
