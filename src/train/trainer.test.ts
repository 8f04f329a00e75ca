// training end to end on the GPU: a tiny Llama with a memory block memorises a fixed batch, the
// schedule's shape, and the step's bookkeeping.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Transformer } from '../model/transformer.ts';
import { testGpu } from '../testing/gpu.ts';
import { tinyMemoryModel } from '../testing/llama.ts';
import { randomBatch } from '../testing/batch.ts';
import { AdamW } from './optimizer.ts';
import { lrFactor } from './schedule.ts';
import { Trainer } from './trainer.ts';

test('lr schedule: linear warmup, then linear decay to minRatio', () => {
  const s = { warmup: 4, steps: 14, minRatio: 0.01 };
  assert.deepEqual([1, 2, 4].map((i) => lrFactor(i, s)), [0.25, 0.5, 1]);
  assert.ok(Math.abs(lrFactor(9, s) - (1 - 0.5 * 0.99)) < 1e-12);
  assert.ok(Math.abs(lrFactor(14, s) - 0.01) < 1e-12 && Math.abs(lrFactor(20, s) - 0.01) < 1e-12);
});

test('a tiny model with a Memory+ block memorises a batch (loss falls by more than half in 40 steps)', async () => {
  const gpu = await testGpu();
  const config = tinyMemoryModel([1]);
  const model = await Transformer.create(gpu, config, 7);
  const opt = await AdamW.create(gpu, model.params, { lr: 1e-2, weightDecay: 0 });
  const trainer = new Trainer(gpu, model, opt, { warmup: 5, steps: 40, minRatio: 0.1 });
  const { ids, targets } = await randomBatch(gpu, 2, 12, 32, 1);
  const losses: number[] = [];
  for (let s = 0; s < 40; s++) losses.push((await trainer.step([{ ids, targets }])).loss);
  console.log(`# losses ${losses.filter((_, i) => i % 8 === 0 || i === 39).map((l) => l.toFixed(3)).join(' ')}`);
  assert.ok(Math.abs(losses[0]! - Math.log(32)) < 0.5, `initial loss ${losses[0]} near log(32)`);
  assert.ok(losses[39]! < 0.5 * losses[0]!, `loss fell from ${losses[0]} to ${losses[39]}`);
  assert.equal(opt.step, 40);
  ids.dispose();
  targets.dispose();
  opt.dispose();
  model.dispose();
});
