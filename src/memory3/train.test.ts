// Memory³'s second stage on a tiny random model: a batch's memories have the layout the model
// reads (the sink at every block, the chunk's window of memories at memory blocks), batches are a
// function of the step, and training with them runs and lowers the loss; with `own`, a chunk
// reads its own planned references; and end to end, training teaches a model to read a token
// that only its memory holds.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseModelConfig } from '../model/config.ts';
import type { Param } from '../model/param.ts';
import { Transformer } from '../model/transformer.ts';
import { checkAgainstFiniteDifferences, largestGradients } from '../testing/finite_diff.ts';
import { testGpu } from '../testing/gpu.ts';
import { Rng } from '../testing/rng.ts';
import { AdamW } from '../train/optimizer.ts';
import { trainLoop } from '../train/loop.ts';
import { Trainer } from '../train/trainer.ts';
import { planRetrieval } from './bm25.ts';
import { MemoryBatcher } from './train.ts';

test('MemoryBatcher: sink and window layout, deterministic per step; Trainer steps with memory lower the loss', async () => {
  const gpu = await testGpu();
  const config = parseModelConfig({ vocabSize: 48, dim: 16, layers: 4, heads: 4, kvHeads: 2, ffnHidden: 32, maxSeqLen: 64 });
  const model = await Transformer.create(gpu, config, 2);
  const rng = new Rng(3);
  // a stream of 8-token chunks over tokens 4..47; references: 12 tokens each
  const stream = Uint32Array.from({ length: 600 }, (_, i) => 4 + ((i * 7 + rng.int(5)) % 44));
  const refs = Array.from({ length: 10 }, (_, r) => Array.from({ length: 12 }, (_, j) => 4 + ((r * 5 + j * 3) % 44)));
  const plan = planRetrieval(stream, refs, { chunk: 8, context: 32 });
  const opt = await AdamW.create(gpu, model.params, { lr: 1e-2 });
  const batcher = new MemoryBatcher(gpu, model, refs, plan, { prefix: [1, 2], chunk: 8, window: 3, tokens: 4, memoryPositions: 12, seed: 1 });
  try {
    const a = await batcher.batch(stream, 2, 16, 5);
    const b = await batcher.batch(stream, 2, 16, 5);
    assert.deepEqual(await gpu.read(a.ids), await gpu.read(b.ids));
    const m = a.memory!;
    assert.equal(m.pos0, 2 + 12);
    assert.deepEqual(m.blocks.map((x) => x.k.shape), [
      [2, 2 * (2 + 3 * 4), 2, 4],
      [2, 2 * (2 + 3 * 4), 2, 4],
      [2, 2, 2, 4],
      [2, 2, 2, 4],
    ]);
    assert.deepEqual(m.blocks.map((x) => x.chunk), [8, 8, 0, 0]);
    // the sink leads every chunk's block at a memory layer
    const k0 = (await gpu.read(m.blocks[0]!.k)) as Float32Array;
    const row = 2 * 4;
    assert.deepEqual(k0.subarray(0, 2 * row), k0.subarray(14 * row, 16 * row));
    a.dispose();
    b.dispose();
    const trainer = new Trainer(gpu, model, opt, { warmup: 1, steps: 12, minRatio: 1 });
    const losses: number[] = [];
    for (let s = 0; s < 12; s++) {
      const batch = await batcher.batch(stream, 2, 16, s % 2);
      losses.push((await trainer.step([batch])).loss);
      batch.dispose();
    }
    assert.ok(losses.every(Number.isFinite));
    assert.ok(losses[11]! < losses[0]! - 0.3, losses.join(' '));
    // through the training loop: its batches from the batcher, each freed after its step
    const loopLosses = await trainLoop(gpu, model, opt, { train: stream }, { steps: opt.step + 3, batch: 2, seqLen: 16, schedule: { warmup: 1, steps: 20, minRatio: 1 }, batches: (s2, j) => batcher.batch(stream, 2, 16, 100 + s2 + j) });
    assert.equal(loopLosses.length, 3);
    assert.ok(loopLosses.every(Number.isFinite));
    assert.equal(gpu.memory().byLabel.get('memory_batch'), undefined);
    assert.equal(gpu.scratch.outstanding, 0);
  } finally {
    opt.dispose();
    model.dispose();
  }
});

test('MemoryBatcher own: each chunk reads the window of references planned for itself', async () => {
  const gpu = await testGpu();
  const config = parseModelConfig({ vocabSize: 48, dim: 16, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 32, maxSeqLen: 64 });
  const model = await Transformer.create(gpu, config, 2);
  const rng = new Rng(4);
  const stream = Uint32Array.from({ length: 300 }, (_, i) => 4 + ((i * 5 + rng.int(7)) % 44));
  const refs = Array.from({ length: 10 }, (_, r) => Array.from({ length: 12 }, (_, j) => 4 + ((r * 7 + j * 3) % 44)));
  const plan = planRetrieval(stream, refs, { chunk: 8, context: 32, perChunk: 3 });
  assert.equal(plan.length, 3 * Math.floor(300 / 8));
  const o = { prefix: [1, 2], chunk: 8, window: 3, tokens: 4, memoryPositions: 12, seed: 1, own: true };
  assert.throws(() => new MemoryBatcher(gpu, model, refs, plan.subarray(1), o), /with own, the plan needs window \(3\) references per chunk/);
  try {
    const batcher = new MemoryBatcher(gpu, model, refs, plan, o);
    const a = await batcher.batch(stream, 2, 16, 5);
    // a chunk's block at a memory layer: the sink, then the chunk's own 3 references' memories
    assert.deepEqual(a.memory!.blocks[0]!.k.shape, [2, 2 * (2 + 3 * 4), 2, 4]);
    // the first sequence's first chunk reads the planned references (all found here): its block
    // equals one laid out from encodeReferences of exactly those
    const ids = (await gpu.read(a.ids)) as Uint32Array;
    const g = [...Array(Math.floor(300 / 8)).keys()].find((c) => ids.subarray(0, 8).every((x, i) => x === stream[c * 8 + i]))!;
    const want = [...plan.subarray(g * 3, g * 3 + 3)];
    assert.ok(want.every((r) => r >= 0), `chunk ${g}: ${want}`);
    const { encodeReferences } = await import('./write.ts');
    const mems = await encodeReferences(gpu, model, want.map((r) => ({ prefix: [1, 2], tokens: refs[r]! })), { layers: [0], tokens: 4 });
    const k0 = (await gpu.read(a.memory!.blocks[0]!.k)) as Float32Array;
    const row = 2 * 4;
    mems.forEach((m, i) => {
      for (let t = 0; t < 4; t++) for (let h = 0; h < 2; h++) for (let d = 0; d < 4; d++) {
        const got = k0[(2 + i * 4 + t) * row + h * 4 + d]!;
        assert.ok(Math.abs(got - m.k[(h * 4 + t) * 4 + d]!) < 1e-5, `memory ${i} token ${t} head ${h}`);
      }
    });
    a.dispose();
  } finally {
    model.dispose();
  }
});

// the whole second stage, end to end: can a model learn to read its memories at all? each 8-token
// chunk is [f v f v f v f v]: fillers f and one value v, the value its reference (8 copies of v)
// holds. the first v of a chunk follows only a filler, so only the memory can predict it (chance:
// 1 in 32 values, loss ln 32 = 3.47). after training with memories, the loss there must be far
// below chance with the chunk's own memory and stay near it with another chunk's.
test('stage 2 teaches a small model to read its memory: a token only the memory holds becomes predictable', async () => {
  const gpu = await testGpu();
  const config = parseModelConfig({ vocabSize: 48, dim: 32, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 64, maxSeqLen: 32 });
  const model = await Transformer.create(gpu, config, 5);
  const rng = new Rng(8);
  const refs = Array.from({ length: 64 }, (_, r) => Array.from({ length: 8 }, () => 16 + (r % 32)));
  const chunks = 400;
  const plan = Int32Array.from({ length: chunks }, () => rng.int(refs.length));
  const stream = new Uint32Array(chunks * 8 + 1);
  for (let g = 0; g < chunks; g++) for (let i = 0; i < 8; i++) stream[g * 8 + i] = i % 2 === 0 ? 4 + rng.int(12) : refs[plan[g]!]![0]!;
  const other = Int32Array.from(plan, (r) => (r + 1 + rng.int(refs.length - 1)) % refs.length);
  const o = { prefix: [1, 2], chunk: 8, window: 1, tokens: 8, memoryPositions: 8, seed: 3 };
  const own = new MemoryBatcher(gpu, model, refs, plan, o);
  const wrong = new MemoryBatcher(gpu, model, refs, other, o);
  const opt = await AdamW.create(gpu, model.params, { lr: 1e-2 });
  // mean loss over the chunks' first values only (every other target ignored)
  const firstValueLoss = async (b: MemoryBatcher) => {
    let sum = 0;
    for (let j = 0; j < 4; j++) {
      const x = await b.batch(stream, 8, 16, 1000 + j);
      const t = (await gpu.read(x.targets)) as Uint32Array;
      const masked = Uint32Array.from(t, (v, i) => (i % 8 === 0 ? v : 0xffffffff));
      const targets = await gpu.tensorFrom(masked, [8, 16], 'u32', 'targets');
      const loss = await model.forward(x.ids, targets, x.memory);
      sum += (await gpu.read(loss))[0]!;
      for (const u of [loss, targets]) u.dispose();
      model.release();
      x.dispose();
    }
    return sum / 4;
  };
  try {
    await trainLoop(gpu, model, opt, { train: stream }, { steps: 150, batch: 8, seqLen: 16, schedule: { warmup: 10, steps: 150, minRatio: 0.1 }, batches: (s, j) => own.batch(stream, 8, 16, s + j) });
    const [ownLoss, wrongLoss] = [await firstValueLoss(own), await firstValueLoss(wrong)];
    assert.ok(ownLoss < 1 && wrongLoss > ownLoss + 1.5, `first-value loss ${ownLoss.toFixed(3)} with the chunk's own memory, ${wrongLoss.toFixed(3)} with another's (chance ${Math.log(32).toFixed(2)})`);
  } finally {
    opt.dispose();
    model.dispose();
  }
});

test('MemoryBatcher gradient: a step\'s gradients through the memories\' encoding match finite differences of the whole step', async () => {
  const gpu = await testGpu();
  const config = parseModelConfig({ vocabSize: 48, dim: 16, layers: 2, heads: 4, kvHeads: 2, ffnHidden: 32, maxSeqLen: 64 });
  const model = await Transformer.create(gpu, config, 5);
  const rng = new Rng(8);
  // the stream uses tokens 4..39; the references also 40..47 (reached through the memories alone,
  // and the tied output layer). references of exactly `tokens` tokens: every token is kept, so a
  // small change of the weights cannot change the selection
  const stream = Uint32Array.from({ length: 400 }, () => 4 + rng.int(36));
  const refs = Array.from({ length: 6 }, (_, r) => [40 + r, 4 + rng.int(36), 42 + (r % 6), 4 + rng.int(36)]);
  const plan = planRetrieval(stream, refs, { chunk: 8, context: 32 });
  // block 1 a memory block too, or the sink alone there
  for (const layers of [[0, 1], [0]]) await checkGradient(gpu, model, stream, refs, plan, layers);
  model.dispose();
});

async function checkGradient(gpu: Awaited<ReturnType<typeof testGpu>>, model: Transformer, stream: Uint32Array, refs: number[][], plan: Int32Array, layers: number[]): Promise<void> {
  const config = model.config;
  const o = { prefix: [1, 2], chunk: 8, window: 2, tokens: 4, memoryPositions: 8, seed: 1, layers };
  const withGrad = new MemoryBatcher(gpu, model, refs, plan, { ...o, gradient: true });
  const loss = async (grad: boolean): Promise<number> => {
    const x = await (grad ? withGrad : new MemoryBatcher(gpu, model, refs, plan, o)).batch(stream, 2, 16, 3);
    try {
      const l = await model.forward(x.ids, x.targets, x.memory);
      const value = (await gpu.read(l))[0]!;
      l.dispose();
      if (grad) {
        await model.backward();
        await x.afterBackward!();
      } else model.release();
      return value;
    } finally {
      x.dispose();
    }
  };
  try {
    for (const p of model.params) gpu.write(p.grad, new Float32Array(p.grad.size));
    await loss(true);
    assert.equal(gpu.scratch.outstanding, 0);
    const checks: { p: Param; index: number }[] = [];
    const embed = model.params.find((p) => p.name.endsWith('embed_tokens.weight'))!;
    for (const index of await largestGradients(gpu, embed, 2, (i) => i >= 40 * config.dim)) checks.push({ p: embed, index });
    for (const suffix of ['layers.0.self_attn.k_proj.weight', 'layers.0.self_attn.v_proj.weight', 'layers.1.self_attn.v_proj.weight']) {
      const p = model.params.find((q) => q.name.endsWith(suffix))!;
      for (const index of await largestGradients(gpu, p, 2)) checks.push({ p, index });
    }
    await checkAgainstFiniteDifferences(gpu, checks, () => loss(false), { what: `memory blocks [${layers.join(', ')}]`, atLeast: 4 });
    assert.equal(gpu.memory().byLabel.get('memory_batch'), undefined);
  } finally {
    await gpu.sync();
  }
}
