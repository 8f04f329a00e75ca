// the GPU for a test file: one per process (node:test runs each file in its own process).
// no adapter is a loud failure, never a skip: a GPU test that did not run did not pass.

import { after } from 'node:test';
import { Gpu, type GpuOptions } from '../gpu/device.ts';
import type { TensorDType } from '../gpu/dtype.ts';
import type { Tensor } from '../gpu/tensor.ts';

let shared: Promise<Gpu> | null = null;

// registered when a test file imports this module, so on the file's root: runs after all tests
after(async () => {
  const gpu = await shared?.catch(() => null);
  gpu?.destroy();
});

export function testGpu(opts: GpuOptions = {}): Promise<Gpu> {
  if (!shared) {
    shared = Gpu.create(opts).then((gpu) => {
      const f = gpu.features;
      const feats = [f.f16 && 'shader-f16', f.subgroups && 'subgroups', f.timestamps && 'timestamp-query', f.subgroupMatrix.length > 0 && 'subgroup-matrix']
        .filter(Boolean)
        .join(', ');
      console.log(`# WebGPU adapter: ${gpu.adapterName} [${feats}]`);
      return gpu;
    });
  }
  return shared;
}

/** a kernel mapping: the adapter's default (CPU mappings on a CPU adapter), or the GPU one forced */
export type Mapping = 'adapter' | 'gpu';

/** runs fn with the mapping chosen: 'gpu' clears gpu.cpu for its duration (see Gpu.cpu) */
export async function withMapping<T>(gpu: Gpu, mapping: Mapping, fn: () => Promise<T>): Promise<T> {
  const cpu = gpu.cpu;
  if (mapping === 'gpu') gpu.cpu = false;
  try {
    return await fn();
  } finally {
    gpu.cpu = cpu;
  }
}

/** a tensor's raw bits (NaN payloads and -0 kept) */
export async function bits(gpu: Gpu, t: Tensor): Promise<number[]> {
  return Array.from(new Uint32Array(await gpu.readBytes(t.buffer, t.offset, t.byteLength)));
}

/** a test's tensor maker: mk(shape, dtype, label) makes a tensor and remembers it; dispose() frees all it made */
export function tensorMaker(gpu: Gpu): { mk: (shape: number[], dtype: TensorDType, label: string) => Promise<Tensor>; dispose: () => void } {
  const made: Tensor[] = [];
  return {
    mk: async (shape, dtype, label) => {
      const t = await gpu.tensor(shape, dtype, label);
      made.push(t);
      return t;
    },
    dispose: () => made.forEach((t) => t.dispose()),
  };
}
