// Memory³ token sparsification reference (spec memory3.md §1), float64.
//
//   per reference b and KV head g, over the valid positions V_b = [st, end) with
//   end = min(length[b], T), st = min(start[b], end) (the "Reference:" prefix and the padding
//   neither score nor are scored):
//     ln w_j = ln sum_{i in V_b} sum_{h in heads(g)} exp(scale * q[b,i,h] . k[b,j,g])   (j in V_b)
//     scores[b,g,j] = ln w_j for j in V_b, -Infinity elsewhere
//     indices[b,g,:K] = the K valid j with the largest ln w_j, descending, ties -> lower j; slots
//                       past the number of valid positions hold 0xffffffff
//   heads(g): 'sum' = the G = H/Hkv query heads g*G .. g*G+G-1 sharing KV head g; 'first' = g*G.
//   no causal mask, no RoPE (q and k as given), no softmax normalization (the paper's
//   approximation w_j = sum_i exp(q_i . k_j / sqrt(d))). NaN ln w ranks as -inf (below every
//   number, still above the padding).
// q (B,T,H,d), k (B,T,Hkv,d) row-major; ln w is computed stably (max + log-sum-exp).

export interface MemselDims {
  B: number;
  T: number;
  H: number;
  Hkv: number;
  d: number;
}

export type MemselGroup = 'sum' | 'first';

export interface MemselRef {
  /** (B, Hkv, K) */
  indices: Uint32Array;
  /** (B, Hkv, T): ln w_j, -Infinity outside [start, length) */
  scores: Float64Array;
}

export const NO_TOKEN = 0xffffffff;

/** the valid range [st, end) of reference b */
export function validRange(start: ArrayLike<number>, length: ArrayLike<number>, b: number, T: number): [number, number] {
  const end = Math.min(length[b]!, T);
  return [Math.min(start[b]!, end), end];
}

export function memselRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  start: ArrayLike<number>,
  length: ArrayLike<number>,
  dims: MemselDims,
  K: number,
  scale = 1 / Math.sqrt(dims.d),
  group: MemselGroup = 'sum',
): MemselRef {
  const { B, T, H, Hkv, d } = dims;
  const G = H / Hkv;
  const heads = group === 'sum' ? G : 1;
  const indices = new Uint32Array(B * Hkv * K).fill(NO_TOKEN);
  const scores = new Float64Array(B * Hkv * T).fill(-Infinity);
  const s = new Float64Array(heads * T);
  for (let b = 0; b < B; b++) {
    const [st, end] = validRange(start, length, b, T);
    for (let g = 0; g < Hkv; g++) {
      const row = (b * Hkv + g) * T;
      for (let j = st; j < end; j++) {
        const kb = ((b * T + j) * Hkv + g) * d;
        let n = 0;
        let m = -Infinity;
        for (let hh = 0; hh < heads; hh++) {
          for (let i = st; i < end; i++) {
            const qb = ((b * T + i) * H + g * G + hh) * d;
            let dot = 0;
            for (let c = 0; c < d; c++) dot += q[qb + c]! * k[kb + c]!;
            s[n++] = dot * scale;
            m = Math.max(m, dot * scale);
          }
        }
        let sum = 0;
        for (let e = 0; e < n; e++) sum += Math.exp(s[e]! - m);
        scores[row + j] = m + Math.log(sum);
      }
      const rank = (v: number) => (Number.isNaN(v) ? -Infinity : v);
      const order = Array.from({ length: end - st }, (_, e) => st + e);
      order.sort((a, c) => rank(scores[row + c]!) - rank(scores[row + a]!) || a - c);
      for (let r = 0; r < Math.min(K, order.length); r++) indices[(b * Hkv + g) * K + r] = order[r]!;
    }
  }
  return { indices, scores };
}
