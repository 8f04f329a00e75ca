import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Gpu } from '../gpu/device.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { membagBackward, membagForward, type ValueChunks } from '../kernels/membag/membag.ts';
import { Rng } from '../testing/rng.ts';
import { testGpu } from '../testing/gpu.ts';
import { tinyMemoryModel } from '../testing/llama.ts';
import { loadModel, saveModel } from './checkpoint.ts';
import { ShardedValueTable } from './sharded_values.ts';
import { Transformer } from './transformer.ts';
import { ValueTable } from './value_table.ts';

// more devices on the test adapter: the sharding's arithmetic and exchanges, not a speed-up (the
// two-GPU host runs the multigpu suite)
const extra: Gpu[] = [];
after(() => {
  for (const g of extra) g.destroy();
});
async function gpus(n: number): Promise<Gpu[]> {
  const first = await testGpu();
  while (extra.length < n - 1) extra.push(await Gpu.create());
  return [first, ...extra.slice(0, n - 1)];
}

/** a table's rows as one host array (rows x dim) */
async function hostTable(gpu: Gpu, v: ValueChunks): Promise<Float32Array> {
  const out = new Float32Array(v.rows * v.dim);
  for (const [c, t] of v.chunks.entries()) out.set((await gpu.read(t)) as Float32Array, c * v.rowsPerChunk * v.dim);
  return out;
}

/** the whole table's columns [start, start + cols) */
function columns(all: Float32Array, dim: number, start: number, cols: number): Float32Array {
  const rows = all.length / dim;
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) out.set(all.subarray(r * dim + start, r * dim + start + cols), r * cols);
  return out;
}

for (const [G, local] of [[2, true], [3, true], [2, false]] as const) {
  test(`ShardedValueTable over ${G} devices${local ? '' : ' apart from the model\'s'}: the one-GPU table's init, read and gradients (awkward shapes, several chunks, rows past the table)`, async () => {
    const [gpu, ...rest] = await gpus(local ? G : G + 1);
    const devices = local ? [gpu!, ...rest] : rest;
    const rng = new Rng(40 + G);
    for (const dtype of ['f32', 'bf16'] as const) {
      // 301 rows of 24 in chunks of at most 64 rows (f32 gradients: 24 x 4 x 64 bytes)
      const o = { rows: 301, dim: 24, dtype, seed: 9, maxBindingBytes: 24 * 4 * 64 };
      const one = await ValueTable.create(gpu!, o);
      const sharded = await ShardedValueTable.create(devices, o);
      const whole = await hostTable(gpu!, one.values);
      for (const s of sharded.shards) assert.deepEqual(await hostTable(s.gpu, s.table.values), columns(whole, 24, s.start, 24 / G), `${dtype}: shard at column ${s.start}'s init`);
      // gather puts the chunks' columns together as one table's bytes; splitColumns gives each shard's chunks back
      const oneBytes = Buffer.concat(await Promise.all(one.params.map((p) => gpu!.readRaw(p.value))));
      const gathered = await sharded.gather();
      assert.ok(oneBytes.equals(gathered), `${dtype}: gather is the one-GPU table's bytes`);
      const e = dtype === 'f32' ? 4 : 2;
      const split = sharded.splitColumns(gathered, e);
      for (const [g, s] of sharded.shards.entries()) {
        assert.equal(split[g]!.length, s.table.params.length);
        for (const [c, p] of s.table.params.entries()) assert.ok(Buffer.from(split[g]![c]!).equals(await s.gpu.readRaw(p.value)), `${dtype}: shard ${g} chunk ${c}`);
      }
      assert.throws(() => sharded.splitColumns(gathered.subarray(e), e), /ShardedValueTable.splitColumns: \d+ bytes for 301 rows of 24/);

      const [T, B] = [37, 9];
      const idx = Array.from({ length: T * B }, () => (rng.next() < 0.05 ? 301 + rng.int(5) : rng.int(301)));
      const w = Array.from({ length: T * B }, () => rng.next() * 2 - 1);
      const dout = Array.from({ length: T * 24 }, () => rng.next() * 2 - 1);
      const t = (v: number[], shape: number[], d: 'u32' | 'f32' | 'bf16') => gpu!.tensorFrom(v, shape, d);
      const [ti, tw, td] = [await t(idx, [T, B], 'u32'), await t(w, [T, B], 'f32'), await t(dout, [T, 24], 'f32')];
      const made: Tensor[] = [ti, tw, td];
      const mk = async (shape: number[], d: 'f32' | 'bf16' = 'f32') => {
        const x = await gpu!.tensor(shape, d);
        made.push(x);
        return x;
      };
      // bf16 exchange: y is one GPU's rounded to bf16 once, dV and dw one GPU's for dout rounded to bf16
      for (const exchange of ['f32', 'bf16'] as const) {
        const what = `${dtype} values, ${exchange} exchange`;
        const xs = exchange === 'f32' ? sharded : await ShardedValueTable.create(devices, o, exchange);
        const rounded = exchange === 'bf16';
        const [y1, y2, dw1, dw2] = [await mk([T, 24], exchange), await mk([T, 24]), await mk([T, B]), await mk([T, B])];
        const d1 = rounded ? await t(dout, [T, 24], 'bf16') : td;
        if (rounded) made.push(d1);
        await membagForward(gpu!, { out: y1 }, { values: one.values, idx: ti, w: tw });
        const bag = await xs.forward(gpu!, y2, ti, tw);
        assert.deepEqual(await gpu!.read(y2), await gpu!.read(y1), `${what}: forward`);

        await one.zeroGrad(gpu!);
        await xs.zeroGrad();
        await membagBackward(gpu!, { dw: dw1, dvalues: one.grads }, { values: one.values, idx: ti, w: tw, dout: d1 });
        await xs.backward(gpu!, { dw: dw2 }, bag, td);
        const [a, b] = [await gpu!.read(dw1), await gpu!.read(dw2)];
        for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i]! - b[i]!) <= 1e-5 * (1 + Math.abs(a[i]!)), `${what}: dw[${i}] ${b[i]} against ${a[i]}`);
        const grads = await hostTable(gpu!, one.grads);
        for (const s of xs.shards) assert.deepEqual(await hostTable(s.gpu, s.table.grads), columns(grads, 24, s.start, 24 / G), `${what}: shard at column ${s.start}'s gradient`);
        assert.ok(xs.time.bytes > 0 && xs.time.exchange > 0);
        if (rounded) assert.ok(xs.time.bytes < sharded.time.bytes, `${what}: fewer bytes (${xs.time.bytes} against ${sharded.time.bytes})`);
        bag.dispose();
        if (xs !== sharded) xs.dispose();
      }

      for (const x of made) x.dispose();
      one.dispose();
      sharded.dispose();
    }
  });
}

test('ShardedValueTable: clear errors', async () => {
  const devices = await gpus(2);
  await assert.rejects(ShardedValueTable.create(devices, { rows: 10, dim: 7 }), /value width 7 must be a multiple of the 2 GPUs/);
  await assert.rejects(ShardedValueTable.create([], { rows: 10, dim: 8 }), /no GPUs given/);
  await assert.rejects(ShardedValueTable.create(devices, { rows: 10, dim: 6, dtype: 'f32' }, 'bf16'), /bf16 exchanges need an even width per shard/);
  await assert.rejects(ShardedValueTable.create(devices, { rows: 10, dim: 8 }, 'f16' as 'bf16'), /exchange must be 'f32' or 'bf16', got 'f16'/);
  const s = await ShardedValueTable.create(devices, { rows: 10, dim: 8 });
  const gpu = devices[0]!;
  const [idx, w, out] = [await gpu.tensor([3, 2], 'u32'), await gpu.tensor([3, 2], 'f32'), await gpu.tensor([3, 4], 'f32')];
  await assert.rejects(s.forward(gpu, out, idx, w), /out .* must be f32 \[3, 8\]/);
  await assert.rejects(s.forward(gpu, out, w, w), /idx .* must be u32 \[T, B\]/);
  for (const t of [idx, w, out]) t.dispose();
  s.dispose();
});

test('a model with its table sharded saves the files one GPU saves, and loads back whole or sharded', async () => {
  const devices = await gpus(2);
  const gpu = devices[0]!;
  const dir = mkdtempSync(join(tmpdir(), 'engram-sharded-'));
  try {
    const config = tinyMemoryModel([1], 'bf16');
    const one = await Transformer.create(gpu, config, 5);
    const two = await Transformer.create(gpu, config, 5, { valueGpus: devices });
    await saveModel(gpu, join(dir, 'one'), one);
    await saveModel(gpu, join(dir, 'two'), two);
    const file = (d: string) => readFileSync(join(dir, d, 'model.safetensors'));
    assert.ok(file('one').equals(file('two')), 'the same safetensors');
    const whole = (await loadModel(gpu, join(dir, 'two'))).model;
    const again = (await loadModel(gpu, join(dir, 'one'), { valueGpus: devices })).model;
    assert.equal(whole.shardedTable, null);
    assert.deepEqual(await again.shardedTable!.gather(), await two.shardedTable!.gather());
    assert.deepEqual(await hostTable(gpu, whole.table!.values), await hostTable(gpu, one.table!.values));
    for (const m of [one, two, whole, again]) m.dispose();
  } finally {
    rmSync(dir, { recursive: true });
  }
  await assert.rejects(ShardedValueTable.create(devices, { rows: 4, dim: 6, dtype: 'bf16' }), /16-bit values need an even width per shard/);
  const dense = { ...tinyMemoryModel([1]), memory: null };
  await assert.rejects(Transformer.create(gpu, dense, 5, { valueGpus: devices }), /valueGpus shards the memory value table, and this model has no memory layers/);
});
