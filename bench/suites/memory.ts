// suite `memory`: the product-key memory layer at the paper's defaults, PyTorch side by side.
//
// sizes (issue "product-key memory layer"): d = 1024, n = 1024 (2^20 value rows), 4 heads,
// top-32 (bags of 128 rows), key dim 512, T = 8192 tokens. metrics:
//   copy_GBps                                       the same 1 GiB copy as the kernels suite
//   memory_read_fwd_{bf16,f32}_GBps                 membagForward: value rows read + output written
//   memory_read_bwd_{bf16,f32}_ms                   membagBackward: dweights and the dense value gradient
//   memory_layer_fwd_tok_s, memory_layer_fwdbwd_tok_s   the whole Memory+ layer (bf16 table, f32 products)
//   memory_layer_fwd_f16_tok_s, memory_layer_fwdbwd_f16_tok_s   the same with f16 forward products
// and from bench/torch/memory.py, on the same slots and weights: torch_embedding_bag_fwd_{bf16,f32}_GBps,
// torch_embedding_bag_fwdbwd_f32_ms, torch_memory_layer_fwd_tok_s, torch_memory_layer_fwdbwd_tok_s.
//   memory_layer_f16_same_slot_fraction, memory_layer_f16_out_rel_err   f16 against f32 forward
// notes: the layer's time per stage (forward and backward), each stage timed alone at the
// layer's shapes. `--quick` runs small sizes (a smoke run on a CPU adapter).

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Gpu } from '../../src/gpu/device.ts';
import type { DType } from '../../src/gpu/dtype.ts';
import type { Tensor } from '../../src/gpu/tensor.ts';
import { fillNormal } from '../../src/kernels/init/init.ts';
import { membagBackward, membagForward } from '../../src/kernels/membag/membag.ts';
import { MemoryLayer } from '../../src/model/memory_layer.ts';
import { ValueTable } from '../../src/model/value_table.ts';
import { Rng } from '../../src/testing/rng.ts';
import { GpuTimer } from '../../src/gpu/timing.ts';
import { median, runTorch, timeGpu } from '../lib.ts';
import type { SuiteOutput } from '../run.ts';
import { copyGBps } from './kernels.ts';

export interface Sizes {
  T: number;
  d: number;
  n: number;
  heads: number;
  k: number;
  dk: number;
}

export const PAPER: Sizes = { T: 8192, d: 1024, n: 1024, heads: 4, k: 32, dk: 512 };
export const QUICK: Sizes = { T: 64, d: 64, n: 32, heads: 2, k: 8, dk: 32 };

/** bag slots uniform over the table, weights a softmax of normals per head (as the layer reads) */
function bags(s: Sizes): { idx: Uint32Array; w: Float32Array } {
  const rng = new Rng(5);
  const B = s.heads * s.k;
  const N = s.n * s.n;
  const idx = Uint32Array.from({ length: s.T * B }, () => rng.int(N));
  const w = new Float32Array(s.T * B);
  for (let g = 0; g < s.T * s.heads; g++) {
    const e = Array.from({ length: s.k }, () => Math.exp(rng.normal()));
    const sum = e.reduce((a, b) => a + b, 0);
    e.forEach((v, j) => (w[g * s.k + j] = v / sum));
  }
  return { idx, w };
}

async function readBench(gpu: Gpu, s: Sizes, idx: Tensor, w: Tensor, dtype: DType, out: Record<string, number>): Promise<void> {
  const table = await ValueTable.create(gpu, { rows: s.n * s.n, dim: s.d, dtype, seed: 1 });
  const B = s.heads * s.k;
  const y = await gpu.tensor([s.T, s.d], dtype, 'y');
  const dy = await gpu.tensor([s.T, s.d], dtype, 'dy');
  await fillNormal(gpu, dy, { std: 1, seed: 9 });
  const dw = await gpu.tensor([s.T, B], 'f32', 'dw');
  const elem = dtype === 'f32' ? 4 : 2;
  const fwd = await timeGpu(gpu, () => membagForward(gpu, { out: y }, { values: table.values, idx, w }), { reps: 7, inner: 10 });
  out[`memory_read_fwd_${dtype}_GBps`] = ((s.T * B * s.d + s.T * s.d) * elem) / fwd / 1e6;
  const bwd = await timeGpu(gpu, () => membagBackward(gpu, { dw, dvalues: table.grads }, { values: table.values, idx, w, dout: dy }), { reps: 5, inner: 3 });
  out[`memory_read_bwd_${dtype}_ms`] = bwd;
  for (const t of [y, dy, dw]) t.dispose();
  table.dispose();
}

/** the whole layer, forward and forward + backward; per-stage times into notes */
async function layerBench(gpu: Gpu, s: Sizes, forwardDtype: 'f32' | 'f16', out: Record<string, number>, notes: Record<string, string>): Promise<void> {
  const table = await ValueTable.create(gpu, { rows: s.n * s.n, dim: s.d, dtype: 'bf16', seed: 1 });
  const cfg = { d: s.d, heads: s.heads, nKeys: s.n, topk: s.k, keyDim: s.dk, gated: true, forwardDtype };
  const layer = await MemoryLayer.create(gpu, 'mem', cfg, table, 3);
  const sfx = forwardDtype === 'f16' ? '_f16' : '';
  const x = await gpu.tensor([s.T, s.d], 'f32', 'x');
  const dout = await gpu.tensor([s.T, s.d], 'f32', 'dout');
  await fillNormal(gpu, x, { std: 1, seed: 10 });
  await fillNormal(gpu, dout, { std: 1, seed: 11 });
  const fwd = await timeGpu(
    gpu,
    async () => {
      const y = await layer.forward(x);
      layer.release();
      y.dispose();
    },
    { reps: 5, inner: 3 },
  );
  const fwdbwd = await timeGpu(
    gpu,
    async () => {
      const y = await layer.forward(x);
      const dx = await layer.backward(dout);
      y.dispose();
      dx.dispose();
    },
    { reps: 5, inner: 3 },
  );
  // where the time goes: each stage alone in its own timed region (GPU timestamps)
  if (gpu.features.timestamps) {
    const timer = new GpuTimer(gpu);
    const per = new Map<string, number[]>();
    layer.stageHook = async (stage, fn) => {
      timer.begin();
      await fn();
      let ms = NaN; // a stage that reads back to the host splits its region: not timed
      try {
        ms = await timer.end();
      } catch {
        await gpu.sync();
      }
      per.set(stage, [...(per.get(stage) ?? []), ms]);
    };
    for (let r = 0; r < 5; r++) {
      const y = await layer.forward(x);
      const dx = await layer.backward(dout);
      y.dispose();
      dx.dispose();
    }
    layer.stageHook = null;
    timer.dispose();
    notes[`memory_layer${sfx}_stages_ms`] = [...per].map(([k, v]) => `${k} ${median(v).toFixed(3)}`).join('; ');
  }
  out[`memory_layer_fwd${sfx}_tok_s`] = s.T / (fwd / 1e3);
  out[`memory_layer_fwdbwd${sfx}_tok_s`] = s.T / (fwdbwd / 1e3);
  notes[`memory_layer${sfx}`] =
    `T=${s.T} d=${s.d} n=${s.n} heads=${s.heads} k=${s.k} dk=${s.dk}, bf16 table, f32 activations, ${forwardDtype} forward products: ` +
    `fwd ${fwd.toFixed(3)} ms, fwd+bwd ${fwdbwd.toFixed(3)} ms`;
  x.dispose();
  dout.dispose();
  layer.dispose();
  table.dispose();
}

/**
 * How far the f16 forward products move the layer at these sizes: two layers with the same
 * weights (same seeds), one with f32 and one with f16 forward operands, on the same input:
 * the fraction of reads that pick the same slot, and the output's norm-wise relative error.
 */
async function f16Accuracy(gpu: Gpu, s: Sizes, out: Record<string, number>): Promise<void> {
  const table = await ValueTable.create(gpu, { rows: s.n * s.n, dim: s.d, dtype: 'bf16', seed: 1 });
  const cfg = { d: s.d, heads: s.heads, nKeys: s.n, topk: s.k, keyDim: s.dk, gated: true };
  const a = await MemoryLayer.create(gpu, 'mem32', { ...cfg, forwardDtype: 'f32' }, table, 3);
  const b = await MemoryLayer.create(gpu, 'mem16', { ...cfg, forwardDtype: 'f16' }, table, 3);
  const x = await gpu.tensor([s.T, s.d], 'f32', 'x');
  await fillNormal(gpu, x, { std: 1, seed: 10 });
  const ya = await a.forward(x);
  const yb = await b.forward(x);
  const [sa, sb] = [await gpu.read(a.lastRead()!.slots), await gpu.read(b.lastRead()!.slots)];
  let same = 0;
  for (let i = 0; i < sa.length; i++) if (sa[i] === sb[i]) same++;
  const [va, vb] = [await gpu.read(ya), await gpu.read(yb)];
  let num = 0;
  let den = 0;
  for (let i = 0; i < va.length; i++) {
    num += (va[i]! - vb[i]!) ** 2;
    den += va[i]! ** 2;
  }
  out['memory_layer_f16_same_slot_fraction'] = same / sa.length;
  out['memory_layer_f16_out_rel_err'] = Math.sqrt(num / den);
  for (const t of [x, ya, yb]) t.dispose();
  a.dispose();
  b.dispose();
  table.dispose();
}

export async function run(gpu: Gpu, args: string[]): Promise<SuiteOutput> {
  const quick = args.includes('--quick');
  const s = quick ? QUICK : PAPER;
  const results: Record<string, number> = {};
  const notes: Record<string, string> = {};
  results['copy_GBps'] = (await copyGBps(gpu, quick))['copy_GBps']!;
  console.log(`copy_GBps ${results['copy_GBps'].toFixed(0)}`);
  const { idx, w } = bags(s);
  const B = s.heads * s.k;
  const tIdx = await gpu.tensorFrom(idx, [s.T, B], 'u32', 'idx');
  const tW = await gpu.tensorFrom(w, [s.T, B], 'f32', 'w');
  const section = async (name: string, f: () => Promise<void>) => {
    try {
      await f();
      console.log(`${name} done`);
    } catch (e) {
      notes[`${name}_error`] = (e as Error).message.split('\n')[0] ?? String(e);
      console.log(`${name} failed: ${notes[`${name}_error`]}`);
    }
  };
  for (const dtype of ['bf16', 'f32'] as const) await section(`read_${dtype}`, () => readBench(gpu, s, tIdx, tW, dtype, results));
  tIdx.dispose();
  tW.dispose();
  await section('layer', () => layerBench(gpu, s, 'f32', results, notes));
  await section('layer_f16', () => layerBench(gpu, s, 'f16', results, notes));
  await section('f16_accuracy', () => f16Accuracy(gpu, s, results));
  if (!quick) {
    // the same slots and weights for PyTorch
    const dir = mkdtempSync(join(tmpdir(), 'engram-memory-'));
    try {
      writeFileSync(join(dir, 'idx.bin'), idx);
      writeFileSync(join(dir, 'w.bin'), w);
      const sz = ['--T', s.T, '--d', s.d, '--n', s.n, '--heads', s.heads, '--knn', s.k, '--kdim', s.dk].map(String);
      const torch = runTorch('memory.py', [...sz, '--idx', join(dir, 'idx.bin'), '--w', join(dir, 'w.bin')]);
      Object.assign(results, torch.results);
      if (torch.note) notes['torch'] = torch.note;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  return { results, notes };
}
