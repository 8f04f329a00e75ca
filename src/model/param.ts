// a trainable tensor with its gradient, and the optimizer group it belongs to.

import type { Gpu } from '../gpu/device.ts';
import type { DType } from '../gpu/dtype.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { fill } from '../kernels/copy/copy.ts';

export interface Param {
  /** e.g. 'mem0.wq' */
  name: string;
  /** the parameter, f32/f16/bf16 */
  value: Tensor;
  /** its gradient, f32, same shape; layers add into it (+=) */
  grad: Tensor;
  /** optimizer group: 'model' or 'values' (the memory value table: its own lr and clipping) */
  group: 'model' | 'values';
  /** rows read since the last step (u32 per row of `rowWidth` elements): the sparse update's mask */
  rowMask?: { mask: Tensor; width: number };
}

/** A parameter and a zeroed f32 gradient of `shape`. */
export async function createParam(gpu: Gpu, name: string, shape: readonly number[], dtype: DType, group: Param['group'] = 'model'): Promise<Param> {
  const value = await gpu.tensor(shape, dtype, name);
  try {
    const grad = await gpu.tensor(shape, 'f32', `${name}.grad`);
    await fill(gpu, grad, 0);
    return { name, value, grad, group };
  } catch (e) {
    value.dispose();
    throw e;
  }
}

export async function zeroGrads(gpu: Gpu, params: readonly Param[]): Promise<void> {
  for (const p of params) await fill(gpu, p.grad, 0);
}

export function disposeParams(params: readonly Param[]): void {
  for (const p of params) {
    p.value.dispose();
    p.grad.dispose();
  }
}
