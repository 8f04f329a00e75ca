// comparing GPU results with the float64 reference.
//
// pass when the norm-wise relative error ||gpu - ref|| / ||ref|| is within tol (1e-4 for f32
// storage, 1e-2 for f16/bf16) and no value is NaN. a failure names the tensor, the error, the
// worst element and the first few elements over tol * max|ref|.

import type { DType } from '../gpu/dtype.ts';

export const TOL: Readonly<Record<DType, number>> = { f32: 1e-4, f16: 1e-2, bf16: 1e-2 };

export interface Comparison {
  relErr: number;
  worst: { index: number; gpu: number; ref: number };
}

export function compare(gpu: ArrayLike<number>, ref: ArrayLike<number>): Comparison {
  if (gpu.length !== ref.length) throw new Error(`length mismatch: gpu ${gpu.length}, ref ${ref.length}`);
  let num = 0;
  let den = 0;
  let worst = { index: -1, gpu: 0, ref: 0 };
  let worstDiff = -1;
  for (let i = 0; i < ref.length; i++) {
    const g = gpu[i]!;
    const r = ref[i]!;
    const d = Number.isNaN(g) || Number.isNaN(r) ? Infinity : Math.abs(g - r);
    num += d * d;
    den += r * r;
    if (d > worstDiff) {
      worstDiff = d;
      worst = { index: i, gpu: g, ref: r };
    }
  }
  const relErr = den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
  return { relErr, worst };
}

/** Throws with a readable report unless gpu matches ref within tol (norm-wise relative). */
export function assertClose(name: string, gpu: ArrayLike<number>, ref: ArrayLike<number>, tol: number): Comparison {
  const c = compare(gpu, ref);
  if (!(c.relErr <= tol)) {
    let maxRef = 0;
    for (let i = 0; i < ref.length; i++) maxRef = Math.max(maxRef, Math.abs(ref[i]!));
    const bad: string[] = [];
    for (let i = 0; i < ref.length && bad.length < 8; i++) {
      const d = Math.abs(gpu[i]! - ref[i]!);
      if (!(d <= tol * maxRef)) bad.push(`  [${i}] gpu ${gpu[i]} ref ${ref[i]}`);
    }
    throw new Error(
      `${name}: relative error ${c.relErr.toExponential(3)} > ${tol.toExponential(1)} over ${ref.length} elements; ` +
        `worst [${c.worst.index}] gpu ${c.worst.gpu} ref ${c.worst.ref}\n${bad.join('\n')}`,
    );
  }
  return c;
}
