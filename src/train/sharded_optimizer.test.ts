// a Memory+ model whose value table is sharded over several devices trains as it does on one. the
// devices share this machine's adapter here (the arithmetic and the exchanges, not a speed-up); the
// multigpu suite runs the same on the two GPUs of one host.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Gpu } from '../gpu/device.ts';
import { Transformer } from '../model/transformer.ts';
import { testGpu } from '../testing/gpu.ts';
import { tinyMemoryModel } from '../testing/llama.ts';
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
    const rng = new Rng(3);
    const seq = Array.from({ length: 2 * 13 }, () => rng.int(32));
    const ids = await gpu.tensorFrom(seq.filter((_, i) => i % 13 !== 12), [2, 12], 'u32', 'ids');
    const targets = await gpu.tensorFrom(seq.filter((_, i) => i % 13 !== 0), [2, 12], 'u32', 'targets');
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
