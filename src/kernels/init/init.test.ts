import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DTYPES, type DType } from '../../gpu/dtype.ts';
import { EngramError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import * as ref from '../../reference/init.ts';
import { testGpu } from '../../testing/gpu.ts';
import { fillNormal, fillUniform } from './init.ts';

// element-wise: |gpu - ref| <= REL |ref| + 1e-4 max(|ref|, scale). REL is the dtype's rounding
// (half an ulp, relative); the 1e-4 term covers f32 log/cos/sqrt, relative to the value or,
// near 0 where relative error means nothing, to the distribution's scale (std, or max(|lo|, |hi|))
const REL: Record<DType, number> = { f32: 0, f16: 2 ** -11, bf16: 2 ** -8 };

function assertElementwise(name: string, got: ArrayLike<number>, want: ArrayLike<number>, dtype: DType, scale: number): void {
  assert.equal(got.length, want.length, `${name}: length`);
  for (let i = 0; i < want.length; i++) {
    const g = got[i]!;
    const r = want[i]!;
    const tol = REL[dtype] * Math.abs(r) + 1e-4 * Math.max(Math.abs(r), scale);
    if (!(Math.abs(g - r) <= tol)) assert.fail(`${name}: [${i}] gpu ${g} ref ${r} (|diff| ${Math.abs(g - r)} > ${tol})`);
  }
}

const SIZES = [1, 3, 1001];

for (const dtype of DTYPES) {
  test(`init ${dtype}: normal and uniform match the reference (sizes ${SIZES.join(', ')})`, async () => {
    const gpu = await testGpu();
    for (const n of SIZES) {
      const t = await gpu.tensor(n === 1001 ? [7, 143] : [n], dtype, 'w');
      const no = { std: 0.02, mean: 0.5, seed: 1234 + n, offset: 17 };
      await fillNormal(gpu, t, no);
      assertElementwise(`normal ${t}`, await gpu.read(t), ref.fillNormal(n, no), dtype, no.std);
      const uo = { lo: -0.1, hi: 0.3, seed: 99 + n };
      await fillUniform(gpu, t, uo);
      const u = await gpu.read(t);
      assertElementwise(`uniform ${t}`, u, ref.fillUniform(n, uo), dtype, 0.3);
      assert.ok(u.every((x) => x >= uo.lo && x < uo.hi), `uniform ${t} leaves [lo, hi)`);
      if (dtype !== 'f32' && n % 2 === 1) {
        // a whole word per thread: the padding half of the last word is written 0
        const bytes = new Uint16Array(await gpu.readBytes(t.buffer, t.offset, t.byteLength));
        assert.equal(bytes[n], 0, `padding half of ${t}`);
      }
      t.dispose();
    }
  });
}

test('init: two chunks with offsets give the values of one tensor, bit for bit', async () => {
  const gpu = await testGpu();
  for (const dtype of ['f32', 'bf16'] as const) {
    const n = 1001;
    const split = 501; // the second chunk starts at an odd stream element (mid-word for bf16)
    const base = 2 ** 33 + 5;
    const whole = await gpu.tensor([n], dtype, 'whole');
    const a = await gpu.tensor([split], dtype, 'a');
    const b = await gpu.tensor([n - split], dtype, 'b');
    for (const fill of [
      (t: Tensor, offset: number) => fillNormal(gpu, t, { std: 1, seed: 42, offset }),
      (t: Tensor, offset: number) => fillUniform(gpu, t, { lo: -1, hi: 1, seed: 42, offset }),
    ]) {
      await fill(whole, base);
      await fill(a, base);
      await fill(b, base + split);
      const w = await gpu.read(whole);
      assert.deepEqual([...(await gpu.read(a)), ...(await gpu.read(b))], [...w], `chunks of ${whole}`);
    }
    for (const t of [whole, a, b]) t.dispose();
  }
});

test('init: rowStride gives a block of a wider table\'s columns, bit for bit, and matches the reference', async () => {
  const gpu = await testGpu();
  for (const dtype of ['f32', 'bf16'] as const) {
    // a table of 5 rows of 8 split into columns [0, 3) and [3, 8), at an offset past 2^32
    const base = 2 ** 33 + 5;
    const whole = await gpu.tensor([5, 8], dtype, 'whole');
    const a = await gpu.tensor([5, 3], dtype, 'a');
    const b = await gpu.tensor([5, 5], dtype, 'b');
    for (const fill of [
      (t: Tensor, offset: number, rowStride?: number) => fillNormal(gpu, t, { std: 1, seed: 7, offset, ...(rowStride ? { rowStride } : {}) }),
      (t: Tensor, offset: number, rowStride?: number) => fillUniform(gpu, t, { lo: -1, hi: 1, seed: 7, offset, ...(rowStride ? { rowStride } : {}) }),
    ]) {
      await fill(whole, base);
      await fill(a, base, 8);
      await fill(b, base + 3, 8);
      const [w, x, y] = [await gpu.read(whole), await gpu.read(a), await gpu.read(b)];
      const joined = Array.from({ length: 5 }, (_, r) => [...x.slice(3 * r, 3 * r + 3), ...y.slice(5 * r, 5 * r + 5)]).flat();
      assert.deepEqual(joined, [...w], `columns of ${whole}`);
    }
    // rows further apart than 2^32 stream elements (the high word of row * rowStride): against the reference
    const t = await gpu.tensor([7, 3], dtype, 'strided');
    const o = { std: 0.5, seed: 3, offset: 11 };
    const stride = 2 ** 31 + 5;
    await fillNormal(gpu, t, { ...o, rowStride: stride });
    assertElementwise(`strided ${t}`, await gpu.read(t), ref.fillNormal(21, { ...o, rows: { cols: 3, stride } }), dtype, o.std);
    for (const x of [whole, a, b, t]) x.dispose();
  }
});

test('init: offsets past 2^32 (the carry into the high word) up to 2^53', async () => {
  const gpu = await testGpu();
  const t = await gpu.tensor([64], 'f32', 'w');
  for (const offset of [2 ** 32 - 37, 2 ** 32, 2 ** 40 + 12345, 2 ** 53 - 64]) {
    const o = { std: 1, seed: 7, offset };
    await fillNormal(gpu, t, o);
    assertElementwise(`normal at offset ${offset}`, await gpu.read(t), ref.fillNormal(64, o), 'f32', 1);
    const uo = { lo: 0, hi: 1, seed: 7, offset };
    await fillUniform(gpu, t, uo);
    assertElementwise(`uniform at offset ${offset}`, await gpu.read(t), ref.fillUniform(64, uo), 'f32', 1);
  }
  // the high word matters: offset 2^32 is not offset 0
  await fillUniform(gpu, t, { lo: 0, hi: 1, seed: 7, offset: 2 ** 32 });
  const hi = await gpu.read(t);
  await fillUniform(gpu, t, { lo: 0, hi: 1, seed: 7 });
  assert.notDeepEqual([...hi], [...(await gpu.read(t))]);
  t.dispose();
});

function moments(x: ArrayLike<number>): { mean: number; std: number; min: number; max: number } {
  let s = 0;
  let min = Infinity;
  let max = -Infinity;
  for (let i = 0; i < x.length; i++) {
    s += x[i]!;
    min = Math.min(min, x[i]!);
    max = Math.max(max, x[i]!);
  }
  const mean = s / x.length;
  let v = 0;
  for (let i = 0; i < x.length; i++) v += (x[i]! - mean) ** 2;
  return { mean, std: Math.sqrt(v / x.length), min, max };
}

test('init: statistics of 1e5 elements; different seeds, different streams', async () => {
  const gpu = await testGpu();
  const n = 100_000;
  const t = await gpu.tensor([n], 'f32', 'w');
  await fillNormal(gpu, t, { std: 1, seed: 1 });
  const z1 = await gpu.read(t);
  const m = moments(z1);
  assert.ok(Math.abs(m.mean) < 0.02 && Math.abs(m.std - 1) < 0.02, `normal mean ${m.mean} std ${m.std}`);
  // tails: about 4.6% beyond 2 sigma, 0.27% beyond 3
  const beyond = (k: number) => z1.filter((x) => Math.abs(x) > k).length / n;
  assert.ok(Math.abs(beyond(2) - 0.0455) < 0.004 && Math.abs(beyond(3) - 0.0027) < 0.001, `tails ${beyond(2)} ${beyond(3)}`);
  await fillNormal(gpu, t, { std: 1, seed: 2 });
  const z2 = await gpu.read(t);
  let dot = 0;
  let same = 0;
  for (let i = 0; i < n; i++) {
    dot += z1[i]! * z2[i]!;
    if (z1[i] === z2[i]) same++;
  }
  assert.ok(same < 10 && Math.abs(dot / n) < 0.02, `seeds 1 and 2: ${same} equal values, correlation ${dot / n}`);
  await fillUniform(gpu, t, { lo: -3, hi: 5, seed: 1 });
  const u = moments(await gpu.read(t));
  assert.ok(u.min >= -3 && u.max < 5, `uniform range [${u.min}, ${u.max}]`);
  assert.ok(u.min < -2.99 && u.max > 4.99, `uniform range [${u.min}, ${u.max}] should fill [lo, hi)`);
  assert.ok(Math.abs(u.mean - 1) < 0.05 && Math.abs(u.std - 8 / Math.sqrt(12)) < 0.03, `uniform mean ${u.mean} std ${u.std}`);
  t.dispose();
  // bounds that f16/bf16 cannot represent: rounding must not leave [lo, hi)
  for (const dtype of ['f16', 'bf16'] as const) {
    const s = await gpu.tensor([4096], dtype, 's');
    for (const [lo, hi] of [[0.1, 0.2], [-0.3, -0.1], [1, 1.01]] as const) {
      await fillUniform(gpu, s, { lo, hi, seed: 5 });
      const r = moments(await gpu.read(s));
      assert.ok(r.min >= lo && r.max < hi, `${s} uniform in [${lo}, ${hi}): got [${r.min}, ${r.max}]`);
    }
    s.dispose();
  }
});

test('init: bad input throws', async () => {
  const gpu = await testGpu();
  const t = await gpu.tensor([8], 'f32', 'w');
  const ids = await gpu.tensor([8], 'u32', 'ids');
  const h = await gpu.tensor([8], 'bf16', 'h');
  const is = (re: RegExp, cls: typeof EngramError = EngramError) => (e: Error) => e instanceof cls && re.test(e.message);
  await assert.rejects(fillNormal(gpu, t, { std: -1, seed: 0 }), is(/fillNormal: std must be >= 0, got -1 \(for w\[8\]:f32\)/));
  await assert.rejects(fillNormal(gpu, t, { std: NaN, seed: 0 }), is(/fillNormal: std must be >= 0, got NaN/));
  await assert.rejects(fillNormal(gpu, t, { std: 1, mean: 1e39, seed: 0 }), is(/fillNormal: mean must be finite in f32/));
  await assert.rejects(fillUniform(gpu, t, { lo: 1, hi: 1, seed: 0 }), is(/fillUniform: need finite lo < hi, got lo = 1, hi = 1/));
  await assert.rejects(fillUniform(gpu, t, { lo: 2, hi: 1, seed: 0 }), is(/fillUniform: need finite lo < hi/));
  await assert.rejects(fillUniform(gpu, t, { lo: -3e38, hi: 3e38, seed: 0 }), is(/fillUniform: hi - lo must be finite in f32/));
  await assert.rejects(fillUniform(gpu, h, { lo: 1.001, hi: 1.002, seed: 0 }), is(/fillUniform: no bf16 value lies in \[1.001, 1.002\) \(for h\[8\]:bf16\)/));
  await assert.rejects(fillNormal(gpu, ids, { std: 1, seed: 0 }), is(/fillNormal: t ids\[8\]:u32 must be one of f32\/f16\/bf16/, ShapeError));
  await assert.rejects(fillUniform(gpu, ids, { lo: 0, hi: 1, seed: 0 }), is(/fillUniform: t ids\[8\]:u32 must be one of/, ShapeError));
  await assert.rejects(fillNormal(gpu, t, { std: 1, seed: -1 }), is(/fillNormal: seed must be an integer in \[0, 2\^32\), got -1/));
  await assert.rejects(fillNormal(gpu, t, { std: 1, seed: 2 ** 32 }), is(/seed must be an integer/));
  await assert.rejects(fillNormal(gpu, t, { std: 1, seed: 1.5 }), is(/seed must be an integer/));
  await assert.rejects(fillNormal(gpu, t, { std: 1, seed: 0, offset: -1 }), is(/fillNormal: offset must be an integer >= 0 with offset \+ 8 stream elements <= 2\^53, got -1/));
  await assert.rejects(fillNormal(gpu, t, { std: 1, seed: 0, rowStride: t.shape[t.shape.length - 1]! - 1 }), is(/fillNormal: rowStride must be an integer in \[/));
  await assert.rejects(fillUniform(gpu, t, { lo: 0, hi: 1, seed: 0, rowStride: 2 ** 32 }), is(/fillUniform: rowStride must be/));
  await assert.rejects(fillUniform(gpu, t, { lo: 0, hi: 1, seed: 0, offset: 2 ** 53 - 7 }), is(/fillUniform: offset must be/));
  for (const x of [t, ids, h]) x.dispose();
});
