// storage dtypes and their host-side encode/decode.
//
// f32 is stored as array<f32>. f16 and bf16 are stored two to a u32 word (element 2i in the low
// half, 2i+1 in the high half), which works on every adapter without the shader-f16 feature.
// consequence: a kernel writes packed tensors a word (two elements) at a time, so the innermost
// dimension of an f16/bf16 tensor must be even (see expectPackable). u32/i32 hold ids and indices.

/** floating-point storage dtypes */
export type DType = 'f32' | 'f16' | 'bf16';
export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16'];
/** integer storage (token ids, targets, indices) */
export type IndexDType = 'u32' | 'i32';
/** every dtype a tensor can have */
export type TensorDType = DType | IndexDType;

export const bytesPerElement = (dtype: TensorDType): number => (dtype === 'f16' || dtype === 'bf16' ? 2 : 4);
export const isPacked = (dtype: TensorDType): boolean => dtype === 'f16' || dtype === 'bf16';

/** Bytes a tensor of `n` elements takes, rounded up to whole 4-byte words. */
export function byteSize(n: number, dtype: TensorDType): number {
  return Math.ceil((n * bytesPerElement(dtype)) / 4) * 4;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** f32 -> bf16 bits, round to nearest even; NaN stays NaN. */
export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  if ((b & 0x7fffffff) > 0x7f800000) return (b >>> 16) | 0x40;
  return (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
}

export function bf16BitsToF32(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0]!;
}

/** f32 -> IEEE half bits, round to nearest even, overflow to inf. */
export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  const b = u32[0]!;
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
  return sign | h;
}

export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Encodes numbers into the storage bytes of `dtype` (length padded to whole words). */
export function encode(values: ArrayLike<number>, dtype: TensorDType): Uint8Array<ArrayBuffer> {
  const n = values.length;
  if (dtype === 'f32') return new Uint8Array(Float32Array.from(values).buffer);
  if (dtype === 'u32') return new Uint8Array(Uint32Array.from(values).buffer);
  if (dtype === 'i32') return new Uint8Array(Int32Array.from(values).buffer);
  const out = new Uint16Array(Math.ceil(n / 2) * 2);
  const toBits = dtype === 'f16' ? f32ToF16Bits : f32ToBf16Bits;
  for (let i = 0; i < n; i++) out[i] = toBits(values[i]!);
  return new Uint8Array(out.buffer);
}

/** Decodes `n` elements of `dtype` from storage bytes (u32/i32 as exact integers). */
export function decode(bytes: ArrayBuffer, dtype: TensorDType, n: number): Float32Array | Uint32Array | Int32Array {
  if (dtype === 'f32') return new Float32Array(bytes, 0, n).slice();
  if (dtype === 'u32') return new Uint32Array(bytes, 0, n).slice();
  if (dtype === 'i32') return new Int32Array(bytes, 0, n).slice();
  const h = new Uint16Array(bytes, 0, n);
  const out = new Float32Array(n);
  const fromBits = dtype === 'f16' ? f16BitsToF32 : bf16BitsToF32;
  for (let i = 0; i < n; i++) out[i] = fromBits(h[i]!);
  return out;
}

/** Rounds values through `dtype` storage (what a GPU kernel sees after upload). */
export function roundTo(values: ArrayLike<number>, dtype: TensorDType): Float64Array {
  return Float64Array.from(decode(encode(values, dtype).buffer, dtype, values.length));
}
