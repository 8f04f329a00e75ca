// the memory layer on the GPU against the float64 reference of the whole layer (reference/pkm.ts):
// forward output and selected slots, dx and every parameter gradient, including the shared
// value table split over several chunks.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { roundTo, type DType } from '../gpu/dtype.ts';
import { pkmBackward, pkmForward, type PkmShape } from '../reference/pkm.ts';
import { TOL, assertClose } from '../testing/allclose.ts';
import { testGpu } from '../testing/gpu.ts';
import { randomPkm } from '../testing/pkm.ts';
import { MemoryLayer } from './memory_layer.ts';
import { ValueTable } from './value_table.ts';

async function check(gated: boolean, dtype: DType, T: number, chunkRowsWanted: number, qkNorm = false) {
  const gpu = await testGpu();
  const p: PkmShape = { d: 8, H: 2, n: 5, k: 3, dk: 6, gated, qkNorm };
  const { d, H, n, k, dk } = p;
  const { W, x, g } = randomPkm(p, T, gated ? 11 : 12);
  W.values = roundTo(W.values, dtype);
  // a binding of chunkRowsWanted f32 rows: the table (and its f32 gradient) split in chunks
  const table = await ValueTable.create(gpu, { rows: n * n, dim: d, dtype, maxBindingBytes: chunkRowsWanted * d * 4 });
  assert.equal(table.params.length, Math.ceil((n * n) / chunkRowsWanted));
  table.params.forEach((c, i) => gpu.write(c.value, W.values.subarray(i * table.rowsPerChunk * d, (i * table.rowsPerChunk + c.value.shape[0]!) * d)));
  const layer = await MemoryLayer.create(gpu, 'mem', { d, heads: H, nKeys: n, topk: k, keyDim: dk, gated, qkNorm }, table);
  if (layer.qkGains) {
    gpu.write(layer.qkGains.gq.value, W.gq);
    gpu.write(layer.qkGains.gk.value, W.gk);
  }
  gpu.write(layer.wq.value, W.Wq);
  gpu.write(layer.bq.value, W.bq);
  gpu.write(layer.keys.value, W.keys);
  if (layer.gate) {
    gpu.write(layer.gate.ws.value, W.Ws);
    gpu.write(layer.gate.bs.value, W.bs);
    gpu.write(layer.gate.wo.value, W.Wo);
    gpu.write(layer.gate.bo.value, W.bo);
  }
  const tx = await gpu.tensorFrom(x, [T, d], 'f32', 'x');
  const tg = await gpu.tensorFrom(g, [T, d], 'f32', 'dout');
  const ref = pkmForward(x, T, W, p);
  const out = await layer.forward(tx);
  assert.deepEqual([...(await gpu.read(layer.lastRead()!.slots))], [...ref.cache.slots], 'slots');
  assertClose('weights', await gpu.read(layer.lastRead()!.weights), ref.cache.weights, TOL.f32);
  assertClose('out', await gpu.read(out), ref.out, TOL.f32);
  const stats = await layer.stats();
  assert.ok(stats.usage > 0 && stats.usage <= 1 && stats.reads === T * H);
  const dx = await layer.backward(tg);
  const want = pkmBackward(g, ref.cache, W, p);
  assertClose('dx', await gpu.read(dx), want.dx, TOL.f32);
  assertClose('dWq', await gpu.read(layer.wq.grad), want.dWq, TOL.f32);
  assertClose('dbq', await gpu.read(layer.bq.grad), want.dbq, TOL.f32);
  assertClose('dkeys', await gpu.read(layer.keys.grad), want.dkeys, TOL.f32);
  if (layer.gate) {
    assertClose('dWs', await gpu.read(layer.gate.ws.grad), want.dWs!, TOL.f32);
    assertClose('dbs', await gpu.read(layer.gate.bs.grad), want.dbs!, TOL.f32);
    assertClose('dWo', await gpu.read(layer.gate.wo.grad), want.dWo!, TOL.f32);
    assertClose('dbo', await gpu.read(layer.gate.bo.grad), want.dbo!, TOL.f32);
  }
  if (layer.qkGains) {
    assertClose('dgq', await gpu.read(layer.qkGains.gq.grad), want.dgq!, TOL.f32);
    assertClose('dgk', await gpu.read(layer.qkGains.gk.grad), want.dgk!, TOL.f32);
  }
  const dvalues = new Float64Array(n * n * d);
  let at = 0;
  for (const c of table.params) {
    const part = await gpu.read(c.grad);
    dvalues.set(part, at);
    at += part.length;
  }
  assertClose('dvalues', dvalues, want.dvalues, TOL.f32);
  for (const t of [tx, tg, out, dx]) t.dispose();
  assert.equal(gpu.scratch.outstanding, 0, 'every scratch tensor given back');
  layer.dispose();
  table.dispose();
}

test('memory layer, Memory+ gating, f32 table in 4 chunks, T=7', () => check(true, 'f32', 7, 7));
test('memory layer, plain, bf16 table in 3 chunks, T=1', () => check(false, 'bf16', 1, 9));
test('memory layer, Memory+, f16 table in one chunk, T=33', () => check(true, 'f16', 33, 25));
test('memory layer, Memory+ with qk-norm, f32 table, T=5', () => check(true, 'f32', 5, 25, true));

test('memory layer rejects a table of the wrong size and bad inputs', async () => {
  const gpu = await testGpu();
  const table = await ValueTable.create(gpu, { rows: 16, dim: 8, dtype: 'f32' });
  await assert.rejects(MemoryLayer.create(gpu, 'm', { d: 8, nKeys: 5, topk: 2, keyDim: 4 }, table), /the value table has 16 rows; nKeys\^2 = 25 slots/);
  await assert.rejects(MemoryLayer.create(gpu, 'm', { d: 8, nKeys: 4, topk: 5, keyDim: 4 }, table), /topk 5 exceeds nKeys 4/);
  await assert.rejects(MemoryLayer.create(gpu, 'm', { d: 8, nKeys: 4, topk: 2, keyDim: 5 }, table), /keyDim must be even/);
  const layer = await MemoryLayer.create(gpu, 'm', { d: 8, heads: 2, nKeys: 4, topk: 2, keyDim: 4 }, table);
  const x = await gpu.tensor([3, 7], 'f32', 'x');
  await assert.rejects(layer.forward(x), /MemoryLayer 'm': x x\[3,7\]:f32 must be \[T, 8\]:f32/);
  await assert.rejects(layer.backward(x), /backward\(\) without a forward\(\)/);
  x.dispose();
  layer.dispose();
  table.dispose();
});
