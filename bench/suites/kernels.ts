// suite `kernels`: bandwidth, matmul and attention throughput, with PyTorch side by side.
//
// metrics (issue "Foundation"): copy_GBps, matmul_f32_4096_TFLOPs, matmul_f16_4096_TFLOPs (best
// path), attention_fwd_TFLOPs, attention_bwd_TFLOPs (B=4, T=2048, 16 heads, head dim 64, causal),
// and from bench/torch/kernels.py torch_matmul_f32_4096_TFLOPs (TF32 off),
// torch_matmul_f16_4096_TFLOPs, torch_attention_fwd_TFLOPs. `--quick` runs small sizes (for a
// smoke run on a CPU adapter); its numbers are not the suite's metrics.

import type { SuiteOutput } from '../run.ts';
import type { Gpu } from '../../src/gpu/device.ts';
import { COPY_PER_THREAD, copy } from '../../src/kernels/copy/copy.ts';
import { Rng } from '../../src/testing/rng.ts';
import { runTorch, timeGpu } from '../lib.ts';

/** copy bandwidth (bytes read + written) for each vec4-per-thread variant, 1 GiB f32 */
async function copyGBps(gpu: Gpu, quick: boolean): Promise<Record<string, number>> {
  const max = Math.min(1 << 30, gpu.device.limits.maxStorageBufferBindingSize);
  const bytes = quick ? 1 << 24 : Math.floor(max / 16) * 16;
  const n = bytes / 4;
  const src = await gpu.tensorFrom(new Rng(1).uniforms(n), [n], 'f32', 'copy_src');
  const dst = await gpu.tensor([n], 'f32', 'copy_dst');
  const out: Record<string, number> = {};
  for (const per of COPY_PER_THREAD) {
    const ms = await timeGpu(gpu, () => copy(gpu, dst, src, per), { reps: 20 });
    out[`copy_x${per}_GBps`] = (2 * bytes) / ms / 1e6;
  }
  src.dispose();
  dst.dispose();
  return { copy_GBps: Math.max(...Object.values(out)), ...out };
}

export async function run(gpu: Gpu, args: string[]): Promise<SuiteOutput> {
  const quick = args.includes('--quick');
  const results: Record<string, number> = {};
  const notes: Record<string, string> = {};
  Object.assign(results, await copyGBps(gpu, quick));
  console.log(`copy_GBps ${results['copy_GBps']!.toFixed(0)}`);
  if (!quick) {
    const torch = runTorch('kernels.py');
    Object.assign(results, torch.results);
    if (torch.note) notes['torch'] = torch.note;
  }
  return { results, notes };
}
