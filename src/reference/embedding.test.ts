import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { dot, gradCheck } from './fd.ts';
import { embeddingBackward, embeddingForward } from './embedding.ts';

test('reference embedding backward matches finite differences', () => {
  const rng = new Rng(1);
  const [V, C] = [5, 3];
  const ids = [4, 0, 2, 0, 0, 4, 1];
  const W = rng.normals(V * C);
  const g = rng.normals(ids.length * C);
  gradCheck('embedding', { W }, { W: embeddingBackward(g, ids, V, C) }, () => dot(embeddingForward(W, ids, V, C), g), { samples: V * C });
});
