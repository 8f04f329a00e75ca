// parameter initialisation reference in float64: the random streams of kernels/init/init.ts.
//
// element c (a 64-bit counter, c = offset + i) of the stream `seed` (a u32):
//   (r0, r1) = philox2x32_10(counter = (c mod 2^32, floor(c / 2^32)), key = seed)
//   normal   z = sqrt(-2 ln u1) cos(pi s),  u1 = (r0 + 0.5) / 2^32 in (0, 1),
//              s = ((r1 >> 8) - 2^23) / 2^23 in [-1, 1);      value = mean + std z
//   uniform  u = (r0 >> 8) / 2^24 in [0, 1);                   value = lo + (hi - lo) u
// philox2x32_10 is Random123's Philox2x32 with 10 rounds (Salmon et al., SC'11), checked against
// its known-answer vectors in init.test.ts. the kernel computes the same integers exactly; only
// its floating-point steps (f32 log, cos, sqrt) differ from these float64 values.

const PHILOX_M = 0xd256d193;
const PHILOX_W = 0x9e3779b9;

/** the high 32 bits of the 64-bit product a * b (u32s), from 16-bit halves as the kernel does */
export function mulhi32(a: number, b: number): number {
  const a0 = a & 0xffff;
  const a1 = a >>> 16;
  const b0 = b & 0xffff;
  const b1 = b >>> 16;
  // every partial product is below 2^32: exact in float64
  const p01 = a0 * b1;
  const p10 = a1 * b0;
  const mid = ((a0 * b0) >>> 16) + (p01 & 0xffff) + (p10 & 0xffff);
  return (a1 * b1 + (p01 >>> 16) + (p10 >>> 16) + (mid >>> 16)) >>> 0;
}

/** Philox2x32-10: counter (ctr0, ctr1), key -> two u32s */
export function philox2x32(ctr0: number, ctr1: number, key: number): [number, number] {
  let l = ctr0 >>> 0;
  let r = ctr1 >>> 0;
  let k = key >>> 0;
  for (let round = 0; round < 10; round++) {
    const hi = mulhi32(PHILOX_M, l);
    const lo = Math.imul(PHILOX_M, l) >>> 0;
    l = (hi ^ r ^ k) >>> 0;
    r = lo;
    k = (k + PHILOX_W) >>> 0;
  }
  return [l, r];
}

/** the two random words of element c (an integer below 2^53) of stream `seed` */
export function randomWords(seed: number, c: number): [number, number] {
  return philox2x32(c % 2 ** 32, Math.floor(c / 2 ** 32), seed);
}

/** a standard normal from the two words of an element (Box-Muller, cosine branch) */
export function normalFromWords(r0: number, r1: number): number {
  const u1 = (r0 + 0.5) / 2 ** 32;
  const s = ((r1 >>> 8) - 2 ** 23) / 2 ** 23;
  return Math.sqrt(-2 * Math.log(u1)) * Math.cos(Math.PI * s);
}

/** a uniform in [0, 1) from the first word of an element (24 bits) */
export function uniformFromWord(r0: number): number {
  return (r0 >>> 8) / 2 ** 24;
}

/** the stream element of element i: offset + i, or with rows of `cols` (rowStride given) offset + (i div cols) rowStride + i mod cols */
function element(i: number, offset: number, rowStride?: { cols: number; stride: number }): number {
  return rowStride ? offset + Math.floor(i / rowStride.cols) * rowStride.stride + (i % rowStride.cols) : offset + i;
}

/** elements offset .. offset + n - 1 of the normal stream `seed` (rows: see element): mean + std z */
export function fillNormal(n: number, o: { std: number; mean?: number; seed: number; offset?: number; rows?: { cols: number; stride: number } }): Float64Array {
  const { std, mean = 0, seed, offset = 0 } = o;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const [r0, r1] = randomWords(seed, element(i, offset, o.rows));
    out[i] = mean + std * normalFromWords(r0, r1);
  }
  return out;
}

/** elements offset .. offset + n - 1 of the uniform stream `seed` (rows: see element): lo + (hi - lo) u */
export function fillUniform(n: number, o: { lo: number; hi: number; seed: number; offset?: number; rows?: { cols: number; stride: number } }): Float64Array {
  const { lo, hi, seed, offset = 0 } = o;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * uniformFromWord(randomWords(seed, element(i, offset, o.rows))[0]);
  return out;
}
