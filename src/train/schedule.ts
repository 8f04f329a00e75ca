// the learning-rate schedule of Memory Layers at Scale (lingua's lr_linear, spec §5): a linear
// warmup from 0 to the peak over `warmup` steps, then a linear decay to minRatio x peak at
// `steps`; the same factor scales every parameter group.

export interface Schedule {
  warmup: number;
  steps: number;
  /** the factor at the last step (spec: 0.01) */
  minRatio: number;
}

/** The factor for step s (counting from 1). */
export function lrFactor(s: number, sch: Schedule): number {
  const { warmup, steps, minRatio } = sch;
  if (s <= warmup) return s / Math.max(1, warmup);
  const t = Math.min(1, (s - warmup) / Math.max(1, steps - warmup));
  return 1 - t * (1 - minRatio);
}
