// the training loop: a run stopped and resumed from its checkpoint has the same losses as an
// uninterrupted one; validation reports the memory layers' read statistics.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseModelConfig } from '../model/config.ts';
import { Transformer } from '../model/transformer.ts';
import { testGpu } from '../testing/gpu.ts';
import { Rng } from '../testing/rng.ts';
import { historyOf, resumeTraining, trainLoop, type LogLine } from './loop.ts';
import { AdamW } from './optimizer.ts';

test('a run stopped after 3 steps and resumed from its checkpoint has the losses of an uninterrupted 6-step run', async () => {
  const gpu = await testGpu();
  const dir = mkdtempSync(join(tmpdir(), 'engram-loop-'));
  try {
    const config = parseModelConfig({
      vocabSize: 30,
      dim: 16,
      layers: 2,
      heads: 2,
      ffnHidden: 24,
      maxSeqLen: 8,
      memory: { layers: [1], nKeys: 6, heads: 2, topk: 3, keyDim: 8, valueDtype: 'bf16' },
    });
    const rng = new Rng(9);
    const train = Uint32Array.from({ length: 400 }, () => rng.int(30));
    const val = Uint32Array.from({ length: 100 }, () => rng.int(30));
    const optCfg = { lr: 5e-3 };
    const opts = { steps: 6, batch: 2, seqLen: 8, accum: 2, schedule: { warmup: 2, steps: 6, minRatio: 0.1 }, seed: 4 };
    // uninterrupted
    const m1 = await Transformer.create(gpu, config, 2);
    const o1 = await AdamW.create(gpu, m1.params, optCfg);
    const lines: LogLine[] = [];
    const full = await trainLoop(gpu, m1, o1, { train, val }, { ...opts, evalEvery: 3, log: (l) => lines.push(l) });
    assert.equal(full.length, 6);
    const evals = lines.filter((l) => l.valLoss !== undefined);
    assert.deepEqual(evals.map((l) => l.step), [3, 6]);
    assert.ok(evals[0]!.memory![0]!.usage > 0 && evals[0]!.memory![0]!.usage <= 1);
    // stopped at 3 (as Ctrl-C does), then resumed in fresh objects
    const m2 = await Transformer.create(gpu, config, 2);
    const o2 = await AdamW.create(gpu, m2.params, optCfg);
    const firstHalf = await trainLoop(gpu, m2, o2, { train }, { ...opts, dir: join(dir, 'ck'), stop: () => o2.step === 3 });
    assert.equal(firstHalf.length, 3);
    const r = await resumeTraining(gpu, join(dir, 'ck'), optCfg);
    assert.equal(r.opt.step, 3);
    // the checkpoint holds the loss history and its plot
    assert.deepEqual(historyOf(r.files).map((p) => p.loss), firstHalf);
    assert.deepEqual([...r.files['loss.png']!.subarray(1, 4)], [...Buffer.from('PNG')]);
    const secondHalf = await trainLoop(gpu, r.model, r.opt, { train }, { ...opts, dir: join(dir, 'ck'), history: historyOf(r.files) });
    assert.deepEqual([...firstHalf, ...secondHalf], full);
    const after = await resumeTraining(gpu, join(dir, 'ck'), optCfg);
    assert.deepEqual(historyOf(after.files).map((p) => p.step), [1, 2, 3, 4, 5, 6], 'the resumed run carries the history on');
    after.opt.dispose();
    after.model.dispose();
    for (const x of [o1, o2, r.opt]) x.dispose();
    for (const x of [m1, m2, r.model]) x.dispose();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
