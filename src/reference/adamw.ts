// AdamW reference in float64 (torch.optim.AdamW, decoupled weight decay), one step, in place.
//   g  = gradScale * g
//   p  = p * (1 - lr wd)
//   m  = b1 m + (1 - b1) g            v = b2 v + (1 - b2) g^2
//   p  = p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// step t counts from 1.

export interface AdamwHyper {
  lr: number;
  weightDecay: number;
  beta1: number;
  beta2: number;
  eps: number;
  step: number;
  gradScale?: number;
}

/** Updates p, m and v in place. */
export function adamwStep(p: Float64Array, g: ArrayLike<number>, m: Float64Array, v: Float64Array, h: AdamwHyper): void {
  const { lr, weightDecay, beta1, beta2, eps, step, gradScale = 1 } = h;
  const bc1 = 1 - beta1 ** step;
  const bc2 = 1 - beta2 ** step;
  for (let i = 0; i < p.length; i++) {
    const gi = g[i]! * gradScale;
    p[i] = p[i]! * (1 - lr * weightDecay);
    m[i] = beta1 * m[i]! + (1 - beta1) * gi;
    v[i] = beta2 * v[i]! + (1 - beta2) * gi * gi;
    p[i] = p[i]! - (lr * (m[i]! / bc1)) / (Math.sqrt(v[i]! / bc2) + eps);
  }
}
