// SwiGLU reference in float64, fused layout: gu (N, 2H) holds the gate g in columns [0, H) and
// the up projection u in [H, 2H) (what one W1|W3 projection produces).
//   out[n,h] = silu(g) u,   silu(x) = x sigmoid(x)
//   dg = dout u sigmoid(g) (1 + g (1 - sigmoid(g))),   du = dout silu(g)     (dgu, same layout)

const sigmoid = (x: number): number => (x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x)));

export function swigluForward(gu: ArrayLike<number>, N: number, H: number): Float64Array {
  const out = new Float64Array(N * H);
  for (let n = 0; n < N; n++) {
    for (let h = 0; h < H; h++) {
      const g = gu[n * 2 * H + h]!;
      out[n * H + h] = g * sigmoid(g) * gu[n * 2 * H + H + h]!;
    }
  }
  return out;
}

export function swigluBackward(dout: ArrayLike<number>, gu: ArrayLike<number>, N: number, H: number): Float64Array {
  const dgu = new Float64Array(N * 2 * H);
  for (let n = 0; n < N; n++) {
    for (let h = 0; h < H; h++) {
      const g = gu[n * 2 * H + h]!;
      const u = gu[n * 2 * H + H + h]!;
      const d = dout[n * H + h]!;
      const s = sigmoid(g);
      dgu[n * 2 * H + h] = d * u * s * (1 + g * (1 - s));
      dgu[n * 2 * H + H + h] = d * g * s;
    }
  }
  return dgu;
}

/** (N, H) g and u -> the fused (N, 2H) layout */
export function fuse(g: ArrayLike<number>, u: ArrayLike<number>, N: number, H: number): Float64Array {
  const gu = new Float64Array(N * 2 * H);
  for (let n = 0; n < N; n++) {
    for (let h = 0; h < H; h++) {
      gu[n * 2 * H + h] = g[n * H + h]!;
      gu[n * 2 * H + H + h] = u[n * H + h]!;
    }
  }
  return gu;
}

/** the fused (N, 2H) layout -> (N, H) g and u */
export function split(gu: ArrayLike<number>, N: number, H: number): { g: Float64Array; u: Float64Array } {
  const g = new Float64Array(N * H);
  const u = new Float64Array(N * H);
  for (let n = 0; n < N; n++) {
    for (let h = 0; h < H; h++) {
      g[n * H + h] = gu[n * 2 * H + h]!;
      u[n * H + h] = gu[n * 2 * H + H + h]!;
    }
  }
  return { g, u };
}
