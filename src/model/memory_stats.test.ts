import assert from 'node:assert/strict';
import { test } from 'node:test';
import { memoryStats, tokenReads } from './memory_stats.ts';

test('memory stats: usage, KL to uniform and read entropy on hand-made reads', () => {
  // N = 4 slots, k = 2; two reads: flat over slots {0,1} and {2,3}: every slot gets equal mass
  const flat = memoryStats([0, 1, 2, 3], [0.5, 0.5, 0.5, 0.5], 4, 2);
  assert.equal(flat.usage, 1);
  assert.ok(Math.abs(flat.kl) < 1e-12);
  assert.ok(Math.abs(flat.entropy - Math.log(2)) < 1e-12);
  // all mass on slot 0: KL = log N, entropy 0, usage counts slots read at all
  const peaked = memoryStats([0, 1, 0, 1], [1, 0, 1, 0], 4, 2);
  assert.equal(peaked.usage, 0.5);
  assert.ok(Math.abs(peaked.kl - Math.log(4)) < 1e-12);
  assert.equal(peaked.entropy, 0);
  assert.deepEqual(tokenReads([5, 6, 7, 8], [0.9, 0.1, 0.6, 0.4], 0, 2, 2)[2], { head: 1, slot: 7, weight: 0.6 });
  assert.throws(() => memoryStats([1, 2, 3], [1, 1], 4, 2), /3 slots and 2 weights/);
});
