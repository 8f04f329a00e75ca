// the GPU for a test file: one per process (node:test runs each file in its own process).
// no adapter is a loud failure, never a skip: a GPU test that did not run did not pass.

import { after } from 'node:test';
import { Gpu, type GpuOptions } from '../gpu/device.ts';

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
