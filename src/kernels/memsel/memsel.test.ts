import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Arena } from '../../gpu/buffers.ts';
import { roundTo, type DType } from '../../gpu/dtype.ts';
import { LimitError, ShapeError } from '../../gpu/errors.ts';
import type { Gpu } from '../../gpu/device.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { NO_TOKEN, memselRef, validRange, type MemselDims } from '../../reference/memsel.ts';
import { TOL, assertClose } from '../../testing/allclose.ts';
import { tensorMaker, testGpu, withMapping, type Mapping } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { MEMSEL_NONE, memselForward, type MemselGroup } from './memsel.ts';

interface Case {
  name: string;
  dims: MemselDims;
  K: number;
  start: number[];
  length: number[];
  scale?: number;
  group?: MemselGroup;
  /** bind the optional scores output */
  scores: boolean;
}

// awkward shapes: T not a multiple of 8 or 32, a prefix (start > 0), padding (length < T), fewer
// valid positions than K, an empty reference, length past T (clamped), start past T, K < 8 with
// the K = 8 pipeline, 'first' group, large scores (scale 0.5 at d=16), d = 80 (not a power of 2)
const CASES: Case[] = [
  { name: 'short', dims: { B: 3, T: 37, H: 6, Hkv: 2, d: 16 }, K: 8, start: [0, 5, 30], length: [37, 33, 35], scores: true },
  { name: 'reference', dims: { B: 3, T: 133, H: 6, Hkv: 3, d: 80 }, K: 8, start: [5, 0, 7], length: [133, 100, 7], scores: true },
  {
    name: 'first head, clamped, K=5',
    dims: { B: 3, T: 37, H: 6, Hkv: 2, d: 16 },
    K: 5,
    start: [2, 40, 1],
    length: [50, 45, 4],
    scale: 0.5,
    group: 'first',
    scores: false,
  },
];

const RUNS: { c: Case; dtype: DType; mapping: Mapping }[] = [
  ...(['f32', 'f16', 'bf16'] as const).flatMap((dtype) => (['adapter', 'gpu'] as const).map((mapping) => ({ c: CASES[0]!, dtype, mapping }))),
  { c: CASES[1]!, dtype: 'f32', mapping: 'adapter' },
  { c: CASES[1]!, dtype: 'f32', mapping: 'gpu' },
  { c: CASES[1]!, dtype: 'bf16', mapping: 'adapter' },
  { c: CASES[2]!, dtype: 'f32', mapping: 'adapter' },
  { c: CASES[2]!, dtype: 'f16', mapping: 'gpu' },
];

/**
 * got matches the reference's selection: the same index in every slot, except where two
 * candidates' reference ln w are within eps (f32 vs f64 rounding may swap near-ties); the
 * valid slots hold distinct valid positions, the rest NO_TOKEN. returns the near-tie swaps.
 */
function checkIndices(got: ArrayLike<number>, want: ArrayLike<number>, scores: Float64Array, c: Case): number {
  const { B, T, Hkv } = c.dims;
  const { K } = c;
  let swaps = 0;
  for (let b = 0; b < B; b++) {
    const [st, end] = validRange(c.start, c.length, b, T);
    const n = Math.min(K, end - st);
    for (let g = 0; g < Hkv; g++) {
      const o = (b * Hkv + g) * K;
      const seen = new Set<number>();
      for (let r = 0; r < K; r++) {
        const at = `b=${b} g=${g} slot ${r}`;
        const jg = got[o + r]!;
        const jw = want[o + r]!;
        if (r >= n) {
          assert.equal(jg, NO_TOKEN, `${at}: past the ${end - st} valid positions`);
          continue;
        }
        assert.ok(jg >= st && jg < end, `${at}: ${jg} outside [${st}, ${end})`);
        assert.ok(!seen.has(jg), `${at}: ${jg} selected twice`);
        seen.add(jg);
        if (jg === jw) continue;
        const sg = scores[(b * Hkv + g) * T + jg]!;
        const sw = scores[(b * Hkv + g) * T + jw]!;
        assert.ok(Math.abs(sg - sw) < 1e-4 * Math.max(1, Math.abs(sw)), `${at}: got ${jg} (ln w ${sg}), want ${jw} (ln w ${sw})`);
        swaps++;
      }
    }
  }
  return swaps;
}

async function upload(gpu: Gpu, c: Case, dtype: DType, seed: number) {
  const { B, T, H, Hkv, d } = c.dims;
  const rng = new Rng(seed);
  const q = roundTo(rng.normals(B * T * H * d), dtype);
  const k = roundTo(rng.normals(B * T * Hkv * d), dtype);
  const t = {
    q: await gpu.tensorFrom(q, [B, T, H, d], dtype, 'q'),
    k: await gpu.tensorFrom(k, [B, T, Hkv, d], dtype, 'k'),
    start: await gpu.tensorFrom(c.start, [B], 'u32', 'start'),
    length: await gpu.tensorFrom(c.length, [B], 'u32', 'length'),
  };
  return { q, k, t };
}

for (const { c, dtype, mapping } of RUNS) {
  const { B, T, H, Hkv, d } = c.dims;
  test(`memsel ${dtype} ${c.name} B=${B} T=${T} H=${H} Hkv=${Hkv} d=${d} K=${c.K} (${mapping} mapping)`, async () => {
    const gpu = await testGpu();
    await withMapping(gpu, mapping, async () => {
      const { q, k, t } = await upload(gpu, c, dtype, T * 100 + d);
      const indices = await gpu.tensor([B, Hkv, c.K], 'u32', 'indices');
      const scores = c.scores ? await gpu.tensor([B, Hkv, T], 'f32', 'scores') : undefined;
      const opts = { ...(c.scale !== undefined && { scale: c.scale }), ...(c.group && { group: c.group }) };
      await memselForward(gpu, { indices, ...(scores && { scores }) }, t, opts);
      // the reference sees the same (rounded) inputs: f32 tolerances whatever the storage dtype
      const want = memselRef(q, k, c.start, c.length, c.dims, c.K, c.scale, c.group);
      const got = await gpu.read(indices);
      const swaps = checkIndices(got, want.indices, want.scores, c);
      assert.ok(swaps <= 2, `${swaps} near-tie swaps: the inputs should keep most ranks apart`);
      if (scores) {
        const s = await gpu.read(scores);
        const valid: number[] = [];
        const validRef: number[] = [];
        want.scores.forEach((v, e) => {
          if (v === -Infinity) assert.equal(s[e], -Infinity, `scores[${e}] outside the valid range`);
          else {
            valid.push(s[e]!);
            validRef.push(v);
          }
        });
        assertClose('scores', valid, validRef, TOL.f32);
        // deterministic: a second run gives the same bits
        const scores2 = await gpu.tensor([B, Hkv, T], 'f32', 'scores2');
        const indices2 = await gpu.tensor([B, Hkv, c.K], 'u32', 'indices2');
        await memselForward(gpu, { indices: indices2, scores: scores2 }, t, opts);
        assert.deepEqual(new Uint32Array((await gpu.read(scores2)).buffer), new Uint32Array(s.buffer), 'scores differ between runs');
        assert.deepEqual(await gpu.read(indices2), got, 'indices differ between runs');
        scores2.dispose();
        indices2.dispose();
      }
      for (const x of [indices, scores, ...Object.values(t)]) x?.dispose();
    });
  });
}

test('memsel: exact ties go to the lower position; sum vs first head', async () => {
  const gpu = await testGpu();
  // every key row is one of 3 vectors: ln w ties exactly within each class, in both mappings
  const dims = { B: 1, T: 20, H: 4, Hkv: 1, d: 4 };
  const { T, H, d } = dims;
  const rng = new Rng(7);
  const q = roundTo(rng.normals(T * H * d), 'f32');
  const basis = [
    [1, 0, 0, 0],
    [0, 0.5, 0, 0],
    [0, 0, -1, 0.25],
  ];
  const cls = [2, 0, 1, 0, 2, 1, 1, 0, 2, 0, 1, 2, 0, 0, 1, 2, 2, 0, 1, 1];
  const k = cls.flatMap((x) => basis[x]!);
  for (const mapping of ['adapter', 'gpu'] as const) {
    await withMapping(gpu, mapping, async () => {
      for (const group of ['sum', 'first'] as const) {
        const t = {
          q: await gpu.tensorFrom(q, [1, T, H, d], 'f32', 'q'),
          k: await gpu.tensorFrom(k, [1, T, 1, d], 'f32', 'k'),
          start: await gpu.tensorFrom([1], [1], 'u32', 'start'),
          length: await gpu.tensorFrom([19], [1], 'u32', 'length'),
        };
        const indices = await gpu.tensor([1, 1, 8], 'u32', 'indices');
        await memselForward(gpu, { indices }, t, { group });
        const want = memselRef(q, k, [1], [19], dims, 8, undefined, group);
        assert.deepEqual(Array.from(await gpu.read(indices)), Array.from(want.indices), `${mapping} mapping, group ${group}`);
        for (const x of [indices, ...Object.values(t)]) x.dispose();
      }
    });
  }
});

test('memsel: every tensor in one buffer (an arena): start/length bound read_write still compile', async () => {
  const gpu = await testGpu();
  const c = CASES[0]!;
  const { B, T, H, Hkv, d } = c.dims;
  for (const mapping of ['adapter', 'gpu'] as const) {
    await withMapping(gpu, mapping, async () => {
      const arena = new Arena(gpu, 'memsel_arena');
      arena.declare('q', [B, T, H, d]);
      arena.declare('k', [B, T, Hkv, d]);
      arena.declare('start', [B], 'u32');
      arena.declare('length', [B], 'u32');
      arena.declare('indices', [B, Hkv, c.K], 'u32');
      arena.declare('scores', [B, Hkv, T]);
      await arena.commit();
      const rng = new Rng(5);
      const q = roundTo(rng.normals(B * T * H * d), 'f32');
      const k = roundTo(rng.normals(B * T * Hkv * d), 'f32');
      gpu.write(arena.get('q'), q);
      gpu.write(arena.get('k'), k);
      gpu.write(arena.get('start'), c.start);
      gpu.write(arena.get('length'), c.length);
      const i = { q: arena.get('q'), k: arena.get('k'), start: arena.get('start'), length: arena.get('length') };
      await memselForward(gpu, { indices: arena.get('indices'), scores: arena.get('scores') }, i);
      const want = memselRef(q, k, c.start, c.length, c.dims, c.K);
      checkIndices(await gpu.read(arena.get('indices')), want.indices, want.scores, c);
      arena.dispose();
    });
  }
});

test('memsel: shape, dtype and limit errors name the tensor'
, async () => {
  const gpu = await testGpu();
  const { mk, dispose } = tensorMaker(gpu);
  const q = await mk([2, 10, 4, 8], 'f32', 'q');
  const k = await mk([2, 10, 2, 8], 'f32', 'k');
  const start = await mk([2], 'u32', 'start');
  const length = await mk([2], 'u32', 'length');
  const indices = await mk([2, 2, 8], 'u32', 'indices');
  const i = { q, k, start, length };
  const is = (re: RegExp, type: typeof ShapeError = ShapeError) => (e: Error) => e instanceof type && re.test(e.message);
  const bad = async (oi: Partial<typeof i>, oo: { indices?: Tensor; scores?: Tensor }, re: RegExp, type?: typeof ShapeError) =>
    assert.rejects(memselForward(gpu, { indices, ...oo }, { ...i, ...oi }), is(re, type));
  await bad({ q: await mk([2, 10, 32], 'f32', 'q3') }, {}, /memselForward: q q3\[2,10,32\]:f32 should have shape \[B,T,H,d\]/);
  await bad({ k: await mk([2, 10, 2, 6], 'f32', 'k6') }, {}, /memselForward: k k6\[2,10,2,6\]:f32 should have shape \[2,10,\*,8\]/);
  await bad({ k: await mk([2, 10, 3, 8], 'f32', 'k3') }, {}, /H=4 query heads \(q q\[2,10,4,8\]:f32\) must be a multiple of Hkv=3 KV heads \(k k3/);
  await bad({ k: await mk([2, 10, 2, 8], 'u32', 'ku') }, {}, /memselForward: k ku\[2,10,2,8\]:u32 must be one of f32\/f16\/bf16/);
  await bad({ q: await mk([2, 10, 4, 7], 'f32', 'q7'), k: await mk([2, 10, 2, 7], 'f32', 'k7') }, {}, /head size d=7 \(q q7\[2,10,4,7\]:f32\) must be even/);
  await bad({ q: await mk([1, 2, 2, 130], 'f32', 'qd'), k: await mk([1, 2, 2, 130], 'f32', 'kd') }, {}, /head size d=130 .* limit of 128/, LimitError);
  await bad({ q: await mk([1, 257, 1, 2], 'f32', 'qT'), k: await mk([1, 257, 1, 2], 'f32', 'kT') }, {}, /q qT\[1,257,1,2\]:f32 has T=257 positions; the limit is 256/, LimitError);
  await bad({ start: await mk([3], 'u32', 'start3') }, {}, /memselForward: start start3\[3\]:u32 should have shape \[2\]/);
  await bad({ length: await mk([2], 'f32', 'lenf') }, {}, /memselForward: length lenf\[2\]:f32 must be one of u32/);
  await bad({}, { indices: await mk([2, 3, 8], 'u32', 'idx3') }, /memselForward: indices idx3\[2,3,8\]:u32 should have shape \[2,2,\*\]/);
  await bad({}, { indices: await mk([2, 2, 8], 'f32', 'idxf') }, /memselForward: indices idxf\[2,2,8\]:f32 must be one of u32/);
  await bad({}, { indices: await mk([2, 2, 33], 'u32', 'idx33') }, /indices idx33\[2,2,33\]:u32 keeps K=33 tokens; the limit is 32/, LimitError);
  await bad({}, { indices: await mk([2, 2, 0], 'u32', 'idx0') }, /indices idx0\[2,2,0\]:u32 keeps K=0 tokens/);
  await bad({}, { scores: await mk([2, 2, 9], 'f32', 'sc9') }, /memselForward: scores sc9\[2,2,9\]:f32 should have shape \[2,2,10\]/);
  await bad({}, { scores: await mk([2, 2, 10], 'f16', 'sch') }, /memselForward: scores sch\[2,2,10\]:f16 must be one of f32/);
  await bad({}, { indices: start.reshape([1, 2, 1]) }, /memselForward: indices start\[1,2,1\]:u32 should have shape \[2,2,\*\]/);
  await bad({ start: indices.reshape([32]).leading([2]) }, {}, /indices\[2,2,8\]:u32 and indices\[2\]:u32 overlap/);
  await assert.rejects(memselForward(gpu, { indices }, i, { group: 'mean' as MemselGroup }), is(/group 'mean' must be 'sum' or 'first'/));
  dispose();
});

test('memsel: MEMSEL_NONE is the reference NO_TOKEN', () => {
  assert.equal(MEMSEL_NONE, NO_TOKEN);
});
