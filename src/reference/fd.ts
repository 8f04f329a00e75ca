// finite differences: checks a reference backward against central differences of its forward,
// in float64. loss = sum(out * g) for a fixed random g, so dloss/dout = g.

import { Rng } from '../testing/rng.ts';

export interface GradCheckOptions {
  /** how many elements of each input to probe (all when larger than the input) */
  samples?: number;
  h?: number;
  /** norm-wise relative tolerance between analytic and numeric gradients */
  tol?: number;
  seed?: number;
}

/**
 * For each named input, perturbs sampled elements by +-h, recomputes `loss()`, and compares the
 * central difference with `analytic[name]`. Inputs are mutated in place and restored.
 */
export function gradCheck(
  op: string,
  inputs: Record<string, Float64Array>,
  analytic: Record<string, ArrayLike<number>>,
  loss: () => number,
  opts: GradCheckOptions = {},
): void {
  const { samples = 24, h = 1e-5, tol = 1e-6, seed = 7 } = opts;
  const rng = new Rng(seed);
  for (const [name, x] of Object.entries(inputs)) {
    const grad = analytic[name];
    if (!grad) throw new Error(`${op}: no analytic gradient for '${name}'`);
    const idx = x.length <= samples ? [...x.keys()] : Array.from({ length: samples }, () => rng.int(x.length));
    let num = 0;
    let den = 0;
    let worst = '';
    let worstD = -1;
    for (const i of idx) {
      const x0 = x[i]!;
      x[i] = x0 + h;
      const lp = loss();
      x[i] = x0 - h;
      const lm = loss();
      x[i] = x0;
      const fd = (lp - lm) / (2 * h);
      const d = Math.abs(fd - grad[i]!);
      num += d * d;
      den += fd * fd;
      if (d > worstD) {
        worstD = d;
        worst = `[${i}] analytic ${grad[i]} numeric ${fd}`;
      }
    }
    const rel = Math.sqrt(num / Math.max(den, 1e-300));
    if (!(rel <= tol) && !(Math.sqrt(num) <= tol)) {
      throw new Error(`${op}: gradient of '${name}' disagrees with finite differences: rel ${rel.toExponential(3)}; worst ${worst}`);
    }
  }
}

/** sum(a * b) */
export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}
