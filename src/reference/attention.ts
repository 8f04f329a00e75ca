// causal self-attention with grouped-query heads and an optional prefix, in float64.
//
//   q (B,T,NH,HS)  k, v (B,T,NKV,HS)  pk, pv (B,PR,NKV,HS)  out (B,T,NH,HS)  lse (B,NH,T)
//   query head h reads kv head h / (NH/NKV). the keys of row (b,t,h) are P prefix keys (never
//   masked) followed by sequence keys 0..t (0..T-1 when not causal). the prefix keys: all of
//   pk (PR = P), or with a chunked prefix (prefixChunk C > 0, PR = ceil(T/C) P) the block of
//   chunk floor(t/C), pk rows floor(t/C) P .. +P-1:
//     s[j]   = scale * q . key[j]            p = softmax(s)       lse = logsumexp(s)
//     out    = sum_j p[j] value[j]
//   backward, with D = sum(dout * out):
//     dv[j] += p[j] dout      ds[j] = p[j] (dout . value[j] - D)
//     dq     = scale sum_j ds[j] key[j]      dk[j] += scale ds[j] q
//   dk, dv, dpk, dpv sum over every query and every head of the kv head's group.
// scores are materialized here (this is the spec, not the fast path).

export interface AttentionDims {
  B: number;
  T: number;
  NH: number;
  NKV: number;
  HS: number;
  /** prefix keys each query sees (0 for none): pk's rows per batch row, or a chunk's block */
  P: number;
  /** queries per prefix chunk (default 0: one prefix for every query); pk then has ceil(T/C)*P rows a batch row */
  prefixChunk?: number;
  /** default 1/sqrt(HS) */
  scale?: number;
  /** default true */
  causal?: boolean;
}

const EMPTY = new Float64Array(0);

/** rows of pk per batch row */
export function prefixRows(d: AttentionDims): number {
  const C = d.prefixChunk ?? 0;
  return C > 0 ? Math.ceil(d.T / C) * d.P : d.P;
}

/** Offsets of the keys (and values) row (b,t) of kv head kvh sees, in order; prefix offsets x are stored as -(x + 1). */
function rowKeys(d: AttentionDims, b: number, t: number, kvh: number): number[] {
  const { T, P, NKV, HS } = d;
  const causal = d.causal ?? true;
  const C = d.prefixChunk ?? 0;
  const PR = prefixRows(d);
  const first = C > 0 ? Math.floor(t / C) * P : 0; // this row's first pk row
  const n = P + (causal ? t + 1 : T);
  const offs: number[] = [];
  for (let j = 0; j < n; j++) {
    offs.push(j < P ? -(((b * PR + first + j) * NKV + kvh) * HS + 1) : ((b * T + (j - P)) * NKV + kvh) * HS);
  }
  return offs;
}

export function attentionForward(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  pk: ArrayLike<number> = EMPTY,
  pv: ArrayLike<number> = EMPTY,
  d: AttentionDims,
) {
  const { B, T, NH, NKV, HS } = d;
  const scale = d.scale ?? 1 / Math.sqrt(HS);
  const G = NH / NKV;
  const out = new Float64Array(B * T * NH * HS);
  const lse = new Float64Array(B * NH * T);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < NH; h++) {
        const qo = ((b * T + t) * NH + h) * HS;
        const keys = rowKeys(d, b, t, Math.floor(h / G));
        const s = keys.map((o) => {
          const [K, ko] = o < 0 ? [pk, -o - 1] : [k, o];
          let acc = 0;
          for (let c = 0; c < HS; c++) acc += q[qo + c]! * K[ko + c]!;
          return acc * scale;
        });
        const m = Math.max(...s);
        let sum = 0;
        for (const x of s) sum += Math.exp(x - m);
        lse[(b * NH + h) * T + t] = m + Math.log(sum);
        keys.forEach((o, j) => {
          const [V, vo] = o < 0 ? [pv, -o - 1] : [v, o];
          const p = Math.exp(s[j]! - m) / sum;
          for (let c = 0; c < HS; c++) out[qo + c]! += p * V[vo + c]!;
        });
      }
    }
  }
  return { out, lse };
}

export function attentionBackward(
  dout: ArrayLike<number>,
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  pk: ArrayLike<number> = EMPTY,
  pv: ArrayLike<number> = EMPTY,
  out: ArrayLike<number>,
  lse: ArrayLike<number>,
  d: AttentionDims,
) {
  const { B, T, NH, NKV, HS } = d;
  const scale = d.scale ?? 1 / Math.sqrt(HS);
  const G = NH / NKV;
  const dq = new Float64Array(B * T * NH * HS);
  const dk = new Float64Array(B * T * NKV * HS);
  const dv = new Float64Array(B * T * NKV * HS);
  const dpk = new Float64Array(B * prefixRows(d) * NKV * HS);
  const dpv = new Float64Array(B * prefixRows(d) * NKV * HS);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < NH; h++) {
        const qo = ((b * T + t) * NH + h) * HS;
        let D = 0;
        for (let c = 0; c < HS; c++) D += dout[qo + c]! * out[qo + c]!;
        const L = lse[(b * NH + h) * T + t]!;
        for (const o of rowKeys(d, b, t, Math.floor(h / G))) {
          const [K, V, dK, dV, ko] = o < 0 ? [pk, pv, dpk, dpv, -o - 1] : [k, v, dk, dv, o];
          let s = 0;
          let dp = 0;
          for (let c = 0; c < HS; c++) {
            s += q[qo + c]! * K[ko + c]!;
            dp += dout[qo + c]! * V[ko + c]!;
          }
          const p = Math.exp(s * scale - L);
          const ds = p * (dp - D);
          for (let c = 0; c < HS; c++) {
            dV[ko + c]! += p * dout[qo + c]!;
            dq[qo + c]! += scale * ds * K[ko + c]!;
            dK[ko + c]! += scale * ds * q[qo + c]!;
          }
        }
      }
    }
  }
  return { dq, dk, dv, dpk, dpv };
}
