import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DTYPES, roundTo } from '../../gpu/dtype.ts';
import { EngramError, ShapeError } from '../../gpu/errors.ts';
import * as ref from '../../reference/embedding.ts';
import { TOL, assertClose } from '../../testing/allclose.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { checkIds, embeddingBackward, embeddingForward } from './embedding.ts';

type Ids = (rng: Rng, N: number, V: number) => number[];
const uniform: Ids = (rng, N, V) => Array.from({ length: N }, () => rng.int(V));
/** one id on ~80% of positions: its run crosses many 64-row blocks */
const heavy: Ids = (rng, N, V) => Array.from({ length: N }, () => (rng.next() < 0.8 ? V >> 1 : rng.int(V)));
/** runs of exactly 64 and 32 rows once sorted: cuts fall on block edges */
const aligned: Ids = (_, N, V) => Array.from({ length: N }, (_x, t) => ((t < 128 ? t >> 6 : 2 + ((t - 128) >> 5)) * 7) % V);
/** both ends of the vocabulary, alternating */
const ends: Ids = (_, N, V) => Array.from({ length: N }, (_x, t) => (t % 3 === 0 ? 0 : V - 1));

// awkward shapes: N = 1, V = 1, odd C (f32 only), C over one 128-column chunk, long rows,
// N not a multiple of the 64-row block, repeated and heavy ids, ids 0 and V-1
const CASES: { N: number; V: number; C: number; ids: Ids; name: string }[] = [
  { N: 1, V: 1, C: 5, ids: uniform, name: 'single' },
  { N: 3, V: 7, C: 6, ids: ends, name: 'ends' },
  { N: 300, V: 50, C: 130, ids: heavy, name: 'heavy' },
  { N: 777, V: 1000, C: 33, ids: uniform, name: 'uniform' },
  { N: 200, V: 3, C: 260, ids: uniform, name: 'few ids' },
  { N: 256, V: 40, C: 2, ids: aligned, name: 'aligned' },
  { N: 5, V: 4, C: 1030, ids: ends, name: 'long rows' },
];

for (const dtype of DTYPES) {
  for (const { N, V, C, ids: makeIds, name } of CASES) {
    if (dtype !== 'f32' && C % 2) continue;
    test(`embedding ${dtype} ${name} N=${N} V=${V} C=${C}`, async () => {
      const gpu = await testGpu();
      const rng = new Rng(N * 1000 + V + C);
      const ids = makeIds(rng, N, V);
      checkIds(ids, V);
      const W = roundTo(rng.normals(V * C), dtype);
      const g = roundTo(rng.normals(N * C), dtype);
      const dW0 = rng.normals(V * C); // dW accumulates: unused rows keep these
      const tW = await gpu.tensorFrom(W, [V, C], dtype, 'W');
      const tids = await gpu.tensorFrom(ids, [N], 'u32', 'ids');
      const tg = await gpu.tensorFrom(g, [N, C], dtype, 'dout');
      const out = await gpu.tensor([N, C], dtype, 'out');
      const dW = await gpu.tensorFrom(dW0, [V, C], 'f32', 'dW');
      await embeddingForward(gpu, { out }, { W: tW, ids: tids });
      await embeddingBackward(gpu, { dW }, { dout: tg, ids: tids });
      assertClose('out', await gpu.read(out), ref.embeddingForward(W, ids, V, C), 0); // a copy: exact
      const want = ref.embeddingBackward(g, ids, V, C, dW0);
      const got = await gpu.read(dW);
      assertClose('dW', got, want, TOL[dtype]);
      const used = new Set(ids);
      for (let v = 0; v < V; v++) {
        if (used.has(v)) continue;
        for (let c = 0; c < C; c++) assert.equal(got[v * C + c], Math.fround(dW0[v * C + c]!), `unused row ${v} changed`);
      }
      // bitwise reproducible
      const dW2 = await gpu.tensorFrom(dW0, [V, C], 'f32', 'dW2');
      await embeddingBackward(gpu, { dW: dW2 }, { dout: tg, ids: tids });
      assert.deepEqual(await gpu.read(dW2), got, 'dW differs between runs');
      for (const t of [tW, tids, tg, out, dW, dW2]) t.dispose();
    });
  }
}

test('embedding: many blocks with one id everywhere, 2-D ids, exact sums', async () => {
  const gpu = await testGpu();
  // small integers sum exactly in f32 whatever the order
  const [B, T, V, C] = [3, 1500, 9, 4];
  const N = B * T;
  const ids = Array.from({ length: N }, (_, t) => (t % 11 === 0 ? 8 : 2));
  const g = Array.from({ length: N * C }, (_, i) => (i % 7) - 3);
  const tids = await gpu.tensorFrom(ids, [B, T], 'u32', 'ids');
  const tg = await gpu.tensorFrom(g, [B, T, C], 'f32', 'dout');
  const dW = await gpu.tensorFrom(new Float64Array(V * C), [V, C], 'f32', 'dW');
  await embeddingBackward(gpu, { dW }, { dout: tg, ids: tids });
  assert.deepEqual(Array.from(await gpu.read(dW)), Array.from(ref.embeddingBackward(g, ids, V, C)));
  for (const t of [tids, tg, dW]) t.dispose();
});

test('embedding: forward converts between storage dtypes', async () => {
  const gpu = await testGpu();
  const [N, V, C] = [7, 5, 6];
  const rng = new Rng(11);
  const ids = [4, 0, 2, 2, 9, 1, 4];
  for (const [wd, od] of [['bf16', 'f32'], ['f32', 'f16'], ['f16', 'bf16']] as const) {
    const W = roundTo(rng.normals(V * C), wd);
    const tW = await gpu.tensorFrom(W, [V, C], wd, 'W');
    const tids = await gpu.tensorFrom(ids, [N], 'u32', 'ids');
    const out = await gpu.tensor([N, C], od, 'out');
    await embeddingForward(gpu, { out }, { W: tW, ids: tids });
    assertClose(`out ${wd}->${od}`, await gpu.read(out), roundTo(ref.embeddingForward(W, ids, V, C), od), 0);
    for (const t of [tW, tids, out]) t.dispose();
  }
});

test('embedding: ids >= V read zeros and add nothing', async () => {
  const gpu = await testGpu();
  const [V, C] = [4, 3];
  const ids = [1, 4, 3, 1000, 2 ** 32 - 1, 3];
  const W = Array.from({ length: V * C }, (_, i) => i + 1);
  const g = Array.from({ length: ids.length * C }, (_, i) => i);
  const tW = await gpu.tensorFrom(W, [V, C], 'f32', 'W');
  const tids = await gpu.tensorFrom(ids, [ids.length], 'u32', 'ids');
  const tg = await gpu.tensorFrom(g, [ids.length, C], 'f32', 'dout');
  const out = await gpu.tensor([ids.length, C], 'f32', 'out');
  const dW = await gpu.tensorFrom(new Float64Array(V * C), [V, C], 'f32', 'dW');
  await embeddingForward(gpu, { out }, { W: tW, ids: tids });
  await embeddingBackward(gpu, { dW }, { dout: tg, ids: tids });
  assert.deepEqual(Array.from(await gpu.read(out)), Array.from(ref.embeddingForward(W, ids, V, C)));
  assert.deepEqual(Array.from(await gpu.read(dW)), Array.from(ref.embeddingBackward(g, ids, V, C)));
  for (const t of [tW, tids, tg, out, dW]) t.dispose();
});

test('embedding: checkIds names the first bad position', () => {
  checkIds(new Uint32Array([0, 4, 2]), 5);
  assert.throws(() => checkIds(new Uint32Array([0, 5, 7]), 5), (e: Error) => e instanceof EngramError && /ids\[1\] = 5 is out of range for a vocabulary of 5/.test(e.message));
  assert.throws(() => checkIds([1, -1], 5), /ids\[1\] = -1/);
});

test('embedding: shape and dtype errors', async () => {
  const gpu = await testGpu();
  const W = await gpu.tensor([10, 6], 'bf16', 'W');
  const Wodd = await gpu.tensor([10, 5], 'f32', 'Wodd');
  const ids = await gpu.tensorFrom([1, 2, 3], [3], 'u32', 'ids');
  const idsHalf = await gpu.tensor([3], 'f16', 'idsHalf');
  const idsF32 = await gpu.tensor([3], 'f32', 'idsF32');
  const Wu = await gpu.tensor([10, 6], 'u32', 'Wu');
  const out = await gpu.tensor([3, 6], 'bf16', 'out');
  const outOdd = await gpu.tensor([3, 5], 'bf16', 'outOdd');
  const dW = await gpu.tensor([10, 6], 'f32', 'dW');
  const dWh = await gpu.tensor([10, 6], 'bf16', 'dWh');
  const is = (re: RegExp) => (e: Error) => e instanceof ShapeError && re.test(e.message);
  await assert.rejects(embeddingForward(gpu, { out }, { W, ids: idsHalf }), is(/embeddingForward: ids idsHalf\[3\]:f16 must be one of u32/));
  await assert.rejects(embeddingBackward(gpu, { dW }, { dout: out, ids: idsF32 }), is(/embeddingBackward: ids idsF32\[3\]:f32 must be one of u32/));
  await assert.rejects(embeddingForward(gpu, { out }, { W: Wu, ids }), is(/embeddingForward: W Wu\[10,6\]:u32 must be one of f32\/f16\/bf16/));
  await assert.rejects(embeddingForward(gpu, { out: dW }, { W, ids }), is(/embeddingForward: out dW\[10,6\]:f32 should have shape \[3,6\]/));
  await assert.rejects(embeddingForward(gpu, { out: outOdd }, { W: Wodd, ids }), is(/embeddingForward: out outOdd\[3,5\]:bf16 has an odd row size/));
  await assert.rejects(embeddingBackward(gpu, { dW: dWh }, { dout: out, ids }), is(/embeddingBackward: dW dWh\[10,6\]:bf16 must be one of f32/));
  await assert.rejects(embeddingBackward(gpu, { dW }, { dout: outOdd, ids }), is(/embeddingBackward: dout outOdd\[3,5\]:bf16 should have shape \[3,6\]/));
  await assert.rejects(embeddingBackward(gpu, { dW: W.reshape([60]) }, { dout: out, ids }), is(/embeddingBackward: dW W\[60\]:bf16 should have shape \[\*,\*\]/));
  for (const t of [W, Wodd, ids, idsHalf, idsF32, Wu, out, outOdd, dW, dWh]) t.dispose();
});
