import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Gpu } from '../../gpu/device.ts';
import { roundTo, type DType } from '../../gpu/dtype.ts';
import { EngramError, LimitError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import * as ref from '../../reference/membag.ts';
import { TOL, assertClose } from '../../testing/allclose.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { chunkRows, membagBackward, membagForward, type ValueChunks } from './membag.ts';

/** V (N*d) as chunks of R rows */
async function toChunks(gpu: Gpu, V: ArrayLike<number>, N: number, d: number, R: number, dtype: DType, label: string): Promise<ValueChunks> {
  const chunks: Tensor[] = [];
  for (let r0 = 0; r0 < N; r0 += R) {
    const rows = Math.min(R, N - r0);
    chunks.push(await gpu.tensorFrom(Array.from({ length: rows * d }, (_, k) => V[r0 * d + k]!), [rows, d], dtype, `${label}${chunks.length}`));
  }
  return { chunks, rowsPerChunk: R, rows: N, dim: d };
}

async function readChunks(gpu: Gpu, v: ValueChunks): Promise<Float32Array> {
  const out = new Float32Array(v.rows * v.dim);
  for (const [c, t] of v.chunks.entries()) out.set(await gpu.read(t), c * v.rowsPerChunk * v.dim);
  return out;
}

const disposeAll = (ts: readonly (Tensor | ValueChunks)[]): void => ts.forEach((t) => ('chunks' in t ? t.chunks.forEach((c) => c.dispose()) : t.dispose()));

interface Case {
  name: string;
  vdt: DType; // values
  odt: DType; // out
  gdt: DType; // dout
  T: number;
  B: number;
  d: number;
  N: number;
  R: number;
  /** magnitude of the values (large: 1e3, 1e4) */
  scale?: number;
}

// awkward shapes: d = 1, 3 (odd: units of 1 column; f16 values and bf16 dout read mid-word), 4,
// 8, 130 (units of 4 / 2 columns; 130 spans two 128-column segsum chunks); B = 1, 7, 128;
// T = 1, 5, 37; 1 or 2 chunks (one pass), and 15 chunks of one row (more than one binding set
// holds beside the other bindings: several passes, checked by counting dispatches).
// N <= 15 keeps the slot sort at one radix pass (a second one costs lavapipe ~10 s of compiling);
// idx = N and 2^32 - 1 then saturate to the largest key, N itself.
const CASES: Case[] = [
  { name: 'f32 d=130 large', vdt: 'f32', odt: 'f32', gdt: 'f32', T: 37, B: 7, d: 130, N: 15, R: 15, scale: 1e3 },
  { name: 'f16 d=4 2 chunks', vdt: 'f16', odt: 'f16', gdt: 'f16', T: 37, B: 128, d: 4, N: 15, R: 8 },
  { name: 'bf16 d=130 T=1 large', vdt: 'bf16', odt: 'bf16', gdt: 'bf16', T: 1, B: 128, d: 130, N: 15, R: 15, scale: 1e4 },
  { name: 'f16 values d=3 bf16 dout', vdt: 'f16', odt: 'f32', gdt: 'bf16', T: 37, B: 7, d: 3, N: 15, R: 15 },
  { name: 'f32 d=1 B=1', vdt: 'f32', odt: 'f32', gdt: 'f32', T: 1, B: 1, d: 1, N: 3, R: 2 },
  // the two multi-pass cases share their dw and dV kernels (lavapipe compiles them once)
  { name: 'bf16 15 chunks, bf16 out (passes)', vdt: 'bf16', odt: 'bf16', gdt: 'f16', T: 37, B: 7, d: 8, N: 15, R: 1 },
  { name: 'bf16 15 chunks, f32 out (passes)', vdt: 'bf16', odt: 'f32', gdt: 'f16', T: 5, B: 128, d: 8, N: 15, R: 1 },
];

/** slots with repeats within and across bags (slot 0 on ~30% of entries) and a few idx >= N */
function makeIdx(rng: Rng, T: number, B: number, N: number): number[] {
  const idx = Array.from({ length: T * B }, () => (rng.next() < 0.3 ? 0 : rng.int(N)));
  if (idx.length > 2) {
    idx[1] = N;
    idx[idx.length - 1] = 0xffffffff;
  }
  return idx;
}

for (const c of CASES) {
  test(`membag ${c.name}: T=${c.T} B=${c.B} d=${c.d} N=${c.N} R=${c.R}`, async () => {
    const gpu = await testGpu();
    const { T, B, d, N, R } = c;
    const rng = new Rng(T * 1000 + B * 10 + d);
    const idx = makeIdx(rng, T, B, N);
    const V = roundTo(rng.normals(N * d, c.scale ?? 1), c.vdt);
    const w = roundTo(rng.normals(T * B), 'f32');
    const g = roundTo(rng.normals(T * d), c.gdt);
    const dV0 = roundTo(rng.normals(N * d), 'f32'); // dV accumulates: unread rows keep these
    const values = await toChunks(gpu, V, N, d, R, c.vdt, 'V');
    const dvalues = await toChunks(gpu, dV0, N, d, R, 'f32', 'dV');
    const dvalues2 = await toChunks(gpu, dV0, N, d, R, 'f32', 'dV2');
    const tidx = await gpu.tensorFrom(idx, [T, B], 'u32', 'idx');
    const tw = await gpu.tensorFrom(w, [T, B], 'f32', 'w');
    const tg = await gpu.tensorFrom(g, [T, d], c.gdt, 'dout');
    const out = await gpu.tensor([T, d], c.odt, 'out');
    const dw = await gpu.tensorFrom(new Float64Array(T * B).fill(7), [T, B], 'f32', 'dw');
    const dw2 = await gpu.tensor([T, B], 'f32', 'dw2');

    const d0 = gpu.dispatches;
    await membagForward(gpu, { out }, { values, idx: tidx, w: tw });
    const maxStorage = gpu.limits['maxStorageBuffersPerShaderStage'] ?? 8;
    assert.equal(gpu.dispatches - d0, Math.ceil(values.chunks.length / (maxStorage - 4)), 'forward passes');
    await membagBackward(gpu, { dw, dvalues }, { values, idx: tidx, w: tw, dout: tg });

    const want = ref.membagBackward(g, V, idx, w, N, d, T, B, dV0);
    assertClose('out', await gpu.read(out), ref.membagForward(V, idx, w, N, d, T, B), TOL[c.odt]);
    // inputs are rounded to their storage: only f32 sums differ from float64
    const gotDw = await gpu.read(dw);
    assertClose('dw', gotDw, want.dw, TOL.f32);
    idx.forEach((v, e) => v >= N && assert.equal(gotDw[e], 0, `dw of idx ${v} >= N`));
    const got = await readChunks(gpu, dvalues);
    assertClose('dV', got, want.dV, TOL.f32);
    const used = new Set(idx);
    for (let v = 0; v < N; v++) {
      if (used.has(v)) continue;
      for (let k = 0; k < d; k++) assert.equal(got[v * d + k], dV0[v * d + k], `unread row ${v} changed`);
    }

    // bitwise reproducible, and each output alone gives the same bits
    await membagBackward(gpu, { dvalues: dvalues2 }, { values, idx: tidx, w: tw, dout: tg });
    await membagBackward(gpu, { dw: dw2 }, { values, idx: tidx, w: tw, dout: tg });
    assert.deepEqual(await readChunks(gpu, dvalues2), got, 'dV differs between runs');
    assert.deepEqual(await gpu.read(dw2), gotDw, 'dw differs between runs');
    disposeAll([values, dvalues, dvalues2, tidx, tw, tg, out, dw, dw2]);
  });
}

test('membag: dV sums of one slot over many blocks are exact', async () => {
  const gpu = await testGpu();
  // small integers sum exactly in f32 whatever the order; slot 2's run crosses many 64-entry
  // blocks, slot 5 alternates with it, slot 9 >= N
  const [T, B, d, N, R] = [300, 3, 4, 7, 3];
  const idx = Array.from({ length: T * B }, (_, e) => (e % 13 === 0 ? 5 : e % 101 === 0 ? 9 : 2));
  const w = Array.from({ length: T * B }, (_, e) => (e % 3) - 1);
  const g = Array.from({ length: T * d }, (_, k) => (k % 7) - 3);
  const V = Array.from({ length: N * d }, (_, k) => (k % 5) - 2);
  const values = await toChunks(gpu, V, N, d, R, 'f32', 'V');
  const dvalues = await toChunks(gpu, new Float64Array(N * d), N, d, R, 'f32', 'dV');
  const tidx = await gpu.tensorFrom(idx, [T, B], 'u32', 'idx');
  const tw = await gpu.tensorFrom(w, [T, B], 'f32', 'w');
  const tg = await gpu.tensorFrom(g, [T, d], 'f32', 'dout');
  const out = await gpu.tensor([T, d], 'f32', 'out');
  const dw = await gpu.tensor([T, B], 'f32', 'dw');
  await membagForward(gpu, { out }, { values, idx: tidx, w: tw });
  await membagBackward(gpu, { dw, dvalues }, { values, idx: tidx, w: tw, dout: tg });
  const want = ref.membagBackward(g, V, idx, w, N, d, T, B);
  assert.deepEqual(Array.from(await gpu.read(out)), Array.from(ref.membagForward(V, idx, w, N, d, T, B)));
  assert.deepEqual(Array.from(await gpu.read(dw)), Array.from(want.dw));
  assert.deepEqual(Array.from(await readChunks(gpu, dvalues)), Array.from(want.dV));
  disposeAll([values, dvalues, tidx, tw, tg, out, dw]);
});

test('membag: chunkRows', () => {
  assert.equal(chunkRows(100, 4, 'f32', 160), 10);
  assert.equal(chunkRows(100, 4, 'bf16', 160), 20);
  assert.equal(chunkRows(3, 4, 'f32', 1 << 20), 3); // never more than the table
  assert.equal(chunkRows(100, 3, 'f16', 10), 1); // 2 rows = 12 bytes; 1 row = 6 bytes in 8
  assert.equal(chunkRows(9, 4, 'f32', 64), 4); // 4, 4 and 1 rows
  assert.equal(chunkRows(2 ** 20, 1024, 'bf16', 2 ** 31 - 4), 2 ** 20 - 1); // 2 GiB does not bind: 2 chunks
  assert.equal(chunkRows(2 ** 20, 1024, 'f32', 2 ** 31 - 4), 2 ** 19 - 1); // 3 chunks
  assert.throws(() => chunkRows(10, 1000, 'f32', 3999), (e: Error) => e instanceof LimitError && /one row of 1000 f32/.test(e.message));
  assert.throws(() => chunkRows(0, 4, 'f32', 100), (e: Error) => e instanceof EngramError && /rows = 0/.test(e.message));
});

test('membag: shape and dtype errors', async () => {
  const gpu = await testGpu();
  const mk = (shape: number[], dtype: DType | 'u32', label: string) => gpu.tensor(shape, dtype, label);
  const c0 = await mk([4, 6], 'bf16', 'c0');
  const c1 = await mk([2, 6], 'bf16', 'c1');
  const c1f = await mk([2, 6], 'f16', 'c1f');
  const c1s = await mk([3, 6], 'bf16', 'c1s');
  const d0 = await mk([4, 6], 'f32', 'd0');
  const d1 = await mk([2, 6], 'f32', 'd1');
  const h0 = await mk([4, 6], 'bf16', 'h0');
  const idx = await mk([3, 5], 'u32', 'idx');
  const idxF = await mk([3, 5], 'f32', 'idxF');
  const w = await mk([3, 5], 'f32', 'w');
  const w4 = await mk([3, 4], 'f32', 'w4');
  const out = await mk([3, 6], 'f32', 'out');
  const out5 = await mk([3, 5], 'f32', 'out5');
  const dw = await mk([3, 5], 'f32', 'dw');
  const dwh = await mk([3, 5], 'f16', 'dwh');
  const d6 = await mk([6, 6], 'f32', 'd6');
  const v5 = await mk([2, 5], 'f32', 'v5');
  const o5h = await mk([3, 5], 'bf16', 'o5h');
  const values: ValueChunks = { chunks: [c0, c1], rowsPerChunk: 4, rows: 6, dim: 6 };
  const dvalues: ValueChunks = { chunks: [d0, d1], rowsPerChunk: 4, rows: 6, dim: 6 };
  const is = (re: RegExp) => (e: Error) => e instanceof ShapeError && re.test(e.message);
  const fwd = (o: Partial<{ out: Tensor }>, i: Partial<{ values: ValueChunks; idx: Tensor; w: Tensor }>) =>
    membagForward(gpu, { out, ...o }, { values, idx, w, ...i });
  const bwd = (o: { dw?: Tensor; dvalues?: ValueChunks }, i: Partial<{ values: ValueChunks; idx: Tensor; w: Tensor; dout: Tensor }>) =>
    membagBackward(gpu, o, { values, idx, w, dout: out, ...i });
  await assert.rejects(fwd({}, { values: { ...values, chunks: [c0] } }), is(/membagForward: values has 1 chunks; 6 rows at 4 rows per chunk need 2/));
  await assert.rejects(fwd({}, { values: { ...values, chunks: [c0, c1f] } }), is(/values.chunks\[1\] c1f\[2,6\]:f16 is f16, chunks\[0\] is bf16/));
  await assert.rejects(fwd({}, { values: { ...values, chunks: [c0, c1s] } }), is(/values.chunks\[1\] c1s\[3,6\]:bf16 should have shape \[2,6\]/));
  await assert.rejects(fwd({}, { values: { ...values, rowsPerChunk: 0 } }), is(/values.rowsPerChunk = 0, need a positive integer/));
  await assert.rejects(fwd({}, { values: { ...values, chunks: [idx, c1] } }), is(/values.chunks\[0\] idx\[3,5\]:u32 must be one of f32\/f16\/bf16/));
  await assert.rejects(fwd({}, { idx: idxF }), is(/membagForward: idx idxF\[3,5\]:f32 must be one of u32/));
  await assert.rejects(fwd({}, { w: w4 }), is(/membagForward: w w4\[3,4\]:f32 should have shape \[3,5\]/));
  await assert.rejects(fwd({ out: out5 }, {}), is(/membagForward: out out5\[3,5\]:f32 should have shape \[3,6\]/));
  await assert.rejects(fwd({ out: c0 }, {}), is(/membagForward: out c0\[4,6\]:bf16 should have shape \[3,6\]/));
  await assert.rejects(bwd({ dw: dwh }, {}), is(/membagBackward: dw dwh\[3,5\]:f16 must be one of f32/));
  await assert.rejects(bwd({ dw }, { dout: out5 }), is(/membagBackward: dout out5\[3,5\]:f32 should have shape \[3,6\]/));
  await assert.rejects(bwd({ dvalues: { ...dvalues, chunks: [h0, c1] } }, {}), is(/dvalues.chunks\[0\] h0\[4,6\]:bf16 must be one of f32/));
  await assert.rejects(bwd({ dvalues: { ...dvalues, rowsPerChunk: 6, chunks: [d6] } }, {}), is(/dvalues \(6 rows of 6, 6 per chunk\) must match values \(6 rows of 6, 4 per chunk\)/));
  const odd: ValueChunks = { chunks: [v5], rowsPerChunk: 2, rows: 2, dim: 5 };
  await assert.rejects(fwd({ out: o5h }, { values: odd }), is(/membagForward: out o5h\[3,5\]:bf16 is bf16 with an odd row size d = 5/));
  await assert.rejects(bwd({ dw: w }, {}), is(/membagBackward: w\[3,5\]:f32 and w\[3,5\]:f32 overlap/));
  disposeAll([c0, c1, c1f, c1s, d0, d1, h0, idx, idxF, w, w4, out, out5, dw, dwh, d6, v5, o5h]);
});
