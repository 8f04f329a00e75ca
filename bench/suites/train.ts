// suite `train`: training and decoding a ~100M-parameter Llama, dense and with Memory+ layers,
// PyTorch side by side (issue "benchmarks": training throughput, MFU, decode, memory).
//
// models (`<m>` below is `dense` or `memory`): vocab 32000 (tied embeddings), dim 768, 12 blocks,
// 12 heads, 4 kv heads, SwiGLU 2048, maxSeqLen 1024: 100.1 M parameters. `memory`: the same with
// the FFN of 3 blocks (2, 6, 10: centred at stride 4) a Memory+ layer, 4 heads, top-32, key dim
// 384, one shared bf16 value table of 256^2 rows (50.3 M values; 144.6 M parameters in all): the
// CLI's `base` preset.
// training: B = 8 sequences of T = 1024 tokens per step (8192 tokens, no gradient accumulation),
// Trainer.step with AdamW as the CLI makes it (lr 3e-4, values 10 lr, weight decay 0.1, betas
// 0.9/0.95, per-group clipping at 1.0), random token ids (seeded); warm-up steps for 2 s (an idle
// H100 runs at lower clocks), then the median wall time of single steps, each ending with the
// loss read back (as the training loop does).
// decode: batch 1, a 32-token prompt, 256 new tokens, greedy, with the KV cache (generate());
// tokens/s = 256 / wall time of the whole call (the prompt pass included), median of 3 after a
// warm-up call.
// metrics, for each <m>:
//   params_<m>               trainable parameters (embedding once, norms, biases, value table)
//   flops_per_token_<m>      training FLOPs per token (formula below)
//   train_tok_s_<m>          tokens per second of training steps
//   train_mfu_<m>            train_tok_s x flops_per_token / 989e12 (H100 SXM dense BF16 peak)
//   peak_gpu_bytes_<m>       the most bytes of live GPU buffers from the model's creation to the
//                            end of the timed steps (parameters, gradients, AdamW state, scratch)
//   decode_tok_s_<m>         greedy decoding tokens per second
// and from bench/torch/train.py (transformers' LlamaForCausalLM, the memory blocks' mlp a PyTorch
// Memory+ layer; eager, bf16 autocast, fused AdamW, same B, T and decode): torch_train_tok_s_<m>,
// torch_peak_gpu_bytes_<m> (torch.cuda.max_memory_allocated), torch_peak_reserved_bytes_<m>,
// torch_decode_tok_s_<m> (bf16 weights, model.generate with its KV cache), torch_params_<m>;
// and torch_train_mfu_<m>, computed here with the same flops_per_token.
//
// flops_per_token = 6 Nmm + 6 L T d (training = forward + backward = 3 x forward):
//   Nmm: the weights every token multiplies, counted once per multiply-add: per block Wq, Wk, Wv,
//        Wo (2 d^2 + 2 d kvdim) and the FFN's 3 d F, or for a memory block its query projection
//        (d H dk), its sub-key scores (H n dk: 2H query halves of dk/2 against n sub-keys each),
//        its value read (H k d: k rows of d per head) and its value projections (2 d^2: Ws and
//        Wo); plus the output head V d (tied with the embedding, whose lookup costs nothing).
//        the value table's size does not count: a token reads H k of its n^2 rows.
//   6 L T d: causal attention, QK^T and PV over T/2 positions on average: 2 x 2 (T/2) d per
//        token and block forward (PaLM's 12 L T d counts every position; half of it here).
// the top-k selections, norms, softmaxes and the optimizer are not counted (as usual for MFU).
//
// memory on an 80 GB H100 (B = 8, T = 1024, N = 8192 tokens; engram keeps everything in f32):
// parameters, gradients and AdamW's two moments 16 B per parameter (1.6 GB dense; the bf16 table
// 18 B per value with its f32 master: 0.9 GB more); saved activations per block and token ~11.3 K
// floats (h, n1, q, att, h1, n2 of d; k, v of kvdim; gate, up, swiglu of F): 45 KB, x 12 blocks
// x 8192 tokens = 4.4 GB; logits and their gradient N x V f32, 1.05 GB each: an estimate of
// ~8-10 GB, far from 80 GB (peak_gpu_bytes_<m> measures it). B = 8 also keeps the logits tensor
// (N V 4 bytes) well under WebGPU's 2 GiB storage binding limit (B = 16 would need 2.1e9 bytes,
// whose scratch size class does not fit in one binding). PyTorch (bf16 autocast) needs less.
// `--quick` runs tiny models (a smoke run on a CPU adapter; torch on the CPU without CUDA): its
// numbers are not the suite's metrics.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Gpu } from '../../src/gpu/device.ts';
import { generate } from '../../src/infer/generate.ts';
import { parseModelConfig, type ModelConfig } from '../../src/model/config.ts';
import { Transformer } from '../../src/model/transformer.ts';
import { Rng } from '../../src/testing/rng.ts';
import { AdamW, type OptimizerConfig } from '../../src/train/optimizer.ts';
import type { Schedule } from '../../src/train/schedule.ts';
import { Trainer, type Batch } from '../../src/train/trainer.ts';
import { median, runTorch, warmUp } from '../lib.ts';
import type { SuiteOutput } from '../run.ts';

/** H100 SXM dense BF16 tensor-core peak, FLOP/s (MFU's denominator) */
export const H100_BF16_PEAK = 989e12;
/** H100 SXM f32 (CUDA cores, no tensor cores) peak, FLOP/s: the ceiling of engram's f32 kernels */
export const H100_F32_PEAK = 67e12;

interface Sizes {
  /** sequences per step and their length */
  B: number;
  T: number;
  /** decode: prompt tokens and new tokens */
  prompt: number;
  newTokens: number;
  /** seconds of warm-up steps, then timed steps */
  warmupS: number;
  steps: number;
  decodeReps: number;
}

const FULL: Sizes = { B: 8, T: 1024, prompt: 32, newTokens: 256, warmupS: 2, steps: 7, decodeReps: 3 };
const QUICK: Sizes = { B: 2, T: 64, prompt: 8, newTokens: 8, warmupS: 0, steps: 3, decodeReps: 1 };

/** the CLI's AdamW (only lr is set there; the rest are AdamW's defaults) */
const OPTIMIZER: OptimizerConfig = { lr: 3e-4 };
/** a constant learning rate (the schedule does not change a step's cost) */
const SCHEDULE: Schedule = { warmup: 0, steps: 1 << 20, minRatio: 1 };

/** the two models' JSON configs (before parseModelConfig) */
export function modelJsons(quick: boolean): Record<'dense' | 'memory', Record<string, unknown>> {
  const dense = quick
    ? { vocabSize: 512, dim: 64, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 128, maxSeqLen: 64, tiedEmbeddings: true }
    : { vocabSize: 32000, dim: 768, layers: 12, heads: 12, kvHeads: 4, ffnHidden: 2048, maxSeqLen: 1024, tiedEmbeddings: true };
  const memory = quick
    ? { count: 1, stride: 1, nKeys: 16, heads: 2, topk: 4, keyDim: 32, valueDtype: 'bf16' }
    : { count: 3, stride: 4, nKeys: 256, heads: 4, topk: 32, keyDim: 384, valueDtype: 'bf16' };
  return { dense, memory: { ...dense, memory } };
}

/** Training FLOPs per token at sequence length T (see the header). */
export function flopsPerToken(c: ModelConfig, T: number): number {
  const { dim: d, layers: L, heads: NH, kvHeads: NKV, ffnHidden: F, vocabSize: V } = c;
  const kv = NKV * (d / NH);
  let nmm = V * d;
  for (let i = 0; i < L; i++) {
    nmm += 2 * d * d + 2 * d * kv;
    const m = c.memory && c.memory.layers.includes(i) ? c.memory : null;
    nmm += m ? d * m.heads * m.keyDim + m.heads * m.nKeys * m.keyDim + m.heads * m.topk * d + (m.gated ? 2 * d * d : 0) : 3 * d * F;
  }
  return 6 * nmm + 6 * L * T * d;
}

/** random ids and next-token targets (B, T), seeded */
async function randomBatch(gpu: Gpu, V: number, B: number, T: number, seed: number): Promise<Batch> {
  const rng = new Rng(seed);
  const seq = Uint32Array.from({ length: B * (T + 1) }, () => rng.int(V));
  const ids = new Uint32Array(B * T);
  const targets = new Uint32Array(B * T);
  for (let b = 0; b < B; b++) {
    ids.set(seq.subarray(b * (T + 1), b * (T + 1) + T), b * T);
    targets.set(seq.subarray(b * (T + 1) + 1, (b + 1) * (T + 1)), b * T);
  }
  return { ids: await gpu.tensorFrom(ids, [B, T], 'u32', 'ids'), targets: await gpu.tensorFrom(targets, [B, T], 'u32', 'targets') };
}

/** median wall milliseconds of one training step (after compiling and warming up), and what one step records */
async function timeSteps(gpu: Gpu, trainer: Trainer, batch: Batch, s: Sizes): Promise<{ ms: number; all: number[]; dispatches: number; flushes: number; loss: number }> {
  let loss = NaN;
  const step = async () => {
    loss = (await trainer.step([batch])).loss;
  };
  await step(); // compiles every pipeline
  if (s.warmupS > 0) await warmUp(gpu, step, s.warmupS);
  const all: number[] = [];
  let [dispatches, flushes] = [0, 0];
  for (let i = 0; i < s.steps; i++) {
    const [d0, f0, t0] = [gpu.dispatches, gpu.flushes, performance.now()];
    await step(); // ends with the loss read back: the GPU is done
    all.push(performance.now() - t0);
    [dispatches, flushes] = [gpu.dispatches - d0, gpu.flushes - f0];
  }
  return { ms: median(all), all, dispatches, flushes, loss };
}

/** greedy decoding tokens/s (median of decodeReps calls after a warm-up call) */
async function decodeBench(gpu: Gpu, model: Transformer, name: string, s: Sizes, out: Record<string, number>, notes: Record<string, string>): Promise<void> {
  const V = model.config.vocabSize;
  const rng = new Rng(11);
  const prompt = Array.from({ length: s.prompt }, () => rng.int(V));
  const decode = async () => {
    const t0 = performance.now();
    const ids = await generate(gpu, model, prompt, { maxNew: s.newTokens, temperature: 0 });
    if (ids.length !== s.newTokens) throw new Error(`generate returned ${ids.length} tokens, expected ${s.newTokens}`);
    return performance.now() - t0;
  };
  await decode(); // compiles the decode shapes' pipelines
  const d0 = gpu.dispatches;
  const all: number[] = [];
  for (let i = 0; i < s.decodeReps; i++) all.push(await decode());
  const perToken = (gpu.dispatches - d0) / s.decodeReps / s.newTokens;
  const ms = median(all);
  out[`decode_tok_s_${name}`] = s.newTokens / (ms / 1e3);
  notes[`decode_${name}`] =
    `prompt ${s.prompt}, ${s.newTokens} new tokens greedy: ${ms.toFixed(0)} ms per call (${(ms / s.newTokens).toFixed(2)} ms per token, the prompt pass included), ` +
    `${perToken.toFixed(0)} dispatches and one submit + logits readback per token`;
  console.log(`${name}: decode ${out[`decode_tok_s_${name}`]!.toFixed(1)} tok/s`);
}

/** one model: training steps (with the peak memory from the model's creation on), then decoding */
async function benchModel(gpu: Gpu, name: string, config: ModelConfig, s: Sizes, out: Record<string, number>, notes: Record<string, string>): Promise<void> {
  gpu.scratch.trim(); // the previous model's pooled buffers are not this one's
  const base = gpu.memory().bytes;
  gpu.resetPeak();
  let model: Transformer | null = null;
  let opt: AdamW | null = null;
  let batch: Batch | null = null;
  try {
    model = await Transformer.create(gpu, config, 1);
    opt = await AdamW.create(gpu, model.params, OPTIMIZER);
    batch = await randomBatch(gpu, config.vocabSize, s.B, s.T, 7);
    const t = await timeSteps(gpu, new Trainer(gpu, model, opt, SCHEDULE), batch, s);
    const peakBytes = gpu.memory().peak - base;
    const fpt = flopsPerToken(config, s.T);
    const tokS = (s.B * s.T) / (t.ms / 1e3);
    out[`params_${name}`] = model.params.reduce((n, p) => n + p.value.size, 0);
    out[`flops_per_token_${name}`] = fpt;
    out[`train_tok_s_${name}`] = tokS;
    out[`train_mfu_${name}`] = (tokS * fpt) / H100_BF16_PEAK;
    out[`peak_gpu_bytes_${name}`] = peakBytes;
    const flops = tokS * fpt;
    notes[`train_${name}`] =
      `B=${s.B} T=${s.T}: ${s.B * s.T} tokens per step, step ${t.ms.toFixed(1)} ms (median of ${s.steps}: ${t.all.map((x) => x.toFixed(1)).join(' ')}), ` +
      `${(flops / 1e12).toFixed(2)} TFLOP/s of model FLOPs (${((100 * flops) / H100_F32_PEAK).toFixed(1)}% of the H100's f32 peak), ` +
      `${t.dispatches} dispatches and ${t.flushes} submits per step, loss ${t.loss.toFixed(3)} (random ids: ln V = ${Math.log(config.vocabSize).toFixed(2)})`;
    console.log(`${name}: train ${Math.round(tokS)} tok/s, step ${t.ms.toFixed(1)} ms, peak ${(peakBytes / 2 ** 30).toFixed(2)} GiB`);
    // decoding needs neither the optimizer state nor the training scratch
    opt.dispose();
    opt = null;
    gpu.scratch.trim();
    await decodeBench(gpu, model, name, s, out, notes);
  } finally {
    if (batch) for (const u of [batch.ids, batch.targets]) u.dispose();
    opt?.dispose();
    model?.dispose();
    gpu.scratch.trim();
  }
}

export async function run(gpu: Gpu, args: string[]): Promise<SuiteOutput> {
  const quick = args.includes('--quick');
  const s = quick ? QUICK : FULL;
  const results: Record<string, number> = {};
  const notes: Record<string, string> = {};
  const jsons = modelJsons(quick);
  const configs = { dense: parseModelConfig(jsons.dense), memory: parseModelConfig(jsons.memory) };
  for (const [name, config] of Object.entries(configs)) {
    try {
      await benchModel(gpu, name, config, s, results, notes);
    } catch (e) {
      notes[`${name}_error`] = (e as Error).message.split('\n')[0] ?? String(e);
      console.log(`${name} failed: ${notes[`${name}_error`]}`);
    }
  }
  // PyTorch: the same configs (parsed: memory layers and defaults explicit), sizes and decode
  const dir = mkdtempSync(join(tmpdir(), 'engram-train-'));
  try {
    const cfgArgs = Object.entries(configs).flatMap(([name, c]) => {
      const path = join(dir, `${name}.json`);
      writeFileSync(path, JSON.stringify(c));
      return ['--config', `${name}=${path}`];
    });
    const sz = ['--batch', s.B, '--seq', s.T, '--prompt', s.prompt, '--new', s.newTokens, '--steps', s.steps, '--warmup', s.warmupS, '--decode-reps', s.decodeReps].map(String);
    const torch = runTorch('train.py', [...cfgArgs, ...sz, ...(quick ? ['--quick'] : [])]);
    Object.assign(results, torch.results);
    if (torch.note) notes['torch'] = torch.note;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  for (const [name, config] of Object.entries(configs)) {
    const tok = results[`torch_train_tok_s_${name}`];
    if (tok !== undefined) results[`torch_train_mfu_${name}`] = (tok * flopsPerToken(config, s.T)) / H100_BF16_PEAK;
    const [ours, theirs] = [results[`params_${name}`], results[`torch_params_${name}`]];
    if (ours !== undefined && theirs !== undefined && ours !== theirs) notes[`params_${name}_mismatch`] = `engram ${ours} parameters, torch ${theirs}`;
  }
  notes['setup'] =
    `engram: f32 parameters and activations (bf16 value table with an f32 AdamW master), f32 products on CUDA cores (WebGPU has no f32 tensor-core path), ` +
    `AdamW lr ${OPTIMIZER.lr} (values 10x), one micro-batch per step; times are wall clock per step including the loss readback. ` +
    `torch: eager, bf16 autocast over f32 parameters (value table f32), fused AdamW with the same groups and per-group clipping; decode in bf16.`;
  notes['mfu'] =
    `train_mfu and torch_train_mfu divide model FLOPs/s by ${H100_BF16_PEAK / 1e12} TFLOP/s, the H100 SXM's dense BF16 tensor-core peak, whatever the adapter; ` +
    `engram computes in f32 without tensor cores, whose peak is ${H100_F32_PEAK / 1e12} TFLOP/s: its MFU cannot exceed ${((100 * H100_F32_PEAK) / H100_BF16_PEAK).toFixed(1)}% (the train notes give the f32 fraction)`;
  notes['flops_per_token'] = '6 Nmm + 6 L T d: Nmm the matmul weights per token (attention, FFN or the memory layer\'s query, sub-key scores, value read and value projections, and the tied head), not the value table';
  notes['limits'] =
    'engram: every product and the attention in f32 on CUDA cores (no tensor cores); a training step is many small dispatches ' +
    '(the train notes count them and the submits); decoding records a whole forward per token, then submits and reads the logits back, ' +
    'so at batch 1 its rate depends on dispatch and round-trip latency more than on FLOPs; the value table is read as bf16 ' +
    '(torch trains with an f32 table and decodes with a bf16 one)';
  if (quick) notes['quick'] = 'tiny models and sizes (a smoke run; torch on the CPU when there is no CUDA): not the suite\'s metrics, not comparable';
  return { results, notes };
}
