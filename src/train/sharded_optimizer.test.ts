// a Memory+ model whose value table is sharded over several devices trains as it does on one. the
// devices share this machine's adapter here (the arithmetic and the exchanges, not a speed-up); the
// multigpu suite runs the same on the two GPUs of one host.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Gpu } from '../gpu/device.ts';
import { MemoryLayer } from '../model/memory_layer.ts';
import { zeroGrads } from '../model/param.ts';
import { ShardedValueTable } from '../model/sharded_values.ts';
import { Transformer } from '../model/transformer.ts';
import { ValueTable } from '../model/value_table.ts';
import { testGpu } from '../testing/gpu.ts';
import { tinyMemoryModel } from '../testing/llama.ts';
import { randomBatch } from '../testing/batch.ts';
import { Rng } from '../testing/rng.ts';
import { AdamW } from './optimizer.ts';
import { ShardedAdamW } from './sharded_optimizer.ts';
import { Trainer } from './trainer.ts';

let second: Gpu | null = null;
after(() => second?.destroy());

for (const valueDtype of ['f32', 'bf16'] as const) {
  test(`values (${valueDtype}) sharded over 2 devices: 20 training steps give one device's losses and values`, async () => {
    const gpu = await testGpu();
    second ??= await Gpu.create();
    const config = tinyMemoryModel([0, 1], valueDtype);
    const { ids, targets } = await randomBatch(gpu, 2, 12, 32, 3);
    const schedule = { warmup: 3, steps: 20, minRatio: 0.1 };
    const cfg = { lr: 1e-2, weightDecay: 0.1, maxNorm: 0.5 };

    const one = await Transformer.create(gpu, config, 11);
    const oneOpt = await AdamW.create(gpu, one.params, cfg);
    const two = await Transformer.create(gpu, config, 11, { valueGpus: [gpu, second] });
    assert.equal(two.table, null);
    const twoOpt = await ShardedAdamW.create(gpu, two.params, two.shardedTable!, cfg);
    const [a, b] = [new Trainer(gpu, one, oneOpt, schedule), new Trainer(gpu, two, twoOpt, schedule)];
    const diffs: number[] = [];
    for (let s = 0; s < 20; s++) {
      const [x, y] = [(await a.step([{ ids, targets }])).loss, (await b.step([{ ids, targets }])).loss];
      diffs.push(Math.abs(x - y));
      assert.ok(Math.abs(x - y) <= 1e-4 * (1 + Math.abs(x)), `step ${s + 1}: loss ${y} sharded against ${x}`);
    }
    console.log(`# ${valueDtype}: largest loss difference over 20 steps ${Math.max(...diffs).toExponential(2)}`);
    // clipping was active, and the values moved alike
    assert.ok((await oneOpt.gradNorms()).values > 0);
    const whole = await gpu.read(one.table!.params[0]!.value);
    for (const s of two.shardedTable!.shards) {
      const part = await s.gpu.read(s.table.params[0]!.value);
      const c = s.table.dim;
      for (let i = 0; i < part.length; i++) {
        const want = whole[Math.floor(i / c) * 16 + s.start + (i % c)]!;
        assert.ok(Math.abs(part[i]! - want) <= 1e-3 * (1 + Math.abs(want)), `value [${Math.floor(i / c)}, ${s.start + (i % c)}]: ${part[i]} against ${want}`);
      }
    }
    for (const t of [ids, targets]) t.dispose();
    oneOpt.dispose();
    twoOpt.dispose();
    one.dispose();
    two.dispose();
  });
}

// sparseValues: only the rows read since the last step move. each shard tracks its reads (the
// same rows: every shard reads the bag), and its AdamW updates those rows of its columns
test('sparseValues with the table sharded over 2 devices: the rows read move as on one device, the others stay', async () => {
  const gpu = await testGpu();
  second ??= await Gpu.create();
  const o = { rows: 64 * 64, dim: 16, dtype: 'f32' as const, seed: 2, trackReads: true };
  const cfg = { d: 16, heads: 2, nKeys: 64, topk: 2, keyDim: 8 };
  // a small learning rate: larger steps let f32 rounding flip a top-k choice, and the runs part ways (dense too)
  const opt = { lr: 1e-3, sparseValues: true };
  const oneTable = await ValueTable.create(gpu, o);
  const oneLayer = await MemoryLayer.create(gpu, 'mem', cfg, oneTable, 3);
  const oneOpt = await AdamW.create(gpu, [...oneLayer.params, ...oneTable.params], opt);
  const twoTable = await ShardedValueTable.create([gpu, second], o);
  const twoLayer = await MemoryLayer.create(gpu, 'mem', cfg, twoTable, 3);
  const twoOpt = await ShardedAdamW.create(gpu, twoLayer.params, twoTable, opt);
  const rng = new Rng(8);
  const x = await gpu.tensorFrom(Array.from({ length: 5 * 16 }, () => rng.next() * 2 - 1), [5, 16], 'f32');
  const dout = await gpu.tensorFrom(Array.from({ length: 5 * 16 }, () => rng.next() * 2 - 1), [5, 16], 'f32');
  const before = await gpu.read(oneTable.params[0]!.value);
  for (let s = 0; s < 3; s++) {
    for (const [layer, update] of [[oneLayer, () => oneOpt.update()], [twoLayer, () => twoOpt.update()]] as const) {
      await zeroGrads(gpu, layer.params);
      if (layer === oneLayer) await oneTable.zeroGrad(gpu);
      else await twoTable.zeroGrad();
      const y = await layer.forward(x);
      const dx = await layer.backward(dout);
      await update();
      y.dispose();
      dx.dispose();
    }
  }
  const whole = await gpu.read(oneTable.params[0]!.value);
  const moved = new Set<number>();
  for (let i = 0; i < whole.length; i++) if (whole[i] !== before[i]) moved.add(Math.floor(i / 16));
  assert.ok(moved.size > 0 && moved.size < 200, `a few of the 4,096 rows move (${moved.size})`);
  for (const s of twoTable.shards) {
    const part = await s.gpu.read(s.table.params[0]!.value);
    const c = s.table.dim;
    for (let i = 0; i < part.length; i++) {
      const [r, col] = [Math.floor(i / c), s.start + (i % c)];
      const want = whole[r * 16 + col]!;
      if (!moved.has(r)) assert.equal(part[i], before[r * 16 + col], `row ${r} was not read: it stays`);
      else assert.ok(Math.abs(part[i]! - want) <= 1e-4 * (1 + Math.abs(want)), `value [${r}, ${col}]: ${part[i]} against ${want}`);
    }
  }
  for (const t of [x, dout]) t.dispose();
  oneOpt.dispose();
  twoOpt.dispose();
  oneLayer.dispose();
  twoLayer.dispose();
  oneTable.dispose();
  twoTable.dispose();
});
