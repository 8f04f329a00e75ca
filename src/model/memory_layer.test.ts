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

async function check(gated: boolean, dtype: DType, T: number, chunkRowsWanted: number, qkNorm = false, forwardDtype: 'f32' | 'f16' = 'f32') {
  const gpu = await testGpu();
  // f16 operands are packed in pairs: the query halves (dk/2) must be even there
  const p: PkmShape = { d: 8, H: 2, n: 5, k: 3, dk: forwardDtype === 'f16' ? 8 : 6, gated, qkNorm };
  const { d, H, n, k, dk } = p;
  const { W, x, g } = randomPkm(p, T, gated ? 11 : 12);
  W.values = roundTo(W.values, dtype);
  // a binding of chunkRowsWanted f32 rows: the table (and its f32 gradient) split in chunks
  const table = await ValueTable.create(gpu, { rows: n * n, dim: d, dtype, maxBindingBytes: chunkRowsWanted * d * 4 });
  assert.equal(table.params.length, Math.ceil((n * n) / chunkRowsWanted));
  table.params.forEach((c, i) => gpu.write(c.value, W.values.subarray(i * table.rowsPerChunk * d, (i * table.rowsPerChunk + c.value.shape[0]!) * d)));
  const layer = await MemoryLayer.create(gpu, 'mem', { d, heads: H, nKeys: n, topk: k, keyDim: dk, gated, qkNorm, forwardDtype }, table);
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
  // f16 forward operands: the forward within f16 tolerance (same slots on these inputs); the
  // backward's products are f32, so its gradients differ only through the forward's values
  const tf = TOL[forwardDtype];
  assertClose('weights', await gpu.read(layer.lastRead()!.weights), ref.cache.weights, tf);
  assertClose('out', await gpu.read(out), ref.out, tf);
  const stats = await layer.stats();
  assert.ok(stats.usage > 0 && stats.usage <= 1 && stats.reads === T * H);
  const reads = await layer.tokenReads(T - 1);
  assert.deepEqual(reads.map((r) => r.slot), [...ref.cache.slots.slice((T - 1) * H * k, T * H * k)]);
  await assert.rejects(layer.tokenReads(T), /token \d+ is not in 0\.\.\d+/);
  const dx = await layer.backward(tg);
  const want = pkmBackward(g, ref.cache, W, p);
  assertClose('dx', await gpu.read(dx), want.dx, tf);
  assertClose('dWq', await gpu.read(layer.wq.grad), want.dWq, tf);
  assertClose('dbq', await gpu.read(layer.bq.grad), want.dbq, tf);
  assertClose('dkeys', await gpu.read(layer.keys.grad), want.dkeys, tf);
  if (layer.gate) {
    assertClose('dWs', await gpu.read(layer.gate.ws.grad), want.dWs!, tf);
    assertClose('dbs', await gpu.read(layer.gate.bs.grad), want.dbs!, tf);
    assertClose('dWo', await gpu.read(layer.gate.wo.grad), want.dWo!, tf);
    assertClose('dbo', await gpu.read(layer.gate.bo.grad), want.dbo!, tf);
  }
  if (layer.qkGains) {
    assertClose('dgq', await gpu.read(layer.qkGains.gq.grad), want.dgq!, tf);
    assertClose('dgk', await gpu.read(layer.qkGains.gk.grad), want.dgk!, tf);
  }
  const dvalues = new Float64Array(n * n * d);
  let at = 0;
  for (const c of table.params) {
    const part = await gpu.read(c.grad);
    dvalues.set(part, at);
    at += part.length;
  }
  assertClose('dvalues', dvalues, want.dvalues, tf);
  for (const t of [tx, tg, out, dx]) t.dispose();
  assert.equal(gpu.scratch.outstanding, 0, 'every scratch tensor given back');
  layer.dispose();
  table.dispose();
}

test('memory layer, Memory+ gating, f32 table in 4 chunks, T=7', () => check(true, 'f32', 7, 7));
test('memory layer, plain, bf16 table in 3 chunks, T=1', () => check(false, 'bf16', 1, 9));
test('memory layer, Memory+, f16 table in one chunk, T=33', () => check(true, 'f16', 33, 25));
test('memory layer, Memory+ with qk-norm, f32 table, T=5', () => check(true, 'f32', 5, 25, true));
test('memory layer, Memory+, f16 forward products, bf16 table, T=9', () => check(true, 'bf16', 9, 25, false, 'f16'));

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
