// embedding lookup reference in float64.
//   out[t,c] = W[ids[t],c]                          (zeros for an id >= V)
//   dW[v,c] += sum over t with ids[t] = v of dout[t,c], in order of t

export function embeddingForward(W: ArrayLike<number>, ids: ArrayLike<number>, V: number, C: number): Float64Array {
  const N = ids.length;
  const out = new Float64Array(N * C);
  for (let t = 0; t < N; t++) {
    const v = ids[t]!;
    if (v >= V) continue;
    for (let c = 0; c < C; c++) out[t * C + c] = W[v * C + c]!;
  }
  return out;
}

/** returns dW0 + the gradient (dW0 defaults to zeros) */
export function embeddingBackward(dout: ArrayLike<number>, ids: ArrayLike<number>, V: number, C: number, dW0?: ArrayLike<number>): Float64Array {
  const dW = dW0 ? Float64Array.from(dW0) : new Float64Array(V * C);
  for (let t = 0; t < ids.length; t++) {
    const v = ids[t]!;
    if (v >= V) continue;
    for (let c = 0; c < C; c++) dW[v * C + c]! += dout[t * C + c]!;
  }
  return dW;
}
