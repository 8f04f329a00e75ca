// RMSNorm reference in float64.
//   out[n,c] = x[n,c] * rstd[n] * w[c],  rstd[n] = 1 / sqrt(mean_c x[n,c]^2 + eps)
//   dx[n,j]  = rstd w[j] g[j] - x[n,j] rstd^3 / C * sum_c g[c] w[c] x[n,c]
//   dw[c]   += sum_n g[n,c] x[n,c] rstd[n]

export function rmsnormForward(x: ArrayLike<number>, w: ArrayLike<number>, N: number, C: number, eps: number) {
  const out = new Float64Array(N * C);
  const rstd = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[n * C + c]! ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    rstd[n] = r;
    for (let c = 0; c < C; c++) out[n * C + c] = x[n * C + c]! * r * w[c]!;
  }
  return { out, rstd };
}

export function rmsnormBackward(dout: ArrayLike<number>, x: ArrayLike<number>, w: ArrayLike<number>, rstd: ArrayLike<number>, N: number, C: number) {
  const dx = new Float64Array(N * C);
  const dw = new Float64Array(C);
  for (let n = 0; n < N; n++) {
    const r = rstd[n]!;
    let s = 0;
    for (let c = 0; c < C; c++) s += dout[n * C + c]! * w[c]! * x[n * C + c]!;
    for (let c = 0; c < C; c++) {
      const i = n * C + c;
      dx[i] = r * w[c]! * dout[i]! - (x[i]! * r * r * r * s) / C;
      dw[c]! += dout[i]! * x[i]! * r;
    }
  }
  return { dx, dw };
}
