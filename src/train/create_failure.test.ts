// a value table, memory layer or optimizer whose making runs out of GPU memory part way frees what
// it made: a caller can try again smaller in the same process (the multigpu suite's --largest does).
// the failure is injected: the k-th allocation throws, for every k until the making succeeds.

import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Gpu } from '../gpu/device.ts';
import { OutOfMemoryError } from '../gpu/errors.ts';
import { MemoryLayer } from '../model/memory_layer.ts';
import { ShardedValueTable } from '../model/sharded_values.ts';
import { ValueTable } from '../model/value_table.ts';
import { testGpu } from '../testing/gpu.ts';
import { AdamW } from './optimizer.ts';
import { ShardedAdamW } from './sharded_optimizer.ts';

let second: Gpu | null = null;
after(() => second?.destroy());

/** makes `make` with the k-th tensor allocation on any of `gpus` failing, k = 1, 2, ... until it succeeds; every failure leaves each device's bytes as they were */
async function failEachAllocation(gpus: readonly Gpu[], what: string, make: () => Promise<{ dispose(): void }>): Promise<number> {
  const base = gpus.map((g) => g.memory().bytes);
  for (let k = 1; ; k++) {
    let calls = 0;
    for (const g of gpus) {
      const real = Gpu.prototype.tensor.bind(g);
      (g as { tensor: Gpu['tensor'] }).tensor = (...a) => (++calls === k ? Promise.reject(new OutOfMemoryError(`injected at allocation ${k}`)) : real(...a));
    }
    try {
      const made = await make();
      made.dispose();
      assert.ok(k > 2, `${what}: made with ${k - 1} allocations`);
      return k - 1;
    } catch (e) {
      if (!(e instanceof OutOfMemoryError)) throw e;
    } finally {
      for (const g of gpus) delete (g as { tensor?: Gpu['tensor'] }).tensor;
    }
    for (const [i, g] of gpus.entries()) {
      await g.sync();
      assert.equal(g.memory().bytes, base[i], `${what}: allocation ${k} failed and device ${i} kept ${g.memory().bytes - base[i]!} bytes`);
    }
  }
}

test('a value table, memory layer or optimizer that runs out of memory part way frees what it made', async () => {
  const gpu = await testGpu();
  second ??= await Gpu.create();
  const o = { rows: 64, dim: 8, dtype: 'bf16' as const, seed: 1, trackReads: true, maxBindingBytes: 16 * 8 * 4 };
  // 4 chunks of 16 rows, each a value, a gradient and a read mask
  assert.equal(await failEachAllocation([gpu], 'ValueTable', () => ValueTable.create(gpu, o)), 12);
  await failEachAllocation([gpu, second], 'ShardedValueTable', () => ShardedValueTable.create([gpu, second!], o));
  const table = await ValueTable.create(gpu, o);
  await failEachAllocation([gpu], 'MemoryLayer', () => MemoryLayer.create(gpu, 'mem', { d: 8, heads: 2, nKeys: 8, topk: 2, keyDim: 4, qkNorm: true }, table));
  await failEachAllocation([gpu], 'AdamW', () => AdamW.create(gpu, table.params, { lr: 1e-3 }));
  table.dispose();
  const sharded = await ShardedValueTable.create([gpu, second], o);
  const layer = await MemoryLayer.create(gpu, 'mem', { d: 8, heads: 2, nKeys: 8, topk: 2, keyDim: 4 }, sharded);
  await failEachAllocation([gpu, second], 'ShardedAdamW', () => ShardedAdamW.create(gpu, layer.params, sharded, { lr: 1e-3 }));
  layer.dispose();
  sharded.dispose();
});
