// parameter initialisation on the GPU from counter-based random streams.
//
//   fillNormal   t[i] = mean + std z(seed, offset + i)        (=, overwrites t, any shape)
//   fillUniform  t[i] = lo + (hi - lo) u(seed, offset + i)    (=, in [lo, hi))
// rowStride (optional): t's elements as rows of its last dimension's width W, row r's element c
// taking stream element offset + r rowStride + c instead: a block of W columns of a table whose
// rows are rowStride wide (a value table sharded by columns gets the columns of the whole one).
//
// the stream: element c (a 64-bit counter; offset + i, offset < 2^53 from the host, passed as
// two u32 words lo/hi, the carry of lo + i added into hi) of stream `seed` (a u32) is
//   (r0, r1) = philox2x32_10(counter = (c mod 2^32, c div 2^32), key = seed)
// Philox2x32-10 (Random123; Salmon et al., SC'11): ten rounds of
//   (L, R, k) -> (mulhi(M, L) ^ R ^ k,  M * L mod 2^32,  k + W mod 2^32)
// from (L, R, k) = (counter lo, counter hi, seed), with M = 0xd256d193, W = 0x9e3779b9; the
// output is the final (L, R) = (r0, r1). WGSL has no 32x32 -> 64 multiply: mulhi is assembled
// from 16-bit partial products, exactly (reference/init.ts mulhi32 does the same in TS).
//   normal   u1 = (r0 + 0.5) / 2^32 in (0, 1): never 0, so ln u1 is finite (|z| <= 6.8)
//            s  = ((r1 >> 8) - 2^23) / 2^23 in [-1, 1): the angle pi s stays in [-pi, pi),
//                 the range where WGSL bounds cos' error
//            z  = sqrt(-2 ln u1) cos(pi s)        (Box-Muller, cosine branch; sin is dropped)
//   uniform  u  = (r0 >> 8) / 2^24 in [0, 1)      (24 bits: exact in f32)
// every element uses its own counter, so a value depends only on (seed, offset + i): not on
// the dtype, the shape, the thread mapping, or how a table is split into chunks (a chunk
// starting at element e of the table passes offset e). the same seed with fillNormal and
// fillUniform reuses r0: give every tensor its own seed (or disjoint offsets).
//
// thread mapping: one storage word per thread: an f32 element, or two f16/bf16 elements
// written together with st2 (the padding half of an odd-sized packed tensor's last word is
// written 0). a 2-D grid covers more than 65535 workgroups. no reductions, no atomics.
// numerics: the integer hash is exact and identical on every device. the floating-point part
// is f32: u1 and s from the words (the top 24 bits exactly, the rest rounded once); -ln u1 is
// log() except near u1 = 1 (w = 1 - u1 < 1/16, w formed exactly the same way from ~r0) where
// it is the series w + w^2/2 + ... + w^6/6 (error < 1e-8 relative), since log()'s absolute
// error near 1 would dominate the small radius there; then sqrt and cos. values agree with
// the float64 reference (reference/init.ts) to ~1e-6 relative to max(|value|, std) on a
// conforming device, and are rounded once into f16/bf16. uniform values are clamped to
// [lo', hi'], the smallest storage value >= lo and the largest < hi (computed on the host),
// so neither f32 arithmetic nor rounding into the dtype can leave [lo, hi).

import type { Gpu } from '../../gpu/device.ts';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, type DType } from '../../gpu/dtype.ts';
import { EngramError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { floatDtype, grid1d, header, launch, type ParamSpec } from '../kernel.ts';

const WG = 256;

const PARAMS: ParamSpec = [
  ['n', 'u32'], // elements
  ['words', 'u32'], // storage words = threads with work
  ['row', 'u32'], // threads per grid row
  ['off_lo', 'u32'], // the stream index of t[0], low and high words
  ['off_hi', 'u32'],
  ['seed', 'u32'],
  ['a', 'f32'], // normal: mean; uniform: lo
  ['b', 'f32'], // normal: std; uniform: hi - lo
  ['lo_c', 'f32'], // uniform: the clamp [lo', hi'] (storage values)
  ['hi_c', 'f32'],
  ['cols', 'u32'], // elements per row (rowStride: the last dimension; else 1)
  ['stride', 'u32'], // stream elements per row (rowStride; else 1)
];

type Dist = 'normal' | 'uniform';

const STREAM = /* wgsl */ `
// the high word of 0xd256d193 * a, from 16-bit partial products (each below 2^32)
fn mulhi_m(a: u32) -> u32 {
  let a0 = a & 0xffffu;
  let a1 = a >> 16u;
  let p01 = a0 * 0xd256u;
  let p10 = a1 * 0xd193u;
  let mid = ((a0 * 0xd193u) >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  return a1 * 0xd256u + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
}

// Philox2x32-10: counter (l, r), key k
fn philox(c_lo: u32, c_hi: u32, key: u32) -> vec2<u32> {
  var l = c_lo;
  var r = c_hi;
  var k = key;
  for (var round = 0u; round < 10u; round++) {
    let hi = mulhi_m(l);
    let lo = l * 0xd256d193u;
    l = hi ^ r ^ k;
    r = lo;
    k += 0x9e3779b9u;
  }
  return vec2<u32>(l, r);
}

// (x + 0.5) / 2^32 in f32, never 0: the top 24 bits exactly, the rest added once
fn open01(x: u32) -> f32 {
  return f32(x >> 8u) * 0x1p-24f + (f32(x & 0xffu) + 0.5) * 0x1p-32f;
}

fn std_normal(r: vec2<u32>) -> f32 {
  let w = open01(~r.x); // 1 - u1
  let series = w * (1.0 + w * (0.5 + w * (1.0 / 3.0 + w * (0.25 + w * (0.2 + w * (1.0 / 6.0))))));
  let e = select(-log(open01(r.x)), series, w < 0.0625); // -ln u1
  let s = f32(i32(r.y >> 8u) - 8388608) * 0x1p-23f;
  return sqrt(2.0 * e) * cos(3.14159265358979 * s);
}

fn unit_uniform(r: vec2<u32>) -> f32 {
  return f32(r.x >> 8u) * 0x1p-24f;
}

// the high word of a * b, from 16-bit partial products
fn mulhi(a: u32, b: u32) -> u32 {
  let a0 = a & 0xffffu;
  let a1 = a >> 16u;
  let b0 = b & 0xffffu;
  let b1 = b >> 16u;
  let p01 = a0 * b1;
  let p10 = a1 * b0;
  let mid = ((a0 * b0) >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  return a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
}

// element i of the tensor: stream element (off_hi, off_lo) + (i / cols) stride + i % cols, in 64 bits
fn rand_words(i: u32) -> vec2<u32> {
  let r = i / p.cols;
  let c = i % p.cols;
  let m = r * p.stride;
  let a = m + c;
  let a_hi = mulhi(r, p.stride) + select(0u, 1u, a < c);
  let lo = p.off_lo + a;
  return philox(lo, p.off_hi + a_hi + select(0u, 1u, lo < a), p.seed);
}
`;

const VALUE: Record<Dist, string> = {
  normal: 'p.a + p.b * std_normal(rand_words(i))',
  uniform: 'clamp(p.a + p.b * unit_uniform(rand_words(i)), p.lo_c, p.hi_c)',
};

function initWgsl(dtype: DType, dist: Dist): string {
  const body =
    dtype === 'f32'
      ? 'st_out(w, value(w));'
      : /* wgsl */ `let i = 2u * w;
  var b = 0.0; // the padding half of an odd tail
  if (i + 1u < p.n) { b = value(i + 1u); }
  st2_out(i, value(i), b);`;
  return /* wgsl */ `
${header([{ name: 'out', type: dtype, access: 'read_write' }], PARAMS)}
${STREAM}
fn value(i: u32) -> f32 { return ${VALUE[dist]}; }

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let w = g.x + g.y * p.row;
  if (w >= p.words) { return; }
  ${body}
}`;
}

// ---------------------------------------------------------------- host side

function checkSeedOffset(op: string, t: Tensor, seed: number, offset: number, rowStride?: number): void {
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) {
    throw new EngramError(`${op}: seed must be an integer in [0, 2^32), got ${seed} (for ${t})`);
  }
  const cols = t.shape[t.shape.length - 1] ?? 1;
  if (rowStride !== undefined && !(Number.isInteger(rowStride) && rowStride >= cols && rowStride < 2 ** 32 && t.shape.length >= 1)) {
    throw new EngramError(`${op}: rowStride must be an integer in [${cols}, 2^32) (at least the last dimension), got ${rowStride} (for ${t})`);
  }
  // the stream elements used: offset + span, span = size, or (rows - 1) rowStride + cols
  const span = rowStride === undefined || t.size === 0 ? t.size : (t.size / cols - 1) * rowStride + cols;
  // subtracting keeps the comparison exact: offset + span could round
  if (!Number.isInteger(offset) || offset < 0 || offset > 2 ** 53 - span) {
    throw new EngramError(`${op}: offset must be an integer >= 0 with offset + ${span} stream elements <= 2^53, got ${offset} (for ${t})`);
  }
}

/** x as an f32 uniform; an error naming the option unless it is finite in f32 */
function f32Finite(op: string, name: string, x: number, t: Tensor): number {
  if (!Number.isFinite(Math.fround(x))) throw new EngramError(`${op}: ${name} must be finite in f32, got ${x} (for ${t})`);
  return x;
}

const f32Box = new Float32Array(1);
const u32Box = new Uint32Array(f32Box.buffer);
const SIGN: Record<DType, number> = { f32: 0x80000000, f16: 0x8000, bf16: 0x8000 };
const toBits: Record<DType, (x: number) => number> = {
  f32: (x) => ((f32Box[0] = x), u32Box[0]!),
  f16: f32ToF16Bits,
  bf16: f32ToBf16Bits,
};
const fromBits: Record<DType, (b: number) => number> = {
  f32: (b) => ((u32Box[0] = b), f32Box[0]!),
  f16: f16BitsToF32,
  bf16: bf16BitsToF32,
};

/** storage values of dtype as consecutive integers (sign-magnitude bits -> two's complement order) */
const ordinal = (x: number, d: DType): number => {
  const b = toBits[d](x);
  return b >= SIGN[d] ? -(b - SIGN[d]) : b;
};
const fromOrdinal = (o: number, d: DType): number => fromBits[d](o < 0 ? SIGN[d] - o : o);

/** the largest value of dtype d below hi (finite: an infinity steps down to the largest finite) */
function largestBelow(hi: number, d: DType): number {
  let o = ordinal(hi, d);
  while (fromOrdinal(o, d) >= hi) o--;
  while (fromOrdinal(o + 1, d) < hi) o++;
  return fromOrdinal(o, d);
}

/** the smallest value of dtype d at or above lo */
function smallestAtLeast(lo: number, d: DType): number {
  let o = ordinal(lo, d);
  while (fromOrdinal(o, d) < lo) o++;
  while (fromOrdinal(o - 1, d) >= lo) o--;
  return fromOrdinal(o, d);
}

async function fill(gpu: Gpu, t: Tensor, dtype: DType, dist: Dist, seed: number, offset: number, rowStride: number | undefined, v: { a: number; b: number; lo_c: number; hi_c: number }): Promise<void> {
  const n = t.size;
  if (n === 0) return;
  const cols = rowStride === undefined ? 1 : t.shape[t.shape.length - 1]!;
  const words = dtype === 'f32' ? n : Math.ceil(n / 2);
  const [x, y] = grid1d(gpu, Math.ceil(words / WG));
  await launch(gpu, {
    name: `init_${dist}_${dtype}`,
    wgsl: initWgsl(dtype, dist),
    storage: [t],
    params: PARAMS,
    values: { n, words, row: x * WG, off_lo: offset % 2 ** 32, off_hi: Math.floor(offset / 2 ** 32), seed, cols, stride: rowStride ?? 1, ...v },
    workgroups: [x, y],
  });
}

/**
 * t[i] = mean + std * N(0,1) from a counter-based generator: element i of the stream `seed`,
 * independent of the tensor's dtype and of how the stream is split (offset: the element index
 * of t[0] in the stream, so a table split into chunks gets the same values as one tensor would;
 * rowStride: t's rows of its last dimension's width start rowStride stream elements apart, so a
 * block of a wider table's columns gets that table's values)
 */
export async function fillNormal(gpu: Gpu, t: Tensor, o: { std: number; mean?: number; seed: number; offset?: number; rowStride?: number }): Promise<void> {
  const op = 'fillNormal';
  const dtype = floatDtype(op, 't', t);
  const { std, mean = 0, seed, offset = 0, rowStride } = o;
  if (!(std >= 0)) throw new EngramError(`${op}: std must be >= 0, got ${std} (for ${t})`);
  f32Finite(op, 'std', std, t);
  f32Finite(op, 'mean', mean, t);
  checkSeedOffset(op, t, seed, offset, rowStride);
  await fill(gpu, t, dtype, 'normal', seed, offset, rowStride, { a: mean, b: std, lo_c: 0, hi_c: 0 });
}

/** t[i] = uniform in [lo, hi) from the same kind of stream */
export async function fillUniform(gpu: Gpu, t: Tensor, o: { lo: number; hi: number; seed: number; offset?: number; rowStride?: number }): Promise<void> {
  const op = 'fillUniform';
  const dtype = floatDtype(op, 't', t);
  const { lo, hi, seed, offset = 0, rowStride } = o;
  if (!(Number.isFinite(lo) && Number.isFinite(hi) && lo < hi)) {
    throw new EngramError(`${op}: need finite lo < hi, got lo = ${lo}, hi = ${hi} (for ${t})`);
  }
  f32Finite(op, 'lo', lo, t);
  f32Finite(op, 'hi', hi, t);
  f32Finite(op, 'hi - lo', hi - lo, t);
  checkSeedOffset(op, t, seed, offset, rowStride);
  const lo_c = smallestAtLeast(lo, dtype);
  const hi_c = largestBelow(hi, dtype);
  if (lo_c > hi_c) throw new EngramError(`${op}: no ${dtype} value lies in [${lo}, ${hi}) (for ${t}); widen the range or use f32`);
  await fill(gpu, t, dtype, 'uniform', seed, offset, rowStride, { a: lo, b: hi - lo, lo_c, hi_c });
}
