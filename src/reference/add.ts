// weighted sum reference in float64: out = alpha a + beta b;  da = alpha dout, db = beta dout.

export function addForward(a: ArrayLike<number>, b: ArrayLike<number>, alpha = 1, beta = 1): Float64Array {
  return Float64Array.from(a, (x, i) => alpha * x + beta * b[i]!);
}

export function addBackward(dout: ArrayLike<number>, alpha = 1, beta = 1): { da: Float64Array; db: Float64Array } {
  return { da: Float64Array.from(dout, (g) => alpha * g), db: Float64Array.from(dout, (g) => beta * g) };
}
