import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ShapeError } from '../../gpu/errors.ts';
import * as ref from '../../reference/decode_attention.ts';
import { TOL, assertClose } from '../../testing/allclose.ts';
import { testGpu } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { decodeAttention } from './decode_attention.ts';

// awkward cases: one key (a new row's first token); a front and a context over several 64-key
// tiles (44 + 90); an unused slot (no keys: zeros); grouped heads (6 over 2) and plain; HS 6
// (below a thread per dim), 64 and 100 (past the first 64 dims); a front shorter than its room
// (rows between it and F are garbage that must not count); rowBase past 0; large scores
interface Case extends ref.DecodeDims {
  rows: [number, number][];
  rowBase?: number;
  mag?: number;
}
const CASES: Case[] = [
  { B: 1, NH: 2, NKV: 1, HS: 6, S: 4, F: 0, rows: [[0, 1]] },
  { B: 3, NH: 6, NKV: 2, HS: 64, S: 160, F: 50, rows: [[44, 90], [0, 0], [3, 1]], rowBase: 2 },
  { B: 2, NH: 4, NKV: 4, HS: 100, S: 80, F: 10, rows: [[7, 65], [10, 64]], mag: 20 },
  { B: 4, NH: 2, NKV: 1, HS: 16, S: 200, F: 0, rows: [[0, 200], [0, 129], [0, 63], [0, 2]], scale: 0.7 },
];

for (const [ci, c] of CASES.entries()) {
  test(`decodeAttention matches the reference: case ${ci} (B ${c.B}, NH ${c.NH}/${c.NKV}, HS ${c.HS}, rows ${JSON.stringify(c.rows)})`, async () => {
    const gpu = await testGpu();
    const rng = new Rng(100 + ci);
    const { B, NH, NKV, HS, S } = c;
    const mag = c.mag ?? 1;
    const q = Float32Array.from({ length: B * NH * HS }, () => mag * rng.normal());
    const k = Float32Array.from({ length: B * S * NKV * HS }, () => rng.normal());
    const v = Float32Array.from({ length: B * S * NKV * HS }, () => rng.normal());
    const base = c.rowBase ?? 0;
    const rowWords = new Uint32Array((base + B) * 4).fill(7777); // other rows' entries: garbage
    c.rows.forEach(([f, n], b) => rowWords.set([f, n, 0, 0], (base + b) * 4));
    const tq = await gpu.tensorFrom(q, [B, NH, HS]);
    const tk = await gpu.tensorFrom(k, [B, S, NKV, HS]);
    const tv = await gpu.tensorFrom(v, [B, S, NKV, HS]);
    const rows = await gpu.tensorFrom(rowWords, [base + B, 4], 'u32');
    const out = await gpu.tensor([B, NH, HS], 'f32');
    await decodeAttention(gpu, { out }, { q: tq, k: tk, v: tv, rows }, { F: c.F, rowBase: base, ...(c.scale ? { scale: c.scale } : {}) });
    const want = ref.decodeAttention(q, k, v, c.rows, c);
    assertClose('out', await gpu.read(out), want, TOL.f32);
    for (const t of [tq, tk, tv, rows, out]) t.dispose();
  });
}

// a lockstep batch: one (f, n) for every row, from the uniforms (no rows buffer): the front as
// wide as its room (the reader's memory blocks), narrower (rows before F are garbage), none; HS 80
// (the paper's), 5 query heads per kv head; the new token's key is the context's last row
const LOCKSTEP: (ref.DecodeDims & { lengths: [number, number] })[] = [
  { B: 3, NH: 10, NKV: 2, HS: 80, S: 190, F: 44, lengths: [44, 129] },
  { B: 2, NH: 4, NKV: 2, HS: 64, S: 100, F: 30, lengths: [4, 65] },
  { B: 4, NH: 2, NKV: 1, HS: 6, S: 20, F: 0, lengths: [0, 1] },
];

for (const [ci, c] of LOCKSTEP.entries()) {
  test(`decodeAttention with one length for every row matches the reference: case ${ci} (B ${c.B}, NH ${c.NH}/${c.NKV}, HS ${c.HS}, f ${c.lengths[0]}, n ${c.lengths[1]})`, async () => {
    const gpu = await testGpu();
    const rng = new Rng(200 + ci);
    const { B, NH, NKV, HS, S } = c;
    const q = Float32Array.from({ length: B * NH * HS }, () => rng.normal());
    const k = Float32Array.from({ length: B * S * NKV * HS }, () => rng.normal());
    const v = Float32Array.from({ length: B * S * NKV * HS }, () => rng.normal());
    const tq = await gpu.tensorFrom(q, [B, NH, HS]);
    const tk = await gpu.tensorFrom(k, [B, S, NKV, HS]);
    const tv = await gpu.tensorFrom(v, [B, S, NKV, HS]);
    const out = await gpu.tensor([B, NH, HS], 'f32');
    await decodeAttention(gpu, { out }, { q: tq, k: tk, v: tv }, { F: c.F, lengths: c.lengths });
    const want = ref.decodeAttention(q, k, v, Array.from({ length: B }, () => c.lengths), c);
    assertClose('out', await gpu.read(out), want, TOL.f32);
    for (const t of [tq, tk, tv, out]) t.dispose();
  });
}

test('decodeAttention refuses shapes it cannot run, naming them', async () => {
  const gpu = await testGpu();
  const q = await gpu.tensor([2, 4, 8], 'f32');
  const k = await gpu.tensor([2, 10, 3, 8], 'f32');
  const rows = await gpu.tensor([2, 4], 'u32');
  await assert.rejects(decodeAttention(gpu, { out: q }, { q, k, v: k, rows }, { F: 0 }), (e: Error) => e instanceof ShapeError && /groups/.test(e.message));
  const k2 = await gpu.tensor([2, 10, 2, 8], 'f32');
  await assert.rejects(decodeAttention(gpu, { out: q }, { q, k: k2, v: k2, rows }, { F: 11 }), /F = 11/);
  await assert.rejects(decodeAttention(gpu, { out: q }, { q, k: k2, v: k2, rows }, { F: 0, rowBase: 1 }), /rowBase/);
  await assert.rejects(decodeAttention(gpu, { out: q }, { q, k: k2, v: k2, rows }, { F: 0, lengths: [0, 1] }), /not both/);
  await assert.rejects(decodeAttention(gpu, { out: q }, { q, k: k2, v: k2 }, { F: 0 }), /without rows/);
  await assert.rejects(decodeAttention(gpu, { out: q }, { q, k: k2, v: k2 }, { F: 4, lengths: [2, 7] }), /within the cache's 10/);
});
