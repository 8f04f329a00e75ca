// k-means assignment reference (product quantisation, memory3/pq.ts), float64.
//
//   per vector n and sub-space m:
//     dist[n,m]  = min_c sum_d (x[n,m,d] - centroids[m,c,d])^2
//     codes[n,m] = the c attaining it; ties -> the lowest c
//   x (N,M,D), centroids (M,C,D) row-major; codes (N,M), dist (N,M).
// distances are summed in float64 in ascending d; a NaN distance never wins (code 0 when all
// are NaN), matching the kernel for finite inputs.

export interface KmeansDims {
  /** vectors */
  N: number;
  /** sub-spaces (sub-vectors per vector) */
  M: number;
  /** centroids per sub-space */
  C: number;
  /** dims per sub-vector */
  D: number;
}

export interface KmeansAssignRef {
  /** (N, M) index of the nearest centroid */
  codes: Uint32Array;
  /** (N, M) its squared L2 distance */
  dist: Float64Array;
}

/** squared L2 distance of every (n, m) sub-vector to every centroid of sub-space m: (N, M, C) */
export function kmeansDistances(x: ArrayLike<number>, centroids: ArrayLike<number>, dims: KmeansDims): Float64Array {
  const { N, M, C, D } = dims;
  const out = new Float64Array(N * M * C);
  for (let n = 0; n < N; n++) {
    for (let m = 0; m < M; m++) {
      const xb = (n * M + m) * D;
      for (let c = 0; c < C; c++) {
        const cb = (m * C + c) * D;
        let s = 0;
        for (let d = 0; d < D; d++) {
          const df = x[xb + d]! - centroids[cb + d]!;
          s += df * df;
        }
        out[(n * M + m) * C + c] = s;
      }
    }
  }
  return out;
}

/** the nearest centroid (squared L2, ties -> lowest index) of each sub-vector and its distance */
export function kmeansAssign(x: ArrayLike<number>, centroids: ArrayLike<number>, dims: KmeansDims): KmeansAssignRef {
  const { N, M, C, D } = dims;
  if (x.length !== N * M * D) throw new Error(`kmeansAssign: x has ${x.length} values, (N, M, D) = (${N}, ${M}, ${D}) needs ${N * M * D}`);
  if (centroids.length !== M * C * D) throw new Error(`kmeansAssign: centroids has ${centroids.length} values, (M, C, D) = (${M}, ${C}, ${D}) needs ${M * C * D}`);
  const all = kmeansDistances(x, centroids, dims);
  const codes = new Uint32Array(N * M);
  const dist = new Float64Array(N * M);
  for (let r = 0; r < N * M; r++) {
    let bi = 0;
    let best = all[r * C]!;
    for (let c = 1; c < C; c++) {
      const s = all[r * C + c]!;
      if (s < best || (Number.isNaN(best) && !Number.isNaN(s))) {
        best = s;
        bi = c;
      }
    }
    codes[r] = bi;
    dist[r] = best;
  }
  return { codes, dist };
}
