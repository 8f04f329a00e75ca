// the product-key memory layer (Memory Layers at Scale; Lample et al. 2019), whole, in float64:
// self-contained (no other reference), so that it checks the GPU layer's composition of kernels.
//
//   q  (T, H dk)   = x Wq^T + bq                          Wq (H dk, d)
//   s  (2H, T, n)  s[g,t,j] = q[t, g dk/2 : (g+1) dk/2] . keys[g n + j]     keys (2H n, dk/2)
//                  g = 2h + half: head h's first (half 0) or second query half
//   per (g, t): top-k of s[g,t,:] (value desc, index asc)  -> v (k), i (k)
//   per (t, h): the k best of the k x k candidates v1[a] + v2[b] (score desc, slot asc),
//               slot = i1[a] n + i2[b], v1 = row (2h, t), v2 = row (2h+1, t)
//   w  (T, H, k)   = softmax over each (t, h)'s k selected scores
//   y  (T, d)      = sum over h, j of w[t,h,j] values[slot[t,h,j]]        values (n^2, d)
//   Memory+ (gated): out = Wo (y * silu(Ws x + bs)) + bo     Ws, Wo (d, d); plain: out = y
//   qkNorm (optional): each query half and each sub-key row RMS-normalised (eps 1e-5) with
//   learned gains gq, gk (dk/2), and s = (qn . kn) / sqrt(dk/2)
// backward: gradients of everything but the selection (slots are integers; a small perturbation
// of generic inputs leaves them unchanged, which is what the finite-difference test relies on).

export interface PkmShape {
  d: number;
  /** query heads */
  H: number;
  /** sub-keys per half per head; slots N = n^2 */
  n: number;
  /** top-k per half and final per head */
  k: number;
  /** full query/key dim per head (each half dk/2) */
  dk: number;
  /** Memory+ gating (Ws, Wo); off: out = y */
  gated: boolean;
  /** RMS-normalised query halves and sub-keys with gains gq, gk */
  qkNorm?: boolean;
}

export interface PkmWeights {
  Wq: ArrayLike<number>;
  bq: ArrayLike<number>;
  keys: ArrayLike<number>;
  values: ArrayLike<number>;
  Ws?: ArrayLike<number>;
  bs?: ArrayLike<number>;
  Wo?: ArrayLike<number>;
  bo?: ArrayLike<number>;
  gq?: ArrayLike<number>;
  gk?: ArrayLike<number>;
}

export interface PkmCache {
  T: number;
  x: ArrayLike<number>;
  q: Float64Array;
  /** per (g, t, a): the half top-k sub-key index */
  halfIdx: Int32Array;
  /** per (t, h, j): slot, weight, and the candidate (a, b) it came from */
  slots: Int32Array;
  weights: Float64Array;
  pickA: Int32Array;
  pickB: Int32Array;
  y: Float64Array;
  z?: Float64Array;
  gatedIn?: Float64Array;
}

export interface PkmGrads {
  dx: Float64Array;
  dWq: Float64Array;
  dbq: Float64Array;
  dkeys: Float64Array;
  dvalues: Float64Array;
  dWs?: Float64Array;
  dbs?: Float64Array;
  dWo?: Float64Array;
  dbo?: Float64Array;
  dgq?: Float64Array;
  dgk?: Float64Array;
}

const EPS = 1e-5;

/** rows of x (R, C) RMS-normalised with gain w: out and rstd */
function rmsRows(x: ArrayLike<number>, w: ArrayLike<number>, R: number, C: number): { out: Float64Array; rstd: Float64Array } {
  const out = new Float64Array(R * C);
  const rstd = new Float64Array(R);
  for (let r = 0; r < R; r++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[r * C + c]! ** 2;
    rstd[r] = 1 / Math.sqrt(ss / C + EPS);
    for (let c = 0; c < C; c++) out[r * C + c] = x[r * C + c]! * rstd[r]! * w[c]!;
  }
  return { out, rstd };
}

/** dx (=) and dw (+=) of rmsRows */
function rmsRowsBack(g: ArrayLike<number>, x: ArrayLike<number>, w: ArrayLike<number>, rstd: ArrayLike<number>, R: number, C: number, dw: Float64Array): Float64Array {
  const dx = new Float64Array(R * C);
  for (let r = 0; r < R; r++) {
    const rs = rstd[r]!;
    let dot = 0;
    for (let c = 0; c < C; c++) dot += g[r * C + c]! * w[c]! * x[r * C + c]!;
    for (let c = 0; c < C; c++) {
      dx[r * C + c] = rs * w[c]! * g[r * C + c]! - (x[r * C + c]! * rs ** 3 * dot) / C;
      dw[c] = dw[c]! + g[r * C + c]! * x[r * C + c]! * rs;
    }
  }
  return dx;
}

const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));

/** y (T, N) = x (T, K) w^T (N, K) + b */
function linear(x: ArrayLike<number>, w: ArrayLike<number>, b: ArrayLike<number>, T: number, N: number, K: number): Float64Array {
  const y = new Float64Array(T * N);
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < N; o++) {
      let s = b[o]!;
      for (let i = 0; i < K; i++) s += x[t * K + i]! * w[o * K + i]!;
      y[t * N + o] = s;
    }
  }
  return y;
}

/** dx (=), dw (+=), db (+=) of y = x w^T + b */
function linearBack(dy: ArrayLike<number>, x: ArrayLike<number>, w: ArrayLike<number>, T: number, N: number, K: number, dw: Float64Array, db: Float64Array): Float64Array {
  const dx = new Float64Array(T * K);
  for (let t = 0; t < T; t++) {
    for (let o = 0; o < N; o++) {
      const g = dy[t * N + o]!;
      db[o] = db[o]! + g;
      for (let i = 0; i < K; i++) {
        dx[t * K + i] = dx[t * K + i]! + g * w[o * K + i]!;
        dw[o * K + i] = dw[o * K + i]! + g * x[t * K + i]!;
      }
    }
  }
  return dx;
}

/** positions of the k best of `score` (desc), ties by `tie` (asc) */
function bestK(score: (i: number) => number, tie: (i: number) => number, count: number, k: number): number[] {
  const order = Array.from({ length: count }, (_, i) => i);
  order.sort((a, b) => score(b) - score(a) || tie(a) - tie(b));
  return order.slice(0, k);
}

export function pkmForward(x: ArrayLike<number>, T: number, W: PkmWeights, p: PkmShape): { out: Float64Array; cache: PkmCache } {
  const { d, H, n, k, dk } = p;
  const half = dk / 2;
  const q = linear(x, W.Wq, W.bq, T, H * dk, d);
  // the vectors the scores dot: q halves and key rows, normalised when qkNorm
  const qn = p.qkNorm ? rmsRows(q, W.gq!, T * 2 * H, half).out : q;
  const kn = p.qkNorm ? rmsRows(W.keys, W.gk!, 2 * H * n, half).out : W.keys;
  const scale = p.qkNorm ? 1 / Math.sqrt(half) : 1;
  const halfIdx = new Int32Array(2 * H * T * k);
  const halfVal = new Float64Array(2 * H * T * k);
  for (let g = 0; g < 2 * H; g++) {
    for (let t = 0; t < T; t++) {
      const s = new Float64Array(n);
      for (let j = 0; j < n; j++) {
        let acc = 0;
        for (let e = 0; e < half; e++) acc += qn[t * H * dk + g * half + e]! * kn[(g * n + j) * half + e]!;
        s[j] = acc * scale;
      }
      bestK((j) => s[j]!, (j) => j, n, k).forEach((j, a) => {
        halfIdx[(g * T + t) * k + a] = j;
        halfVal[(g * T + t) * k + a] = s[j]!;
      });
    }
  }
  const slots = new Int32Array(T * H * k);
  const weights = new Float64Array(T * H * k);
  const pickA = new Int32Array(T * H * k);
  const pickB = new Int32Array(T * H * k);
  const y = new Float64Array(T * d);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) {
      const r1 = (2 * h * T + t) * k;
      const r2 = ((2 * h + 1) * T + t) * k;
      const score = (c: number) => halfVal[r1 + Math.floor(c / k)]! + halfVal[r2 + (c % k)]!;
      const slot = (c: number) => halfIdx[r1 + Math.floor(c / k)]! * n + halfIdx[r2 + (c % k)]!;
      const best = bestK(score, slot, k * k, k);
      const m = Math.max(...best.map(score));
      const e = best.map((c) => Math.exp(score(c) - m));
      const sum = e.reduce((u, v) => u + v, 0);
      best.forEach((c, j) => {
        const at = (t * H + h) * k + j;
        slots[at] = slot(c);
        weights[at] = e[j]! / sum;
        pickA[at] = Math.floor(c / k);
        pickB[at] = c % k;
        for (let i = 0; i < d; i++) y[t * d + i] = y[t * d + i]! + weights[at]! * W.values[slots[at]! * d + i]!;
      });
    }
  }
  const cache: PkmCache = { T, x, q, halfIdx, slots, weights, pickA, pickB, y };
  if (!p.gated) return { out: y, cache };
  const z = linear(x, W.Ws!, W.bs!, T, d, d);
  const gatedIn = z.map((zi, i) => zi * sigmoid(zi) * y[i]!);
  cache.z = z;
  cache.gatedIn = gatedIn;
  return { out: linear(gatedIn, W.Wo!, W.bo!, T, d, d), cache };
}

export function pkmBackward(dout: ArrayLike<number>, c: PkmCache, W: PkmWeights, p: PkmShape): PkmGrads {
  const { d, H, n, k, dk } = p;
  const { T } = c;
  const half = dk / 2;
  const N = n * n;
  const grads: PkmGrads = {
    dx: new Float64Array(T * d),
    dWq: new Float64Array(H * dk * d),
    dbq: new Float64Array(H * dk),
    dkeys: new Float64Array(2 * H * n * half),
    dvalues: new Float64Array(N * d),
  };
  let dy: ArrayLike<number> = dout;
  let dxGate: Float64Array | null = null;
  if (p.gated) {
    grads.dWo = new Float64Array(d * d);
    grads.dbo = new Float64Array(d);
    grads.dWs = new Float64Array(d * d);
    grads.dbs = new Float64Array(d);
    const dg = linearBack(dout, c.gatedIn!, W.Wo!, T, d, d, grads.dWo, grads.dbo);
    const z = c.z!;
    const dz = new Float64Array(T * d);
    const dyy = new Float64Array(T * d);
    for (let i = 0; i < T * d; i++) {
      const sg = sigmoid(z[i]!);
      dyy[i] = dg[i]! * z[i]! * sg;
      dz[i] = dg[i]! * c.y[i]! * sg * (1 + z[i]! * (1 - sg));
    }
    dy = dyy;
    dxGate = linearBack(dz, c.x, W.Ws!, T, d, d, grads.dWs, grads.dbs);
  }
  // the read: dw and dvalues; softmax; the picks into the half top-k values
  const dhalf = new Float64Array(2 * H * T * k);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) {
      const base = (t * H + h) * k;
      const dw = new Float64Array(k);
      for (let j = 0; j < k; j++) {
        const slot = c.slots[base + j]!;
        const w = c.weights[base + j]!;
        for (let i = 0; i < d; i++) {
          dw[j] = dw[j]! + dy[t * d + i]! * W.values[slot * d + i]!;
          grads.dvalues[slot * d + i] = grads.dvalues[slot * d + i]! + w * dy[t * d + i]!;
        }
      }
      let dot = 0;
      for (let j = 0; j < k; j++) dot += c.weights[base + j]! * dw[j]!;
      for (let j = 0; j < k; j++) {
        const dS = c.weights[base + j]! * (dw[j]! - dot);
        const a = (2 * h * T + t) * k + c.pickA[base + j]!;
        const b = ((2 * h + 1) * T + t) * k + c.pickB[base + j]!;
        dhalf[a] = dhalf[a]! + dS;
        dhalf[b] = dhalf[b]! + dS;
      }
    }
  }
  // the sub-key scores: dq and dkeys through the selected entries
  const nq = p.qkNorm ? rmsRows(c.q, W.gq!, T * 2 * H, half) : null;
  const nk = p.qkNorm ? rmsRows(W.keys, W.gk!, 2 * H * n, half) : null;
  const qn = nq ? nq.out : c.q;
  const kn = nk ? nk.out : W.keys;
  const scale = p.qkNorm ? 1 / Math.sqrt(half) : 1;
  let dq: Float64Array = new Float64Array(T * H * dk);
  let dkn: Float64Array = p.qkNorm ? new Float64Array(2 * H * n * half) : grads.dkeys;
  for (let g = 0; g < 2 * H; g++) {
    for (let t = 0; t < T; t++) {
      for (let a = 0; a < k; a++) {
        const ds = dhalf[(g * T + t) * k + a]! * scale;
        const row = g * n + c.halfIdx[(g * T + t) * k + a]!;
        for (let e = 0; e < half; e++) {
          const qi = t * H * dk + g * half + e;
          dq[qi] = dq[qi]! + ds * kn[row * half + e]!;
          dkn[row * half + e] = dkn[row * half + e]! + ds * qn[qi]!;
        }
      }
    }
  }
  if (nq && nk) {
    grads.dgq = new Float64Array(half);
    grads.dgk = new Float64Array(half);
    dq = rmsRowsBack(dq, c.q, W.gq!, nq.rstd, T * 2 * H, half, grads.dgq);
    dkn = rmsRowsBack(dkn, W.keys, W.gk!, nk.rstd, 2 * H * n, half, grads.dgk);
    grads.dkeys.set(dkn);
  }
  const dxq = linearBack(dq, c.x, W.Wq, T, H * dk, d, grads.dWq, grads.dbq);
  for (let i = 0; i < T * d; i++) grads.dx[i] = dxq[i]! + (dxGate ? dxGate[i]! : 0);
  return grads;
}
