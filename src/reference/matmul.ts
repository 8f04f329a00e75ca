// Matrix product and nn.Linear reference in float64.
//   matmul          out[b,m,n] = alpha * sum_k op(a)[b,m,k] op(b)[b,k,n] + bias[n]   (+ out0, to accumulate)
//                   op(a)[m,k] = a[m,k], or a[k,m] when transA; op(b)[k,n] = b[k,n], or b[n,k] when transB;
//                   a 2-D operand (batchA / batchB false) is shared by every batch index.
//   linearForward   y[m,n] = sum_k x[m,k] w[n,k] + b[n]                 w (N,K): nn.Linear layout
//   linearBackward  dx[m,k] = sum_n dout[m,n] w[n,k]
//                   dw[n,k] = sum_m dout[m,n] x[m,k]
//                   db[n]   = sum_m dout[m,n]

export interface MatmulRefDims {
  M: number;
  N: number;
  K: number;
  /** batch size (1 when unbatched) */
  batch?: number;
  /** a has a batch dimension (else it is broadcast) */
  batchA?: boolean;
  batchB?: boolean;
}

export interface MatmulRefOptions {
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  bias?: ArrayLike<number>;
  /** the previous contents of out: the result is added to it (accumulate) */
  out0?: ArrayLike<number>;
}

export function matmul(a: ArrayLike<number>, b: ArrayLike<number>, d: MatmulRefDims, o: MatmulRefOptions = {}): Float64Array {
  const { M, N, K } = d;
  const batch = d.batch ?? 1;
  const sA = d.batchA ? M * K : 0;
  const sB = d.batchB ? K * N : 0;
  const alpha = o.alpha ?? 1;
  const out = new Float64Array(batch * M * N);
  for (let t = 0; t < batch; t++) {
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = a[t * sA + (o.transA ? k * M + m : m * K + k)]!;
          const bv = b[t * sB + (o.transB ? n * K + k : k * N + n)]!;
          s += av * bv;
        }
        const i = (t * M + m) * N + n;
        out[i] = alpha * s + (o.bias ? o.bias[n]! : 0) + (o.out0 ? o.out0[i]! : 0);
      }
    }
  }
  return out;
}

export function linearForward(x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number> | null, M: number, N: number, K: number): Float64Array {
  return matmul(x, w, { M, N, K }, b ? { transB: true, bias: b } : { transB: true });
}

export function linearBackward(dout: ArrayLike<number>, x: ArrayLike<number>, w: ArrayLike<number>, M: number, N: number, K: number) {
  const dx = matmul(dout, w, { M, N: K, K: N });
  const dw = matmul(dout, x, { M: N, N: K, K: M }, { transA: true });
  const db = new Float64Array(N);
  for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) db[n]! += dout[m * N + n]!;
  return { dx, dw, db };
}
