// seeded weights for the memory layer's tests (reference/pkm.ts shapes): every parameter,
// gains around 1 for qk-norm, and an input x and an output gradient g.

import type { PkmShape } from '../reference/pkm.ts';
import { Rng } from './rng.ts';

export function randomPkm(p: PkmShape, T: number, seed: number) {
  const rng = new Rng(seed);
  const { d, H, n, dk } = p;
  const W = {
    Wq: rng.normals(H * dk * d, 0.5),
    bq: rng.normals(H * dk, 0.1),
    keys: rng.normals(2 * H * n * (dk / 2)),
    values: rng.normals(n * n * d),
    Ws: rng.normals(d * d, 0.5),
    bs: rng.normals(d, 0.1),
    Wo: rng.normals(d * d, 0.5),
    bo: rng.normals(d, 0.1),
    gq: rng.normals(dk / 2, 0.3, 1),
    gk: rng.normals(dk / 2, 0.3, 1),
  } satisfies Record<string, Float64Array>;
  return { W, x: rng.normals(T * d), g: rng.normals(T * d) };
}
