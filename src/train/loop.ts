// the training loop: batches drawn from a token stream, the Trainer's steps, periodic validation
// with the memory layers' read statistics, checkpoints every N steps and on request (Ctrl-C),
// and resumption that continues exactly where a run stopped.
//
// batches: micro-batch j of step s takes B windows of T + 1 tokens at offsets drawn from a hash
// of (seed, s, j, b): a function of the step alone, so a resumed run sees the same batches as
// an uninterrupted one, and with the model and optimizer state restored bit for bit its losses
// are the same. a checkpoint folder (model/checkpoint.ts) gets optimizer.safetensors (AdamW's
// moments and masters), trainer.json (the step), history.json (every step's loss and the
// validation losses, carried over on resume) and loss.png (that history drawn, plot.ts) besides
// the model.
// a model whose value table is sharded over several GPUs trains with ShardedAdamW, and its
// checkpoint is one GPU's (the table and its optimizer state saved whole): it resumes on one GPU
// or sharded (resumeTraining's valueGpus), whichever way it was saved.

import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { decodeSafetensors, encodeSafetensors } from '../io/safetensors.ts';
import { loadModel, saveModel } from '../model/checkpoint.ts';
import type { MemoryReadStats } from '../model/memory_stats.ts';
import type { ValueSharding } from '../model/sharded_values.ts';
import type { Transformer } from '../model/transformer.ts';
import type { AdamW, OptimizerConfig } from './optimizer.ts';
import { lossCurvePng, type CurvePoint } from './plot.ts';
import type { Schedule } from './schedule.ts';
import { optimizerFor, Trainer, type Batch, type Optimizer } from './trainer.ts';

export interface LoopOptions {
  /** optimizer steps in all (a resumed run continues to this count) */
  steps: number;
  /** sequences per micro-batch and their length */
  batch: number;
  seqLen: number;
  /** micro-batches per step (gradient accumulation), default 1 */
  accum?: number;
  schedule: Schedule;
  seed?: number;
  /** validate every this many steps (and at the end), default 0: never */
  evalEvery?: number;
  evalBatches?: number;
  /** checkpoint folder; saved every saveEvery steps, at the end, and when `stop` turns true */
  dir?: string;
  saveEvery?: number;
  /** files saved with every checkpoint (tokenizer.json, ...) */
  files?: Record<string, Uint8Array | string>;
  /** the loss history of the steps before this call (historyOf() of the resumed checkpoint) */
  history?: readonly CurvePoint[];
  /** draw the history into loss.png at every save (default true) */
  plot?: boolean;
  /** polled after each step: true saves a checkpoint and returns (Ctrl-C) */
  stop?: () => boolean;
  /**
   * micro-batch j of step s from the caller instead of windows of the training stream (e.g.
   * Memory³'s MemoryBatcher: batches with explicit memory); it must be a function of (s, j) for
   * resumption to be exact. dispose() frees it after the step (default: its ids and targets)
   */
  batches?: (s: number, j: number) => Promise<Batch & { dispose?: () => void }>;
  /** validation micro-batch j (0 .. evalBatches - 1) from the caller, the same at every evaluation (e.g. with explicit memory); default: fixed windows of val */
  valBatches?: (j: number) => Promise<Batch & { dispose?: () => void }>;
  log?: (l: LogLine) => void;
}

export interface LogLine {
  step: number;
  steps: number;
  loss: number;
  lrFactor: number;
  tokensPerSecond: number;
  etaSeconds: number;
  /** at validation steps */
  valLoss?: number;
  memory?: MemoryReadStats[];
  saved?: string;
}

/** a 32-bit hash of four integers (counter-based: the batch offsets need no state) */
function hash4(a: number, b: number, c: number, d: number): number {
  let h = 0x811c9dc5;
  for (const x of [a, b, c, d]) {
    h = Math.imul(h ^ (x >>> 0), 0x01000193);
    h ^= h >>> 15;
    h = Math.imul(h, 0x2c1b3c6d);
    h ^= h >>> 12;
  }
  return h >>> 0;
}

/** micro-batch j of step s: B windows of T + 1 tokens from `tokens` */
async function batchAt(gpu: Gpu, tokens: Uint32Array, B: number, T: number, seed: number, s: number, j: number): Promise<Batch> {
  const span = tokens.length - T - 1;
  if (span < 1) throw new EngramError(`training data: ${tokens.length} tokens is too few for sequences of ${T} + 1`);
  const ids = new Uint32Array(B * T);
  const targets = new Uint32Array(B * T);
  for (let b = 0; b < B; b++) {
    const at = hash4(seed, s, j, b) % span;
    ids.set(tokens.subarray(at, at + T), b * T);
    targets.set(tokens.subarray(at + 1, at + T + 1), b * T);
  }
  return { ids: await gpu.tensorFrom(ids, [B, T], 'u32', 'ids'), targets: await gpu.tensorFrom(targets, [B, T], 'u32', 'targets') };
}

/** Saves model, optimizer state and step into `dir` (atomically); a sharded run's as one GPU's. */
export async function saveTraining(gpu: Gpu, dir: string, model: Transformer, opt: Optimizer, files: Record<string, Uint8Array | string> = {}): Promise<void> {
  const { step, tensors } = await opt.stateBytes();
  await saveModel(gpu, dir, model, { ...files, 'optimizer.safetensors': encodeSafetensors(tensors), 'trainer.json': JSON.stringify({ step }) + '\n' });
}

/** The loss history a checkpoint holds (history.json), or none. */
export function historyOf(files: Record<string, Uint8Array>): CurvePoint[] {
  const h = files['history.json'];
  return h ? (JSON.parse(new TextDecoder().decode(h)) as CurvePoint[]) : [];
}

/**
 * Loads a training checkpoint: the model, an optimizer with its state restored, and the other files.
 * valueGpus: the value table sharded over these GPUs (loadModel's), with a ShardedAdamW
 */
export async function resumeTraining(gpu: Gpu, dir: string, cfg: OptimizerConfig): Promise<{ model: Transformer; opt: AdamW; files: Record<string, Uint8Array> }>;
export async function resumeTraining(gpu: Gpu, dir: string, cfg: OptimizerConfig, o: ValueSharding): Promise<{ model: Transformer; opt: Optimizer; files: Record<string, Uint8Array> }>;
export async function resumeTraining(gpu: Gpu, dir: string, cfg: OptimizerConfig, o: ValueSharding = {}): Promise<{ model: Transformer; opt: Optimizer; files: Record<string, Uint8Array> }> {
  const { model, files } = await loadModel(gpu, dir, o);
  const optBytes = files['optimizer.safetensors'];
  const trainer = files['trainer.json'];
  if (!optBytes || !trainer) {
    model.dispose();
    throw new EngramError(`${dir}: not a training checkpoint (no optimizer.safetensors / trainer.json); load it with loadModel to fine-tune from scratch`);
  }
  let step: unknown;
  try {
    step = (JSON.parse(new TextDecoder().decode(trainer)) as { step?: unknown } | null)?.step;
  } catch {
    step = undefined;
  }
  if (typeof step !== 'number' || !Number.isSafeInteger(step) || step < 0) {
    model.dispose();
    throw new EngramError(`${dir}/trainer.json: expected {"step": <a non-negative integer>}, got ${new TextDecoder().decode(trainer).slice(0, 80)}`);
  }
  let opt: Optimizer | undefined;
  try {
    opt = await optimizerFor(gpu, model, cfg);
    const { tensors } = decodeSafetensors(optBytes, `${dir}/optimizer.safetensors`);
    opt.restore(step, (name) => tensors[name]?.data);
  } catch (e) {
    opt?.dispose();
    model.dispose();
    throw e instanceof EngramError ? new EngramError(`${dir}: ${e.message}`) : e;
  }
  return { model, opt, files };
}

/** Trains from opt.step to o.steps; returns the step losses of this call. */
export async function trainLoop(gpu: Gpu, model: Transformer, opt: Optimizer, data: { train: Uint32Array; val?: Uint32Array }, o: LoopOptions): Promise<number[]> {
  const { batch: B, seqLen: T, accum = 1, seed = 0, evalEvery = 0, evalBatches = 4, saveEvery = 0 } = o;
  if (T > model.config.maxSeqLen) throw new EngramError(`trainLoop: seqLen ${T} exceeds the model's maxSeqLen ${model.config.maxSeqLen}`);
  const trainer = new Trainer(gpu, model, opt, o.schedule);
  const losses: number[] = [];
  const t0 = performance.now();
  let tokens = 0;
  const first = opt.step;
  const history = (o.history ?? []).filter((p) => p.step <= first);
  while (opt.step < o.steps) {
    const s = opt.step + 1;
    const micro: (Batch & { dispose?: () => void })[] = [];
    for (let j = 0; j < accum; j++) micro.push(o.batches ? await o.batches(s, j) : await batchAt(gpu, data.train, B, T, seed, s, j));
    const r = await trainer.step(micro);
    for (const m of micro) freeBatch(m);
    losses.push(r.loss);
    tokens += r.tokens;
    const secs = (performance.now() - t0) / 1000;
    const line: LogLine = {
      step: r.step,
      steps: o.steps,
      loss: r.loss,
      lrFactor: r.lrFactor,
      tokensPerSecond: tokens / secs,
      etaSeconds: (secs / (r.step - first)) * (o.steps - r.step),
    };
    const last = r.step === o.steps;
    if (data.val && evalEvery > 0 && (r.step % evalEvery === 0 || last)) {
      const val = data.val;
      Object.assign(line, await validate(gpu, model, evalBatches, o.valBatches ?? ((j) => batchAt(gpu, val, B, T, 0x5eed, 0, j))));
    }
    history.push({ step: r.step, loss: r.loss, ...(line.valLoss !== undefined ? { valLoss: line.valLoss } : {}) });
    const stop = o.stop?.() ?? false;
    if (o.dir && ((saveEvery > 0 && r.step % saveEvery === 0) || last || stop)) {
      const files: Record<string, Uint8Array | string> = { ...o.files, 'history.json': JSON.stringify(history) };
      if (o.plot ?? true) files['loss.png'] = await lossCurvePng(history, { title: `training loss, step ${r.step}` });
      await saveTraining(gpu, o.dir, model, opt, files);
      line.saved = o.dir;
    }
    o.log?.(line);
    if (stop) break;
  }
  return losses;
}

/** frees a batch: its own dispose() (e.g. MemoryBatcher's, which owns its memory too), else its ids and targets */
export function freeBatch(b: Batch & { dispose?: () => void }): void {
  if (b.dispose) b.dispose();
  else for (const t of [b.ids, b.targets]) t.dispose();
}

/** mean loss over the validation batches (fixed per j), and the memory layers' read statistics on the first */
async function validate(gpu: Gpu, model: Transformer, n: number, batch: (j: number) => Promise<Batch & { dispose?: () => void }>): Promise<{ valLoss: number; memory: MemoryReadStats[] }> {
  let sum = 0;
  let memory: MemoryReadStats[] = [];
  for (let j = 0; j < n; j++) {
    const b = await batch(j);
    const loss: Tensor = await model.forward(b.ids, b.targets, b.memory);
    if (j === 0) memory = await Promise.all(model.memoryLayers.map((m) => m.stats()));
    model.release();
    sum += (await gpu.read(loss))[0]!;
    loss.dispose();
    freeBatch(b);
  }
  return { valLoss: sum / n, memory };
}
