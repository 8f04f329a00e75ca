import assert from 'node:assert/strict';
import { test } from 'node:test';
import { roundTo } from '../../gpu/dtype.ts';
import { ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { kmeansAssign as kmeansRef, kmeansDistances, type KmeansDims } from '../../reference/kmeans.ts';
import { TOL, assertClose } from '../../testing/allclose.ts';
import { tensorMaker, testGpu, withMapping } from '../../testing/gpu.ts';
import { Rng } from '../../testing/rng.ts';
import { kmeansAssign } from './kmeans.ts';

// awkward shapes: one vector, one centroid, D = 1, N and C not multiples of the workgroup, the
// lanes (CPU mapping: 2S vectors, S centroids per step) or the tile (GPU mapping: 2048/D
// centroids), several tiles with a short last one, D = 256 (tiles of 8; past the CPU mapping's
// D <= 16, so the GPU mapping runs for both)
const CASES: KmeansDims[] = [
  { N: 1, M: 1, C: 1, D: 1 },
  { N: 1, M: 2, C: 3, D: 4 },
  { N: 37, M: 3, C: 7, D: 5 },
  { N: 300, M: 8, C: 256, D: 8 },
  { N: 70, M: 2, C: 300, D: 16 },
  { N: 5, M: 2, C: 20, D: 256 },
];

const MAPPINGS = ['adapter', 'gpu'] as const;

/**
 * got matches the reference: the same code everywhere except where the reference distances of
 * the two codes are within f32 rounding (a near-tie may swap); dist close to the reference
 * distance of the code chosen. returns the swaps.
 */
function check(codes: ArrayLike<number>, dist: ArrayLike<number>, x: Float64Array, cents: Float64Array, dims: KmeansDims): number {
  const { N, M, C } = dims;
  const want = kmeansRef(x, cents, dims);
  const all = kmeansDistances(x, cents, dims);
  let swaps = 0;
  const chosen: number[] = [];
  for (let r = 0; r < N * M; r++) {
    const cg = codes[r]!;
    const cw = want.codes[r]!;
    assert.ok(cg < C, `(n, m) = (${Math.floor(r / M)}, ${r % M}): code ${cg} out of [0, ${C})`);
    const sg = all[r * C + cg]!;
    chosen.push(sg);
    if (cg === cw) continue;
    const sw = want.dist[r]!;
    assert.ok(Math.abs(sg - sw) <= 1e-5 * Math.max(1, sw), `(n, m) = (${Math.floor(r / M)}, ${r % M}): got code ${cg} (dist ${sg}), want ${cw} (dist ${sw})`);
    swaps++;
  }
  assertClose('dist', dist, chosen, TOL.f32);
  return swaps;
}

for (const dims of CASES) {
  const { N, M, C, D } = dims;
  test(`kmeansAssign N=${N} M=${M} C=${C} D=${D} (both mappings, bitwise equal)`, async () => {
    const gpu = await testGpu();
    const rng = new Rng(N * 1000 + C * 10 + D);
    const x = roundTo(rng.normals(N * M * D), 'f32');
    const cents = roundTo(rng.normals(M * C * D), 'f32');
    const xt = await gpu.tensorFrom(x, [N, M, D], 'f32', 'x');
    const ct = await gpu.tensorFrom(cents, [M, C, D], 'f32', 'centroids');
    const bits: Uint32Array[] = [];
    for (const mapping of MAPPINGS) {
      await withMapping(gpu, mapping, async () => {
        const codes = await gpu.tensor([N, M], 'u32', 'codes');
        const dist = await gpu.tensor([N, M], 'f32', 'dist');
        await kmeansAssign(gpu, { codes, dist }, { x: xt, centroids: ct });
        const got = (await gpu.read(codes)) as Uint32Array;
        const d = (await gpu.read(dist)) as Float32Array;
        const swaps = check(got, d, x, cents, dims);
        assert.ok(swaps <= 1, `${mapping} mapping: ${swaps} near-tie swaps; random inputs should keep most apart`);
        bits.push(new Uint32Array([...got, ...new Uint32Array(d.buffer)]));
        codes.dispose();
        dist.dispose();
      });
    }
    assert.deepEqual(bits[0], bits[1], 'the two mappings differ');
    xt.dispose();
    ct.dispose();
  });
}

test('kmeansAssign: exact ties (duplicate and equidistant centroids) go to the lowest index', async () => {
  const gpu = await testGpu();
  // sub-space 0: centroids 1 and 3 are the same point, 0 and 2 are mirror images through the
  // origin; sub-space 1: all four centroids are one point. small integers: f32-exact distances
  const dims = { N: 5, M: 2, C: 4, D: 2 };
  const cents = [1, 0, 2, 2, -1, 0, 2, 2, /* m=1 */ 3, -1, 3, -1, 3, -1, 3, -1];
  const x = [0, 0, 0, 0, /* n=1 */ 2, 2, 3, -1, /* n=2 */ 0, 5, 1, 1, /* n=3 */ -1, 0, 7, 7, /* n=4 */ 0, 1, -2, 4];
  const want = kmeansRef(x, cents, dims);
  assert.deepEqual(Array.from(want.codes), [0, 0, 1, 0, 1, 0, 2, 0, 0, 0]);
  for (const mapping of MAPPINGS) {
    await withMapping(gpu, mapping, async () => {
      const codes = await gpu.tensor([5, 2], 'u32', 'codes');
      const dist = await gpu.tensor([5, 2], 'f32', 'dist');
      const i = { x: await gpu.tensorFrom(x, [5, 2, 2], 'f32', 'x'), centroids: await gpu.tensorFrom(cents, [2, 4, 2], 'f32', 'centroids') };
      await kmeansAssign(gpu, { codes, dist }, i);
      assert.deepEqual(Array.from(await gpu.read(codes)), Array.from(want.codes), `${mapping} mapping codes`);
      assert.deepEqual(Array.from(await gpu.read(dist)), Array.from(want.dist), `${mapping} mapping dist`);
      for (const t of [codes, dist, i.x, i.centroids]) t.dispose();
    });
  }
});

test('kmeansAssign: N = 0 dispatches nothing and succeeds', async () => {
  const gpu = await testGpu();
  const x = await gpu.tensor([0, 3, 4], 'f32', 'x');
  const centroids = await gpu.tensorFrom(new Float32Array(3 * 5 * 4), [3, 5, 4], 'f32', 'centroids');
  const codes = await gpu.tensor([0, 3], 'u32', 'codes');
  const dist = await gpu.tensor([0, 3], 'f32', 'dist');
  for (const mapping of MAPPINGS) await withMapping(gpu, mapping, () => kmeansAssign(gpu, { codes, dist }, { x, centroids }));
  for (const t of [x, centroids, codes, dist]) t.dispose();
});

test('kmeansAssign: shape, dtype and limit errors name the tensor and the rule', async () => {
  const gpu = await testGpu();
  const { mk, dispose } = tensorMaker(gpu);
  const x = await mk([4, 2, 3], 'f32', 'x');
  const centroids = await mk([2, 5, 3], 'f32', 'centroids');
  const codes = await mk([4, 2], 'u32', 'codes');
  const dist = await mk([4, 2], 'f32', 'dist');
  const bad = (oi: { x?: Tensor; centroids?: Tensor }, oo: { codes?: Tensor; dist?: Tensor }, re: RegExp) =>
    assert.rejects(kmeansAssign(gpu, { codes, dist, ...oo }, { x, centroids, ...oi }), (e: Error) => e instanceof ShapeError && re.test(e.message));
  await bad({ x: await mk([4, 6], 'f32', 'x2') }, {}, /kmeansAssign: x x2\[4,6\]:f32 should have shape \[N,M,D\]/);
  await bad({ x: await mk([4, 2, 3], 'f16', 'xh') }, {}, /kmeansAssign: x xh\[4,2,3\]:f16 must be one of f32/);
  await bad({ x: await mk([4, 0, 3], 'f32', 'xm') }, {}, /x xm\[4,0,3\]:f32 has M=0 sub-vectors; need at least 1/);
  await bad({ x: await mk([4, 2, 0], 'f32', 'xd0') }, {}, /x xd0\[4,2,0\]:f32 has sub-vectors of D=0 dims; D must be in \[1, 256\]/);
  await bad({ x: await mk([1, 1, 257], 'f32', 'xd') }, {}, /x xd\[1,1,257\]:f32 has sub-vectors of D=257 dims; D must be in \[1, 256\]/);
  await bad({ centroids: await mk([2, 15], 'f32', 'c2') }, {}, /centroids c2\[2,15\]:f32 should have shape \[M,C,D\] = \[2,\*,3\]/);
  await bad({ centroids: await mk([3, 5, 3], 'f32', 'cm') }, {}, /kmeansAssign: centroids cm\[3,5,3\]:f32 should have shape \[2,\*,3\]/);
  await bad({ centroids: await mk([2, 5, 4], 'f32', 'cd') }, {}, /kmeansAssign: centroids cd\[2,5,4\]:f32 should have shape \[2,\*,3\]/);
  await bad({ centroids: await mk([2, 5, 3], 'u32', 'cu') }, {}, /kmeansAssign: centroids cu\[2,5,3\]:u32 must be one of f32/);
  await bad({ centroids: await mk([2, 0, 3], 'f32', 'c0') }, {}, /centroids c0\[2,0,3\]:f32 has C=0 centroids per sub-space; C must be in \[1, 65536\]/);
  await bad({ x: await mk([1, 1, 1], 'f32', 'x1'), centroids: await mk([1, 65537, 1], 'f32', 'cbig') }, { codes: await mk([1, 1], 'u32', 'k1'), dist: await mk([1, 1], 'f32', 'd1') }, /C=65537 centroids per sub-space; C must be in \[1, 65536\]/);
  await bad({}, { codes: await mk([4, 3], 'u32', 'k3') }, /kmeansAssign: codes k3\[4,3\]:u32 should have shape \[4,2\]/);
  await bad({}, { codes: await mk([4, 2], 'f32', 'kf') }, /kmeansAssign: codes kf\[4,2\]:f32 must be one of u32/);
  await bad({}, { dist: await mk([2, 4], 'f32', 'd24') }, /kmeansAssign: dist d24\[2,4\]:f32 should have shape \[4,2\]/);
  await bad({}, { dist: await mk([4, 2], 'u32', 'du') }, /kmeansAssign: dist du\[4,2\]:u32 must be one of f32/);
  await bad({}, { dist: codes.reshape([4, 2]) }, /kmeansAssign: dist codes\[4,2\]:u32 must be one of f32/);
  await bad({ x: dist.reshape([4, 2, 1]), centroids: await mk([2, 5, 1], 'f32', 'c1') }, {}, /dist\[4,2\]:f32 and dist\[4,2,1\]:f32 overlap/);
  dispose();
});
