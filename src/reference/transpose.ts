// transpose of the last two dimensions, reference.
//   transpose  out[b, c, r] = x[b, r, c]     for each of `batch` leading (R, C) matrices
//   swapAxes   out[c, r, e] = x[r, c, e]

export function transpose(x: ArrayLike<number>, batch: number, R: number, C: number): Float64Array {
  const out = new Float64Array(batch * R * C);
  for (let b = 0; b < batch; b++) {
    for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) out[b * R * C + c * R + r] = x[b * R * C + r * C + c]!;
  }
  return out;
}

export function swapAxes(x: ArrayLike<number>, R: number, C: number, E: number): Float64Array {
  const out = new Float64Array(R * C * E);
  for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) for (let e = 0; e < E; e++) out[(c * R + r) * E + e] = x[(r * C + c) * E + e]!;
  return out;
}
