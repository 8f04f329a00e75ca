// RoPE reference in float64, Llama / HF "rotate half" layout.
//   for each row (b,t,h) of x (B,T,NH,HS), H = HS/2, i < H, pos = pos0 + (positions ? positions[t] : t):
//     a = pos * base^(-2i/HS)
//     out[i]   = x[i] cos a - x[i+H] sin a
//     out[i+H] = x[i] sin a + x[i+H] cos a
//   backward is the rotation by -a:
//     dx[i]   =  dout[i] cos a + dout[i+H] sin a
//     dx[i+H] = -dout[i] sin a + dout[i+H] cos a

export interface RopeDims {
  B: number;
  T: number;
  NH: number;
  HS: number;
  base?: number;
  pos0?: number;
  positions?: ArrayLike<number>;
}

function rotate(x: ArrayLike<number>, d: RopeDims, sign: number): Float64Array {
  const { B, T, NH, HS, base = 10000, pos0 = 0, positions } = d;
  const H = HS / 2;
  const out = new Float64Array(B * T * NH * HS);
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const pos = pos0 + (positions ? positions[t]! : t);
      for (let h = 0; h < NH; h++) {
        const row = ((b * T + t) * NH + h) * HS;
        for (let i = 0; i < H; i++) {
          const a = pos * base ** ((-2 * i) / HS);
          const c = Math.cos(a);
          const s = sign * Math.sin(a);
          const x0 = x[row + i]!;
          const x1 = x[row + i + H]!;
          out[row + i] = x0 * c - x1 * s;
          out[row + i + H] = x0 * s + x1 * c;
        }
      }
    }
  }
  return out;
}

export const ropeForward = (x: ArrayLike<number>, d: RopeDims): Float64Array => rotate(x, d, 1);

export const ropeBackward = (dout: ArrayLike<number>, d: RopeDims): Float64Array => rotate(dout, d, -1);
