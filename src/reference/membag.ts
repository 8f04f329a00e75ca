// weighted value-row read ("memory bag", EmbeddingBag mode=sum with per-sample weights) of the
// product-key memory layer, in float64 over a plain table V (N*d, row-major).
//   out[t,c]  = sum_{j<B} w[t,j] * V[idx[t,j],c]                (=; entries with idx >= N add nothing)
//   dw[t,j]   = sum_c dout[t,c] * V[idx[t,j],c]                 (=; 0 for idx >= N)
//   dV[v,c]  += sum over (t,j) with idx[t,j] = v of w[t,j] * dout[t,c], in order of (t, j)

/** out (T*d) for idx, w (T*B) */
export function membagForward(V: ArrayLike<number>, idx: ArrayLike<number>, w: ArrayLike<number>, N: number, d: number, T: number, B: number): Float64Array {
  const out = new Float64Array(T * d);
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < B; j++) {
      const v = idx[t * B + j]!;
      if (v >= N) continue;
      const wt = w[t * B + j]!;
      for (let c = 0; c < d; c++) out[t * d + c]! += wt * V[v * d + c]!;
    }
  }
  return out;
}

/** dw (T*B) and dV = dV0 + the value gradient (N*d; dV0 defaults to zeros) */
export function membagBackward(
  dout: ArrayLike<number>,
  V: ArrayLike<number>,
  idx: ArrayLike<number>,
  w: ArrayLike<number>,
  N: number,
  d: number,
  T: number,
  B: number,
  dV0?: ArrayLike<number>,
): { dw: Float64Array; dV: Float64Array } {
  const dw = new Float64Array(T * B);
  const dV = dV0 ? Float64Array.from(dV0) : new Float64Array(N * d);
  for (let t = 0; t < T; t++) {
    for (let j = 0; j < B; j++) {
      const v = idx[t * B + j]!;
      if (v >= N) continue;
      const wt = w[t * B + j]!;
      let s = 0;
      for (let c = 0; c < d; c++) {
        s += dout[t * d + c]! * V[v * d + c]!;
        dV[v * d + c]! += wt * dout[t * d + c]!;
      }
      dw[t * B + j] = s;
    }
  }
  return { dw, dV };
}
