// global gradient norm and clip coefficient, float64 reference.
//   norm  = sqrt(sum over every tensor and element of g^2)
//   scale = min(1, maxNorm / (norm + 1e-6))          (torch.nn.utils.clip_grad_norm_)

export function gradNorm(grads: readonly ArrayLike<number>[], maxNorm = Infinity): { norm: number; scale: number } {
  let ss = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) ss += g[i]! * g[i]!;
  const norm = Math.sqrt(ss);
  return { norm, scale: Math.min(1, maxNorm / (norm + 1e-6)) };
}
