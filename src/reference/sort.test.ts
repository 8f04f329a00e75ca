import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { segmentStarts, sortPairs } from './sort.ts';

test('reference sort is stable and saturates keys', () => {
  const rng = new Rng(1);
  const keys = Array.from({ length: 500 }, () => rng.int(40));
  const values = keys.map((_, i) => 1000 + i);
  const s = sortPairs(keys, values, 5); // keys 31..39 become 31
  for (let i = 1; i < keys.length; i++) {
    assert.ok(s.keys[i - 1]! <= s.keys[i]!, 'keys ascend');
    if (s.keys[i - 1] === s.keys[i]) assert.ok(s.values[i - 1]! < s.values[i]!, 'ties keep input order');
  }
  assert.equal(Math.max(...s.keys), 31);
  // a multiset of (key, value) pairs is preserved
  const pairs = (k: ArrayLike<number>, v: ArrayLike<number>) => Array.from(k, (x, i) => `${x}:${v[i]}`).sort();
  assert.deepEqual(pairs(s.keys, s.values), pairs(keys.map((k) => Math.min(k, 31)), values));
  assert.deepEqual(Array.from(sortPairs([2, 0, 2, 1]).values), [1, 3, 0, 2]);
});

test('reference segment starts', () => {
  assert.deepEqual(segmentStarts([0, 0, 3, 5, 5, 5]), [0, 2, 3, 6]);
  assert.deepEqual(segmentStarts([7]), [0, 1]);
  assert.deepEqual(segmentStarts([]), [0]);
});
