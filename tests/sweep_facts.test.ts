// the pure parts of scripts/sweep_facts.ts: the model family (baseline, the plain and Memory+
// variants, the dense models at ~2x and ~4x the FLOPs), the FLOPs-per-token formula it uses,
// the plan's shared token budget, the result metrics; and the scatter plot it draws.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { flopsPerToken } from '../bench/suites/train.ts';
import { ALL_RUNS, RUNS, makePlan, metricsOf, modelFamily, runsOf, scaledShape, type RunRecord } from '../scripts/sweep_facts.ts';
import { scatterPng } from '../src/train/plot.ts';

test('the GPU family: baseline, plain memory in the middle block, 3 Memory+ layers centred, dense at ~2x and ~4x FLOPs', () => {
  const f = modelFamily(false, 8192, 256);
  assert.deepEqual([f.dense.dim, f.dense.layers, f.dense.memory], [512, 8, null]);
  const { memory, memory_plus } = f;
  assert.deepEqual([memory.memory?.layers, memory.memory?.gated, memory.memory?.nKeys], [[4], false, 256]);
  assert.deepEqual([memory_plus.memory?.layers, memory_plus.memory?.gated, memory_plus.memory?.nKeys], [[2, 4, 6], true, 256]);
  for (const m of [memory, memory_plus]) assert.deepEqual({ ...m, memory: null }, f.dense, 'the memory models differ from the baseline only in their memory layers');
  const base = flopsPerToken(f.dense, 256);
  for (const [run, target] of [['dense_2x', 2], ['dense_4x', 4]] as const) {
    const r = flopsPerToken(f[run], 256) / base;
    assert.ok(Math.abs(r / target - 1) < 0.05, `${run}: ${r.toFixed(3)}x the baseline's FLOPs per token, want ~${target}x`);
    assert.equal(f[run].memory, null);
  }
});

test('flopsPerToken: 6 x the weights a token multiplies + 6 L T d; a plain memory layer has no Ws/Wo', () => {
  const f = modelFamily(false, 8192, 256);
  const [V, d, L, kv, F, T] = [8192, 512, 8, 256, 1344, 256];
  const block = 2 * d * d + 2 * d * kv;
  assert.equal(flopsPerToken(f.dense, T), 6 * (V * d + L * (block + 3 * d * F)) + 6 * L * T * d);
  const [H, dk, n, k] = [4, 256, 256, 32];
  const read = d * H * dk + H * n * dk + H * k * d;
  assert.equal(flopsPerToken(f.memory, T), 6 * (V * d + L * block + 7 * 3 * d * F + read) + 6 * L * T * d);
  assert.equal(flopsPerToken(f.memory_plus, T), 6 * (V * d + L * block + 5 * 3 * d * F + 3 * (read + 2 * d * d)) + 6 * L * T * d);
});

test('scaledShape finds the width and depth closest to the target ratio, the more even growth among ties', () => {
  // FLOPs ~ L d^2 from (64, 4): 4x exactly at (128, 4) and (64, 16); (128, 4) grows the two less unevenly (in log)
  const flops = (x: { dim: number; layers: number }) => x.layers * x.dim * x.dim;
  assert.deepEqual(scaledShape(flops, { dim: 64, layers: 4 }, 32, 4), { dim: 128, layers: 4 });
  // 3x: no exact point; (96, 5) is 2.81x, (96, 6) 3.375x, (64, 12) exact
  assert.deepEqual(scaledShape(flops, { dim: 64, layers: 4 }, 32, 3), { dim: 64, layers: 12 });
  const s = scaledShape(flops, { dim: 64, layers: 4 }, 32, 2.6);
  assert.ok(Math.abs(flops(s) / flops({ dim: 64, layers: 4 }) / 2.6 - 1) < 0.05, JSON.stringify(s));
});

test('the plan: one token budget, batch, sequence and schedule for all five runs; --quick is tiny', () => {
  const p = makePlan({ quick: false, vocab: 8192 });
  assert.deepEqual(p.runs.map((r) => r.name), [...RUNS]);
  assert.equal(p.tokens, p.steps * p.batch * p.seq);
  assert.ok(p.tokens >= 20e6 && p.tokens < 20e6 + p.batch * p.seq);
  for (const r of p.runs) assert.equal(r.flopsPerToken, flopsPerToken(r.config, p.seq));
  const q = makePlan({ quick: true, vocab: 512 });
  assert.deepEqual([q.runs[0]!.config.dim, q.runs[0]!.config.layers], [32, 2]);
  assert.ok(q.steps <= 100 && q.corpusMb <= 2);
  // 2 blocks cannot hold 3 memory layers: one per block
  assert.deepEqual(q.runs.find((r) => r.name === 'memory_plus')!.config.memory?.layers, [0, 1]);
  assert.equal(makePlan({ quick: false, vocab: 8192, tokens: 1e6 }).tokens, 245 * 16 * 256);
  assert.equal(p.factRepeats, 1);
  const b = makePlan({ quick: false, vocab: 8192, tokens: 1e6, batch: 32, factRepeats: 4 });
  assert.equal(b.tokens, 123 * 32 * 256);
  assert.equal(b.factRepeats, 4);
});

test('metricsOf: the eight metrics of each finished run (nine with memory slot usage), none for the others', () => {
  const rec: RunRecord = { run: 'memory', params: 10, memoryParams: 4, flopsPerToken: 100, trainTokens: 1000, trainSeconds: 2, valLoss: 3, em: 0.25, f1: 0.5, questions: 4, byRelation: {}, evalSeconds: 1, date: '' };
  const m = metricsOf({ memory: rec });
  assert.deepEqual(m, {
    qa_em_memory: 0.25,
    qa_f1_memory: 0.5,
    flops_per_token_memory: 100,
    params_memory: 10,
    memory_params_memory: 4,
    val_loss_memory: 3,
    train_tokens_memory: 1000,
    train_seconds_memory: 2,
  });
  assert.equal(metricsOf({ memory: { ...rec, memoryUsage: 0.75 } })['memory_usage_memory'], 0.75);
});

test('scatterPng draws labelled points on a log x axis as a PNG of the requested size', async () => {
  const png = await scatterPng(
    [
      { x: 1e15, y: 0.1, label: 'dense' },
      { x: 2e15, y: 0.2, label: 'dense_2x' },
      { x: 0, y: 0.5, label: 'dropped: x not positive' },
    ],
    { width: 300, height: 200, yDomain: [0, 1], yFormat: '.0%' },
  );
  assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]);
  const v = new DataView(png.buffer, png.byteOffset, png.byteLength);
  assert.deepEqual([v.getUint32(16), v.getUint32(20)], [300, 200]);
  await assert.rejects(scatterPng([{ x: -1, y: 0, label: 'bad' }]), /nothing to draw/);
  const ruled = await scatterPng([{ x: 1e15, y: 0.1, label: 'dense' }], { width: 300, height: 200, rules: [{ y: 0.15, label: 'baseline' }] });
  assert.notDeepEqual(ruled, await scatterPng([{ x: 1e15, y: 0.1, label: 'dense' }], { width: 300, height: 200 }));
});

test('runsOf: the five runs, then the memory_plus ablations, each changing one thing', () => {
  const p = makePlan({ quick: false, vocab: 8192 });
  const runs = runsOf(p);
  assert.deepEqual(runs.map((r) => r.name), [...ALL_RUNS]);
  const plus = runs.find((r) => r.name === 'memory_plus')!;
  const by = (n: string) => runs.find((r) => r.name === n)!;
  assert.deepEqual(by('memory_plus_vlr3e2').config, plus.config);
  assert.deepEqual(by('memory_plus_vlr3e2').opt, { valueLr: 3e-2 });
  assert.deepEqual(by('memory_plus_wd0').opt, { weightDecay: 0 });
  assert.equal(by('memory_plus_keys512').config.memory?.nKeys, 512);
  assert.deepEqual(by('memory_plus_early').config.memory?.layers, [1, 3, 5]);
  assert.deepEqual({ ...by('memory_plus_early').config, memory: undefined }, { ...plus.config, memory: undefined });
  for (const r of runs) assert.equal(r.flopsPerToken, flopsPerToken(r.config, p.seq));
});
