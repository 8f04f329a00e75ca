// top-k and product-key top-k reference (the selection of the product-key memory layer), float64.
//
//   topk            values, indices (rows, k) = the k largest of each scores row (rows, n),
//                   descending; ties -> lower index first; NaN reads as -inf (and is returned
//                   as -inf)
//   topkBackward    dscores (rows, n) = dvalues scattered to indices, 0 elsewhere (=; a repeated
//                   index sums its entries)
//   productTopk     per (t, h) over the k x k candidates (a, b) of the half rows (2h, t) and
//                   (2h+1, t) of values/indices [2H, T, k]: score = v1[a] + v2[b], slot =
//                   i1[a] * n + i2[b]; the k best (score desc, ties -> lower slot first) give
//                   slots, pick = a << 16 | b, scores, and weights = softmax(scores) [T, H, k]
//   productTopkBackward
//                   dvalues [2H, T, k] (=) from dweights [T, H, k], the selection held fixed:
//                   dS_j = w_j (dw_j - sum_i w_i dw_i); dvalues[(2h,t), a] = sum of dS_j over j
//                   with pick_j.a = a, dvalues[(2h+1,t), b] likewise with pick_j.b = b
//
// candidate scores are rounded to f32 (Math.fround), as the GPU adds them: two f32 sums that tie
// on the GPU tie here too, so the slot tie rule picks the same candidates. the softmax is f64.

/** NaN reads as -inf: a NaN score is never selected ahead of a number */
const num = (v: number): number => (Number.isNaN(v) ? -Infinity : v);

/** a before b when a's value is larger, or equal with a lower tie key */
const desc = (va: number, ta: number, vb: number, tb: number): number => (va > vb ? -1 : va < vb ? 1 : ta - tb);

export interface TopK {
  values: Float64Array;
  indices: Uint32Array;
}

export function topk(scores: ArrayLike<number>, rows: number, n: number, k: number): TopK {
  const values = new Float64Array(rows * k);
  const indices = new Uint32Array(rows * k);
  const order = Array.from({ length: n }, (_, i) => i);
  for (let r = 0; r < rows; r++) {
    const v = (i: number) => num(scores[r * n + i]!);
    order.sort((a, b) => desc(v(a), a, v(b), b));
    for (let j = 0; j < k; j++) {
      values[r * k + j] = v(order[j]!);
      indices[r * k + j] = order[j]!;
    }
  }
  return { values, indices };
}

export function topkBackward(indices: ArrayLike<number>, dvalues: ArrayLike<number>, rows: number, n: number, k: number): Float64Array {
  const ds = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    for (let j = 0; j < k; j++) {
      const i = indices[r * k + j]!;
      if (i < n) ds[r * n + i]! += dvalues[r * k + j]!;
    }
  }
  return ds;
}

export interface ProductTopK {
  slots: Uint32Array;
  weights: Float64Array;
  pick: Uint32Array;
  scores: Float64Array;
}

/** in-place softmax of w[o, o + k) in float64 (max-subtracted) */
function softmax(w: Float64Array, o: number, k: number): void {
  let m = -Infinity;
  for (let j = 0; j < k; j++) m = Math.max(m, w[o + j]!);
  let s = 0;
  for (let j = 0; j < k; j++) s += w[o + j] = Math.exp(w[o + j]! - m);
  for (let j = 0; j < k; j++) w[o + j]! /= s;
}

export function productTopk(values: ArrayLike<number>, indices: ArrayLike<number>, T: number, H: number, k: number, n: number): ProductTopK {
  const out: ProductTopK = {
    slots: new Uint32Array(T * H * k),
    weights: new Float64Array(T * H * k),
    pick: new Uint32Array(T * H * k),
    scores: new Float64Array(T * H * k),
  };
  const cand = Array.from({ length: k * k }, (_, c) => ({ a: Math.floor(c / k), b: c % k, s: 0, slot: 0 }));
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) {
      const r1 = (2 * h * T + t) * k;
      const r2 = ((2 * h + 1) * T + t) * k;
      for (const c of cand) {
        c.s = num(Math.fround(values[r1 + c.a]! + values[r2 + c.b]!));
        c.slot = indices[r1 + c.a]! * n + indices[r2 + c.b]!;
      }
      const best = [...cand].sort((x, y) => desc(x.s, x.slot, y.s, y.slot));
      const o = (t * H + h) * k;
      for (let j = 0; j < k; j++) {
        const c = best[j]!;
        out.slots[o + j] = c.slot;
        out.pick[o + j] = ((c.a << 16) | c.b) >>> 0;
        out.scores[o + j] = c.s;
        out.weights[o + j] = c.s;
      }
      softmax(out.weights, o, k);
    }
  }
  return out;
}

export function productTopkBackward(weights: ArrayLike<number>, pick: ArrayLike<number>, dweights: ArrayLike<number>, T: number, H: number, k: number): Float64Array {
  const dv = new Float64Array(2 * H * T * k);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) {
      const o = (t * H + h) * k;
      let dot = 0;
      for (let j = 0; j < k; j++) dot += weights[o + j]! * dweights[o + j]!;
      const r1 = (2 * h * T + t) * k;
      const r2 = ((2 * h + 1) * T + t) * k;
      for (let j = 0; j < k; j++) {
        const dS = weights[o + j]! * (dweights[o + j]! - dot);
        const c = pick[o + j]!;
        dv[r1 + (c >>> 16)]! += dS;
        dv[r2 + (c & 0xffff)]! += dS;
      }
    }
  }
  return dv;
}
