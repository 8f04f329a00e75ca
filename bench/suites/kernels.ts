// suite `kernels`: bandwidth, matmul and attention throughput, with PyTorch side by side.
//
// metrics (issue "Foundation"): copy_GBps, matmul_f32_4096_TFLOPs, matmul_f16_4096_TFLOPs (best
// path), attention_fwd_TFLOPs, attention_bwd_TFLOPs (B=4, T=2048, 16 heads, head dim 64, causal),
// and from bench/torch/kernels.py torch_matmul_f32_4096_TFLOPs (TF32 off),
// torch_matmul_f16_4096_TFLOPs, torch_attention_fwd_TFLOPs. matmul_f32_decode_GBps and
// matmul_f32_decode_nosplit_GBps: a decode step's product at the paper shape (32 rows of 3,200
// against a 3,200 x 3,200 f32 weight, nn.Linear's layout), weight bytes per second, with K split
// as chooseSplitK picks and unsplit. `--quick` runs small sizes (for a smoke run on a CPU
// adapter); its numbers are not the suite's metrics. `--only=decode` runs that section alone.

import type { SuiteOutput } from '../run.ts';
import type { Gpu } from '../../src/gpu/device.ts';
import { COPY_PER_THREAD, copy } from '../../src/kernels/copy/copy.ts';
import { attentionBackward, attentionFlops, attentionForward } from '../../src/kernels/attention/attention.ts';
import { MATMUL_CONFIGS, configFits, configName, matmul, matmulFlops } from '../../src/kernels/matmul/matmul.ts';
import { SUBGROUP_TILES, fmtTile, matmulSubgroup, subgroupMatmulSupported } from '../../src/kernels/matmul/matmul_subgroup.ts';
import type { DType } from '../../src/gpu/dtype.ts';
import { Rng } from '../../src/testing/rng.ts';
import { runTorch, timeGpu, warmUp } from '../lib.ts';

/** copy bandwidth (bytes read + written) for each vec4-per-thread variant, 1 GiB f32 */
export async function copyGBps(gpu: Gpu, quick: boolean): Promise<Record<string, number>> {
  const max = Math.min(1 << 30, gpu.device.limits.maxStorageBufferBindingSize);
  const bytes = quick ? 1 << 24 : Math.floor(max / 16) * 16;
  const n = bytes / 4;
  const src = await gpu.tensorFrom(new Rng(1).uniforms(n), [n], 'f32', 'copy_src');
  const dst = await gpu.tensor([n], 'f32', 'copy_dst');
  const out: Record<string, number> = {};
  await warmUp(gpu, () => copy(gpu, dst, src), quick ? 0.1 : 2);
  for (const per of COPY_PER_THREAD) {
    const ms = await timeGpu(gpu, () => copy(gpu, dst, src, per), { reps: 7, inner: 10 });
    out[`copy_x${per}_GBps`] = (2 * bytes) / ms / 1e6;
  }
  src.dispose();
  dst.dispose();
  return { copy_GBps: Math.max(...Object.values(out)), ...out };
}

async function randomTensor(gpu: Gpu, shape: number[], dtype: DType, seed: number, label: string) {
  const n = shape.reduce((a, b) => a * b, 1);
  return gpu.tensorFrom(new Rng(seed).normals(n), shape, dtype, label);
}

/** a decode step's product: x (32, K) times W (N, K) transposed, f32, K split as chosen and not at all */
async function decodeMatmulGBps(gpu: Gpu, quick: boolean): Promise<Record<string, number>> {
  const [M, N, K] = quick ? [32, 320, 320] : [32, 3200, 3200];
  const x = await randomTensor(gpu, [M, K], 'f32', 4, 'x');
  const w = await randomTensor(gpu, [N, K], 'f32', 5, 'w');
  const y = await gpu.tensor([M, N], 'f32', 'y');
  const out: Record<string, number> = {};
  for (const [name, splitK] of [['matmul_f32_decode_GBps', undefined], ['matmul_f32_decode_nosplit_GBps', 1]] as const) {
    const ms = await timeGpu(gpu, () => matmul(gpu, { out: y }, { a: x, b: w }, { transB: true, ...(splitK ? { splitK } : {}) }), { reps: 7, inner: 10 });
    out[name] = (N * K * 4) / ms / 1e6;
  }
  for (const t of [x, w, y]) t.dispose();
  return out;
}

/**
 * matmul at n^3: every tiled config for f32 (best is the metric), and for f16 the best of the
 * tiled configs and the subgroup-matrix (tensor core) tiles. per-config numbers go in notes.
 */
async function matmulTFLOPs(gpu: Gpu, n: number, notes: Record<string, string>): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  const flops = matmulFlops(n, n, n);
  for (const dtype of ['f32', 'f16'] as const) {
    const a = await randomTensor(gpu, [n, n], dtype, 2, 'a');
    const b = await randomTensor(gpu, [n, n], dtype, 3, 'b');
    const c = await gpu.tensor([n, n], 'f32', 'c');
    const per: string[] = [];
    let best = 0;
    for (const config of MATMUL_CONFIGS) {
      if (!configFits(gpu, config)) continue;
      const ms = await timeGpu(gpu, () => matmul(gpu, { out: c }, { a, b }, { config }), { reps: 5, inner: 5 });
      const tf = flops / ms / 1e9;
      per.push(`${configName(config)} ${tf.toFixed(1)}`);
      best = Math.max(best, tf);
    }
    if (dtype === 'f16') {
      const q = { M: n, N: n, K: n, dtypes: { a: 'f16', b: 'f16', out: 'f32' } } as const;
      for (const tile of SUBGROUP_TILES) {
        if (!subgroupMatmulSupported(gpu, { ...q, tile })) continue;
        try {
          const ms = await timeGpu(gpu, () => matmulSubgroup(gpu, { out: c }, { a, b }, { tile }), { reps: 5, inner: 5 });
          const tf = flops / ms / 1e9;
          per.push(`subgroup ${fmtTile(tile)} ${tf.toFixed(1)}`);
          best = Math.max(best, tf);
        } catch (e) {
          per.push(`subgroup ${fmtTile(tile)} failed: ${(e as Error).message.split('\n')[0]}`);
        }
      }
    }
    out[`matmul_${dtype}_${n}_TFLOPs`] = best;
    notes[`matmul_${dtype}_${n}`] = per.join('; ');
    for (const t of [a, b, c]) t.dispose();
  }
  return out;
}

/** attention forward and backward, f32 storage (the kernels accumulate in f32 on any dtype) */
async function attentionTFLOPs(gpu: Gpu, quick: boolean, notes: Record<string, string>): Promise<Record<string, number>> {
  const [B, T, NH, HS] = quick ? [1, 256, 4, 64] : [4, 2048, 16, 64];
  const out: Record<string, number> = {};
  const flops = attentionFlops(B, NH, T, HS, 0, true);
  for (const dtype of ['f32', 'f16'] as const) {
    const shape = [B, T, NH, HS];
    const q = await randomTensor(gpu, shape, dtype, 4, 'q');
    const k = await randomTensor(gpu, shape, dtype, 5, 'k');
    const v = await randomTensor(gpu, shape, dtype, 6, 'v');
    const dout = await randomTensor(gpu, shape, dtype, 7, 'dout');
    const o = await gpu.tensor(shape, dtype, 'out');
    const lse = await gpu.tensor([B, NH, T], 'f32', 'lse');
    const [dq, dk, dv] = await Promise.all(['dq', 'dk', 'dv'].map((l) => gpu.tensor(shape, dtype, l)));
    const fwd = await timeGpu(gpu, () => attentionForward(gpu, { out: o, lse }, { q, k, v }), { reps: 5, inner: 5 });
    const bwd = await timeGpu(gpu, () => attentionBackward(gpu, { dq: dq!, dk: dk!, dv: dv! }, { dout, q, k, v, out: o, lse }), { reps: 5, inner: 5 });
    const f = flops / fwd / 1e9;
    const b = (2.5 * flops) / bwd / 1e9;
    notes[`attention_${dtype}`] = `B=${B} T=${T} NH=${NH} HS=${HS} causal: fwd ${fwd.toFixed(3)} ms ${f.toFixed(1)} TFLOP/s, bwd ${bwd.toFixed(3)} ms ${b.toFixed(1)} TFLOP/s`;
    out[`attention_fwd_TFLOPs`] = Math.max(out['attention_fwd_TFLOPs'] ?? 0, f);
    out[`attention_bwd_TFLOPs`] = Math.max(out['attention_bwd_TFLOPs'] ?? 0, b);
    for (const t of [q, k, v, dout, o, lse, dq!, dk!, dv!]) t.dispose();
  }
  return out;
}

export async function run(gpu: Gpu, args: string[]): Promise<SuiteOutput> {
  const quick = args.includes('--quick');
  const results: Record<string, number> = {};
  const notes: Record<string, string> = {};
  Object.assign(results, await copyGBps(gpu, quick));
  console.log(`copy_GBps ${results['copy_GBps']!.toFixed(0)}`);
  // a failing section is reported in notes and leaves the other metrics standing
  const section = async (name: string, f: () => Promise<Record<string, number>>) => {
    try {
      Object.assign(results, await f());
      console.log(`${name} done`);
    } catch (e) {
      notes[`${name}_error`] = (e as Error).message.split('\n')[0] ?? String(e);
      console.log(`${name} failed: ${notes[`${name}_error`]}`);
    }
  };
  const only = args.find((a) => a.startsWith('--only='))?.slice('--only='.length);
  if (only !== undefined && only !== 'decode') throw new Error(`kernels: --only=${only} is not a section that runs alone: use --only=decode, or no --only for the whole suite`);
  if (only === 'decode') {
    await section('decode', () => decodeMatmulGBps(gpu, quick));
    return { results, notes };
  }
  await section('matmul', () => matmulTFLOPs(gpu, quick ? 256 : 4096, notes));
  await section('decode', () => decodeMatmulGBps(gpu, quick));
  await section('attention', () => attentionTFLOPs(gpu, quick, notes));
  if (!quick) {
    const torch = runTorch('kernels.py');
    Object.assign(results, torch.results);
    if (torch.note) notes['torch'] = torch.note;
  }
  return { results, notes };
}
