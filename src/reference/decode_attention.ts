// attention of one new token per batch row over a KV cache of ragged rows, in float64 (the spec
// of kernels/attention/decode_attention.ts).
//
//   q (B,NH,HS)  k, v (B,S,NKV,HS)  rows: per batch row (f, n)  out (B,NH,HS)
//   row b's keys are cache rows [0, f) then [F, F + n); query head h reads kv head h / (NH/NKV):
//     s[j] = scale q . key[j]      out = sum_j softmax(s)[j] value[j]      (no keys: zeros)

export interface DecodeDims {
  B: number;
  NH: number;
  NKV: number;
  HS: number;
  /** cache rows per batch row */
  S: number;
  /** the first context row */
  F: number;
  /** default 1/sqrt(HS) */
  scale?: number;
}

/** the cache rows of batch row b's keys, in order */
export function decodeKeyRows(d: DecodeDims, f: number, n: number): number[] {
  return [...Array.from({ length: f }, (_, j) => j), ...Array.from({ length: n }, (_, j) => d.F + j)];
}

export function decodeAttention(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, rows: readonly (readonly [number, number])[], d: DecodeDims): Float64Array {
  const { B, NH, NKV, HS, S } = d;
  const scale = d.scale ?? 1 / Math.sqrt(HS);
  const out = new Float64Array(B * NH * HS);
  for (let b = 0; b < B; b++) {
    const keys = decodeKeyRows(d, rows[b]![0], rows[b]![1]);
    for (let h = 0; h < NH; h++) {
      const g = Math.floor(h / (NH / NKV));
      const qo = (b * NH + h) * HS;
      const at = (r: number) => ((b * S + r) * NKV + g) * HS;
      const s = keys.map((r) => {
        let acc = 0;
        for (let c = 0; c < HS; c++) acc += q[qo + c]! * k[at(r) + c]!;
        return acc * scale;
      });
      if (s.length === 0) continue;
      const m = Math.max(...s);
      const e = s.map((x) => Math.exp(x - m));
      const sum = e.reduce((a, x) => a + x, 0);
      keys.forEach((r, j) => {
        for (let c = 0; c < HS; c++) out[qo + c]! += (e[j]! / sum) * v[at(r) + c]!;
      });
    }
  }
  return out;
}
