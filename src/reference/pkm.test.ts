import assert from 'node:assert/strict';
import { test } from 'node:test';
import { randomPkm } from '../testing/pkm.ts';
import { Rng } from '../testing/rng.ts';
import { dot, gradCheck } from './fd.ts';
import { pkmBackward, pkmForward, type PkmShape, type PkmWeights } from './pkm.ts';


for (const [gated, qkNorm] of [[true, false], [false, false], [true, true]] as const) {
  test(`reference memory layer (${gated ? 'Memory+' : 'plain'}${qkNorm ? ', qk-norm' : ''}) backward matches finite differences`, () => {
    const p: PkmShape = { d: 6, H: 2, n: 5, k: 3, dk: 4, gated, qkNorm };
    const T = 3;
    const { W, x, g } = randomPkm(p, T, gated ? 1 : 2);
    const { cache } = pkmForward(x, T, W, p);
    const grads = pkmBackward(g, cache, W, p);
    const inputs: Record<string, Float64Array> = { x, Wq: W.Wq, bq: W.bq, keys: W.keys, values: W.values };
    const analytic: Record<string, ArrayLike<number>> = { x: grads.dx, Wq: grads.dWq, bq: grads.dbq, keys: grads.dkeys, values: grads.dvalues };
    if (gated) {
      Object.assign(inputs, { Ws: W.Ws, bs: W.bs, Wo: W.Wo, bo: W.bo });
      Object.assign(analytic, { Ws: grads.dWs!, bs: grads.dbs!, Wo: grads.dWo!, bo: grads.dbo! });
    }
    if (qkNorm) {
      Object.assign(inputs, { gq: W.gq, gk: W.gk });
      Object.assign(analytic, { gq: grads.dgq!, gk: grads.dgk! });
    }
    // the selection must not change under the probe's perturbation: generic inputs, small h
    gradCheck('pkm', inputs, analytic, () => dot(pkmForward(x, T, W as PkmWeights, p).out, g), { samples: 40, h: 1e-6, tol: 1e-5 });
  });
}

test('reference memory layer reads the exact top-k of all n^2 slots, ties to the lower slot', () => {
  // integer-valued keys and queries make many equal scores
  const p: PkmShape = { d: 2, H: 1, n: 6, k: 4, dk: 2, gated: false };
  const T = 5;
  const rng = new Rng(3);
  const W = {
    Wq: Float64Array.from({ length: 2 * 2 }, () => rng.int(3) - 1),
    bq: new Float64Array(2),
    keys: Float64Array.from({ length: 2 * 6 }, () => rng.int(3) - 1),
    values: rng.normals(36 * 2),
  };
  const x = Float64Array.from({ length: T * 2 }, () => rng.int(5) - 2);
  const { cache } = pkmForward(x, T, W, p);
  for (let t = 0; t < T; t++) {
    const q = [0, 1].map((o) => W.Wq[o * 2]! * x[t * 2]! + W.Wq[o * 2 + 1]! * x[t * 2 + 1]!);
    const s = (half: number, j: number) => q[half]! * W.keys[half * 6 + j]!;
    const all = Array.from({ length: 36 }, (_, slot) => ({ slot, v: s(0, Math.floor(slot / 6)) + s(1, slot % 6) }));
    all.sort((a, b) => b.v - a.v || a.slot - b.slot);
    assert.deepEqual([...cache.slots.slice(t * 4, t * 4 + 4)], all.slice(0, 4).map((e) => e.slot), `token ${t}`);
  }
});
