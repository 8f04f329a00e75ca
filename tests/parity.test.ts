// engram against PyTorch (llm.c's test_gpt2 in spirit): a tiny Llama model with a Memory+ block
// (scripts/parity_make.ts), rebuilt in plain PyTorch float64 by bench/torch/parity.py, whose
// golden values live in tests/golden/parity/golden.safetensors. checked here: the logits and the
// loss of the batch, the gradient of every parameter, and the losses of 10 training steps with
// engram's Trainer + AdamW (group clipping, values at 10x lr, the lr schedule) on that batch.
//
// regenerate (both steps, in this order; commit the whole folder):
//   node --import tsx scripts/parity_make.ts tests/golden/parity
//   python3 bench/torch/parity.py tests/golden/parity            (torch only; CPU float64 default)
//
// tolerances: norm-wise relative TOL.f32 (1e-4) for logits, loss and gradients (engram is f32,
// the golden values float64 rounded to f32); 1e-4 relative for each training loss and for each
// step's group gradient norms too, the f32 drift over 10 Adam steps on this model staying far below.

import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import type { Gpu } from '../src/gpu/device.ts';
import type { Tensor } from '../src/gpu/tensor.ts';
import { bytesToF32, decodeSafetensors } from '../src/io/safetensors.ts';
import { loadModel } from '../src/model/checkpoint.ts';
import { TOL, assertClose } from '../src/testing/allclose.ts';
import { testGpu } from '../src/testing/gpu.ts';
import { AdamW } from '../src/train/optimizer.ts';
import { Trainer } from '../src/train/trainer.ts';
import type { Schedule } from '../src/train/schedule.ts';

const DIR = fileURLToPath(new URL('./golden/parity/', import.meta.url));
const GOLDEN = join(DIR, 'golden.safetensors');
const VALUES = 'model.memory_values';
/** per training step, relative */
const STEP_TOL = 1e-4;

interface TrainConfig {
  lr: number;
  steps: number;
  schedule: Schedule;
}

function readGolden(): Record<string, Float32Array> {
  if (!existsSync(GOLDEN)) {
    throw new Error(
      `parity: ${GOLDEN} is missing. generate it (torch needed, no GPU):\n` +
        `  node --import tsx scripts/parity_make.ts tests/golden/parity\n` +
        `  python3 bench/torch/parity.py tests/golden/parity\n` +
        `and commit tests/golden/parity/`,
    );
  }
  const { tensors } = decodeSafetensors(new Uint8Array(readFileSync(GOLDEN)), GOLDEN);
  return Object.fromEntries(Object.entries(tensors).map(([name, t]) => [name, bytesToF32(t)]));
}

const golden = readGolden();
const batch = JSON.parse(readFileSync(join(DIR, 'batch.json'), 'utf8')) as { ids: number[][]; targets: number[][] };
const train = JSON.parse(readFileSync(join(DIR, 'train.json'), 'utf8')) as TrainConfig;
const [B, T] = [batch.ids.length, batch.ids[0]!.length];

function want(name: string): Float32Array {
  const g = golden[name];
  assert.ok(g, `golden.safetensors has no '${name}' (regenerate it: see the header of tests/parity.test.ts)`);
  return g;
}

async function batchTensors(gpu: Gpu): Promise<{ ids: Tensor; targets: Tensor }> {
  return {
    ids: await gpu.tensorFrom(batch.ids.flat(), [B, T], 'u32', 'ids'),
    targets: await gpu.tensorFrom(batch.targets.flat(), [B, T], 'u32', 'targets'),
  };
}

/** the f32 contents of several tensors, end to end */
async function readAll(gpu: Gpu, ts: readonly Tensor[]): Promise<Float32Array> {
  const parts = await Promise.all(ts.map((t) => gpu.read(t)));
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

test('parity with PyTorch: logits, loss and every parameter gradient', async () => {
  const gpu = await testGpu();
  const { model } = await loadModel(gpu, join(DIR, 'model'));
  const { ids, targets } = await batchTensors(gpu);
  const logits = await model.logits(ids);
  assert.deepEqual(logits.shape, [B * T, model.config.vocabSize]);
  assertClose('logits', await gpu.read(logits), want('logits'), TOL.f32);
  logits.dispose();
  const loss = await model.forward(ids, targets);
  assertClose('loss', await gpu.read(loss), want('loss'), TOL.f32);
  await model.backward();
  const checked = new Set<string>();
  for (const p of model.params) {
    if (p.group === 'values') continue;
    assertClose(`grad ${p.name}`, await gpu.read(p.grad), want(`grad.${p.name}`), TOL.f32);
    checked.add(`grad.${p.name}`);
  }
  assert.ok(model.table, 'the parity model has a value table');
  assertClose(`grad ${VALUES}`, await readAll(gpu, model.table.params.map((p) => p.grad)), want(`grad.${VALUES}`), TOL.f32);
  checked.add(`grad.${VALUES}`);
  const unchecked = Object.keys(golden).filter((n) => n.startsWith('grad.') && !checked.has(n));
  assert.deepEqual(unchecked, [], 'golden gradients of parameters engram does not have');
  for (const t of [loss, ids, targets]) t.dispose();
  model.dispose();
  assert.equal(gpu.scratch.outstanding, 0, 'every scratch tensor given back');
});

test(`parity with PyTorch: ${train.steps} training steps (Trainer + AdamW, lr schedule, group clipping)`, async () => {
  const gpu = await testGpu();
  const { model } = await loadModel(gpu, join(DIR, 'model'));
  const { ids, targets } = await batchTensors(gpu);
  const opt = await AdamW.create(gpu, model.params, { lr: train.lr });
  const trainer = new Trainer(gpu, model, opt, train.schedule);
  const [wantLoss, wantModel, wantValues] = [want('steps_loss'), want('steps_grad_norm_model'), want('steps_grad_norm_values')];
  assert.equal(wantLoss.length, train.steps);
  for (let s = 0; s < train.steps; s++) {
    const r = await trainer.step([{ ids, targets }]);
    const norms = await opt.gradNorms();
    assertClose(`step ${s + 1} loss`, [r.loss], [wantLoss[s]!], STEP_TOL);
    assertClose(`step ${s + 1} model grad norm`, [norms.model], [wantModel[s]!], STEP_TOL);
    assertClose(`step ${s + 1} values grad norm`, [norms.values], [wantValues[s]!], STEP_TOL);
  }
  for (const t of [ids, targets]) t.dispose();
  opt.dispose();
  model.dispose();
  assert.equal(gpu.scratch.outstanding, 0, 'every scratch tensor given back');
});
