import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { gradCheck } from './fd.ts';
import { TINY, tinyWeights } from '../testing/llama.ts';
import { llamaLossAndGrads } from './llama.ts';

test('reference Llama with a memory layer: every parameter gradient matches finite differences', () => {
  const [B, T] = [2, 3];
  const W = tinyWeights(TINY, 1);
  const rng = new Rng(2);
  const ids = Array.from({ length: B * T }, () => rng.int(TINY.vocabSize));
  const targets = Array.from({ length: B * T }, () => rng.int(TINY.vocabSize));
  const { grads } = llamaLossAndGrads(W, TINY, ids, targets, B, T);
  gradCheck('llama', W, grads, () => llamaLossAndGrads(W, TINY, ids, targets, B, T).loss, { samples: 6, h: 1e-6, tol: 1e-5 });
});
