import { test } from 'node:test';
import { Rng } from '../testing/rng.ts';
import { dot, gradCheck } from './fd.ts';
import { ropeBackward, ropeForward } from './rope.ts';

test('reference rope backward matches finite differences', () => {
  const rng = new Rng(1);
  for (const d of [
    { B: 2, T: 3, NH: 2, HS: 6, base: 10000 },
    { B: 1, T: 2, NH: 1, HS: 8, base: 500, pos0: 7 },
    { B: 1, T: 3, NH: 3, HS: 4, positions: [5, 0, 2] },
  ]) {
    const n = d.B * d.T * d.NH * d.HS;
    const x = rng.normals(n);
    const g = rng.normals(n);
    gradCheck('rope', { x }, { x: ropeBackward(g, d) }, () => dot(ropeForward(x, d), g), { samples: n });
  }
});
