// how fast does a small model learn to look a fact up, in its context and in an explicit memory?
//
//   node --import tsx scripts/lookup_probe.ts [--steps 1000]
//
// the task (associative recall): a reference is 4 (key, value) pairs, [k1 v1 k2 v2 k3 v3 k4 v4],
// keys distinct among 24, values random among 32; a chunk asks the same pairs in a shuffled order,
// [ka va kb vb ...]. the value after a key is chance (ln 32) unless the model looks the key up.
//   context  the reference, then the chunk, in one 16-token sequence (no memory)
//   memory   the chunk alone (8 tokens), its reference as its Memory³ memory (every block, all 8
//            tokens kept; MemoryBatcher: encoded by the model being trained, no gradient through
//            the encoding), and the same model evaluated with another chunk's memory
//   memory_gradient   the same with gradients through the encoding (MemoryBatcher gradient)
// one model per variant (dim 64, 2 blocks, seed 5), AdamW 3e-3, batch 16, the same steps; metrics:
// the mean loss at the chunks' key positions (the value targets), over 4 fixed batches:
//   lookup_loss_context, lookup_loss_memory, lookup_loss_memory_other, lookup_loss_memory_gradient,
//   lookup_loss_memory_gradient_other, chance
// writes bench/results/lookup_probe-<device>-<date>.json (a loss, not a timing: any adapter).

import { parseArgs } from 'node:util';
import { writeResults, deviceName } from '../bench/lib.ts';
import { Gpu } from '../src/gpu/device.ts';
import { MemoryBatcher } from '../src/memory3/train.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { Rng } from '../src/testing/rng.ts';
import { freeBatch, trainLoop } from '../src/train/loop.ts';
import { AdamW } from '../src/train/optimizer.ts';
import type { Batch } from '../src/train/trainer.ts';

const { values } = parseArgs({ options: { steps: { type: 'string', default: '1000' } } });
const steps = Number(values.steps);
const B = 16;
const IGNORE = 0xffffffff;
const gpu = await Gpu.create();
const config = parseModelConfig({ vocabSize: 64, dim: 64, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 128, maxSeqLen: 32 });
const schedule = { warmup: 20, steps, minRatio: 0.1 };

/** a reference: 4 pairs; and a chunk: the same pairs shuffled */
function pairs(r: Rng): { ref: number[]; chunk: number[] } {
  const keys = r.shuffle(Array.from({ length: 24 }, (_, i) => 4 + i)).slice(0, 4);
  const ref = keys.flatMap((k) => [k, 32 + r.int(32)]);
  return { ref, chunk: r.shuffle([0, 1, 2, 3]).flatMap((p) => [ref[2 * p]!, ref[2 * p + 1]!]) };
}

/** mean loss of `batch(j)` for j = 0..3, its targets kept only at the chunk's key positions (from `from`) */
async function lookupLoss(model: Transformer, batch: (j: number) => Promise<Batch & { dispose?: () => void }>, T: number, from: number): Promise<number> {
  let sum = 0;
  for (let j = 0; j < 4; j++) {
    const x = await batch(j);
    const t = (await gpu.read(x.targets)) as Uint32Array;
    const targets = await gpu.tensorFrom(Uint32Array.from(t, (v, i) => (i % T >= from && (i % T) % 2 === 0 ? v : IGNORE)), [B, T], 'u32', 'targets');
    const loss = await model.forward(x.ids, targets, x.memory);
    sum += (await gpu.read(loss))[0]!;
    for (const u of [loss, targets]) u.dispose();
    model.release();
    freeBatch(x);
  }
  return sum / 4;
}

async function contextVariant(): Promise<number> {
  const model = await Transformer.create(gpu, config, 5);
  const opt = await AdamW.create(gpu, model.params, { lr: 3e-3 });
  const batch = async (seed: number) => {
    const r = new Rng(seed);
    const ids = new Uint32Array(B * 16);
    const targets = new Uint32Array(B * 16);
    for (let b = 0; b < B; b++) {
      const { ref, chunk } = pairs(r);
      const s = [...ref, ...chunk, 0];
      for (let t = 0; t < 16; t++) [ids[b * 16 + t], targets[b * 16 + t]] = [s[t]!, s[t + 1]!];
    }
    return { ids: await gpu.tensorFrom(ids, [B, 16], 'u32', 'ids'), targets: await gpu.tensorFrom(targets, [B, 16], 'u32', 'targets') };
  };
  try {
    await trainLoop(gpu, model, opt, { train: new Uint32Array(64) }, { steps, batch: B, seqLen: 16, schedule, batches: (s) => batch(s * 7 + 1) });
    return await lookupLoss(model, (j) => batch(1e6 + j), 16, 8);
  } finally {
    opt.dispose();
    model.dispose();
  }
}

async function memoryVariant(gradient: boolean): Promise<{ own: number; other: number }> {
  const model = await Transformer.create(gpu, config, 5);
  const opt = await AdamW.create(gpu, model.params, { lr: 3e-3 });
  const rng = new Rng(8);
  const made = Array.from({ length: 4000 }, () => pairs(rng));
  const refs = made.map((m) => m.ref);
  const stream = Uint32Array.from([...made.flatMap((m) => m.chunk), 0]);
  const plan = Int32Array.from(made, (_, g) => g);
  const other = Int32Array.from(plan, (g) => (g + 1 + rng.int(made.length - 1)) % made.length);
  const o = { prefix: [1, 2], chunk: 8, window: 1, tokens: 8, memoryPositions: 8, seed: 3, layers: [0, 1], gradient };
  const own = new MemoryBatcher(gpu, model, refs, plan, o);
  const wrong = new MemoryBatcher(gpu, model, refs, other, o);
  try {
    await trainLoop(gpu, model, opt, { train: stream }, { steps, batch: B, seqLen: 8, schedule, batches: (s, j) => own.batch(stream, B, 8, s + j) });
    return { own: await lookupLoss(model, (j) => own.batch(stream, B, 8, 1e6 + j), 8, 0), other: await lookupLoss(model, (j) => wrong.batch(stream, B, 8, 1e6 + j), 8, 0) };
  } finally {
    opt.dispose();
    model.dispose();
  }
}

try {
  const context = await contextVariant();
  console.log(`context: ${context.toFixed(3)}`);
  const memory = await memoryVariant(false);
  console.log(`memory: own ${memory.own.toFixed(3)}, other ${memory.other.toFixed(3)} (chance ${Math.log(32).toFixed(3)})`);
  const grad = await memoryVariant(true);
  console.log(`memory with gradients through the encoding: own ${grad.own.toFixed(3)}, other ${grad.other.toFixed(3)}`);
  const path = writeResults(
    'lookup_probe',
    deviceName(gpu),
    { lookup_loss_context: context, lookup_loss_memory: memory.own, lookup_loss_memory_other: memory.other, lookup_loss_memory_gradient: grad.own, lookup_loss_memory_gradient_other: grad.other, chance: Math.log(32), steps },
    { task: '4 (key, value) pairs asked in a shuffled order; loss at the value targets; dim 64, 2 blocks, AdamW 3e-3, batch 16; memory: no gradient through the reference encoding; memory_gradient: with it' },
    `node --import tsx scripts/lookup_probe.ts --steps ${steps}`,
  );
  console.log(`wrote ${path}`);
} finally {
  gpu.destroy();
}
