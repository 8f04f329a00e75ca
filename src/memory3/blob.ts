// the sparse KV memory of one reference (Memory³ explicit memory) as bytes: what a memory bank stores per
// reference and what inference loads back (spec: shared/specs/memory3.md §1).
//
// a memory holds, for each of L memory layers and each of Hkv KV heads, the keys and values of the `tokens`
// (T, default 8) reference tokens chosen for that (layer, head), each a headDim (D) vector. keys are stored
// AFTER RoPE, rotated at the token's position inside the encoded reference, so relative positions survive
// when the memory is placed in a context (§2, parallel position encoding); the positions themselves are
// stored too, for inspection and for any later re-rotation.
//
// in memory (SparseMemory): k and v are f32, each (L, Hkv, T, D) row-major; positions u32 (L, Hkv, T).
//
// bytes (little-endian; engram assumes a little-endian host, like WebGPU and io/safetensors.ts):
//   offset size
//    0     4    magic 'EMK1'
//    4     2    u16 format version (1)
//    6     1    u8 dtype of K/V: 1 = f32, 2 = bf16, 3 = pq (product-quantised codes: below)
//    7     1    u8 bytes per position: 2 (u16) or 4 (u32); the encoder picks u16 whenever every position
//               fits (always, for references of <= 65536 tokens)
//    8     2    u16 L (memory layers)
//   10     2    u16 Hkv (KV heads)
//   12     2    u16 T (tokens per head)
//   14     2    u16 D (head dim)
//   16     4    u32 payload bytes (everything after the 24-byte header)
//   20     4    u32 CRC-32 (IEEE, the zlib one) of bytes [0, 20) followed by the payload [24, end): covers
//               the header too, so a flipped dimension is caught as well as a flipped value
//   24          K/V, (L, 2, Hkv, T, D) in dtype: per layer its keys then its values, so one layer's K and V
//               are one contiguous read
//   ...         positions, (L, Hkv, T) u16 or u32
// K/V start at 24 and (L·2·Hkv·T·D elements) always take a multiple of 4 bytes, so both the values and
// the positions are naturally aligned when the blob itself is.
// pq (memory3/quantize.ts, pq.ts): instead of the K/V values, a u32 M (code bytes per vector), then the
// codes, (L, 2, Hkv, T, M) u8 (per layer its keys' codes then its values'), zero-padded to a multiple of 4
// bytes, then the positions. decoding needs the codebooks the codes index (the bank's: one per memory
// layer and K or V); decodeMemory without them is an error.
//
// size: 24 + 2·L·Hkv·T·D·e + L·Hkv·T·p bytes, e = 2 (bf16) or 4 (f32), p = 2 or 4 (memoryBytes()); pq:
// 24 + 4 + ceil4(2·L·Hkv·T·M) + L·Hkv·T·p.
// the paper's model (L 22, Hkv 8, T 8, D 80, bf16, u16 positions): 24 + 450,560 + 2,816 = 453,400 B.
//
// why bf16 by default: it is what the paper stores (§3.1), it halves the bank (the bank, not the model, is
// what outgrows RAM and disk), and attention over 40 extra keys per head does not need more than bf16's 8
// mantissa bits (the model computes in f32 after loading; bf16 keeps f32's exponent range, so no key or
// value overflows as it could in f16). f32 stays available for exact round trips and debugging.
// encoding rounds to nearest even (gpu/dtype.ts f32ToBf16Bits: NaN stays NaN, overflow goes to ±inf).
//
// a damaged blob (wrong magic, unknown version/dtype, truncated, trailing bytes, a size that does not fit
// its dims, a checksum mismatch) is a MemoryBlobError naming the blob and what is wrong; nothing is read
// out of bounds and nothing is silently misread.

import { EngramError } from '../gpu/errors.ts';
import { crc32 } from '../io/crc32.ts';
import { pqDecode, type PqCodebook } from './pq.ts';

export type MemoryDType = 'bf16' | 'f32' | 'pq';

/** the sparse K/V memory of one reference, decoded (k/v always f32, whatever the storage dtype) */
export interface SparseMemory {
  /** L, memory layers */
  layers: number;
  /** Hkv, KV heads per layer */
  kvHeads: number;
  /** T, selected tokens per (layer, KV head) */
  tokens: number;
  /** D, head dim */
  headDim: number;
  /** storage dtype of k/v in the encoded blob */
  dtype: MemoryDType;
  /** keys after RoPE, (L, Hkv, T, D) */
  k: Float32Array;
  /** values, (L, Hkv, T, D) */
  v: Float32Array;
  /** position of each selected token inside the encoded reference, (L, Hkv, T) */
  positions: Uint32Array;
  /** dtype 'pq': the codes, (L, 2, Hkv, T, subvectors) u8, per layer the keys' then the values' (k/v are their decoding) */
  codes?: Uint8Array;
  /** dtype 'pq': code bytes per vector */
  subvectors?: number;
}

/** the codebooks of a pq memory: 2L of them, [layer 0 K, layer 0 V, layer 1 K, ...], each of dim headDim */
export interface MemoryCodebooks {
  books: PqCodebook[];
}

/** the dimensions of a memory, as its header records them */
export interface MemoryShape {
  layers: number;
  kvHeads: number;
  tokens: number;
  headDim: number;
  dtype: MemoryDType;
  /** dtype 'pq': code bytes per vector */
  subvectors?: number;
}

/** a header read from a blob whose size and checksum were verified */
export interface MemoryHeader extends MemoryShape {
  /** bytes per stored position, 2 (u16) or 4 (u32) */
  positionBytes: 2 | 4;
  /** total bytes of the blob */
  bytes: number;
}

/** A memory blob (or a memory handed to the encoder) is malformed; says which and why. */
export class MemoryBlobError extends EngramError {}

export const MEMORY_MAGIC = 'EMK1';
export const MEMORY_VERSION = 1;
export const MEMORY_HEADER_BYTES = 24;
const DTYPE_CODE: Readonly<Record<MemoryDType, number>> = { f32: 1, bf16: 2, pq: 3 };
const CODE_DTYPE: Readonly<Record<number, MemoryDType>> = { 1: 'f32', 2: 'bf16', 3: 'pq' };
const MAX_DIM = 0xffff;

const elementBytes = (dtype: 'bf16' | 'f32'): number => (dtype === 'bf16' ? 2 : 4);

/** Bytes of the K/V section of a memory of `shape` (pq: the M word and the padded codes). */
function kvBytes(shape: MemoryShape): number {
  const { layers: L, kvHeads: H, tokens: T, headDim: D } = shape;
  if (shape.dtype !== 'pq') return 2 * L * H * T * D * elementBytes(shape.dtype);
  return 4 + Math.ceil((2 * L * H * T * (shape.subvectors ?? 0)) / 4) * 4;
}

/** Bytes of an encoded memory of `shape` (positions as u16 unless `positionBytes` says 4; pq needs `subvectors`). */
export function memoryBytes(shape: MemoryShape & { positionBytes?: 2 | 4 }): number {
  const { layers: L, kvHeads: H, tokens: T } = shape;
  return MEMORY_HEADER_BYTES + kvBytes(shape) + L * H * T * (shape.positionBytes ?? 2);
}

/** the checksum a blob stores: header bytes [0, 20), then the payload */
const blobCrc = (b: Uint8Array): number => crc32(b.subarray(MEMORY_HEADER_BYTES), crc32(b.subarray(0, 20)));

// ---- encode ----

function expectShape(m: SparseMemory, fail: (what: string) => MemoryBlobError): void {
  for (const key of ['layers', 'kvHeads', 'tokens', 'headDim'] as const) {
    const d = m[key];
    if (!Number.isInteger(d) || d < 1 || d > MAX_DIM) throw fail(`${key} is ${d}; it must be an integer in [1, ${MAX_DIM}]`);
  }
  if (m.dtype !== 'bf16' && m.dtype !== 'f32' && m.dtype !== 'pq') throw fail(`dtype '${String(m.dtype)}' is not 'bf16', 'f32' or 'pq'`);
  if (m.dtype === 'pq') {
    const M = m.subvectors;
    if (!(Number.isInteger(M) && M! >= 1 && M! <= m.headDim)) throw fail(`a pq memory needs subvectors, an integer in [1, headDim ${m.headDim}], got ${M}`);
    const nc = 2 * m.layers * m.kvHeads * m.tokens * M!;
    if (!(m.codes instanceof Uint8Array) || m.codes.length !== nc) throw fail(`a pq memory needs codes, a Uint8Array of (layers, 2, kvHeads, tokens, subvectors) = ${nc} bytes, got ${m.codes?.length ?? 'none'}`);
  }
  const shape = `(${m.layers}, ${m.kvHeads}, ${m.tokens}, ${m.headDim})`;
  const n = m.layers * m.kvHeads * m.tokens * m.headDim;
  for (const key of ['k', 'v'] as const) {
    if (!(m[key] instanceof Float32Array) || m[key].length !== n) {
      throw fail(`${key} must be a Float32Array of (layers, kvHeads, tokens, headDim) = ${shape} = ${n} values, got ${m[key]?.length ?? 'none'}`);
    }
  }
  const np = m.layers * m.kvHeads * m.tokens;
  if (!(m.positions instanceof Uint32Array) || m.positions.length !== np) {
    throw fail(`positions must be a Uint32Array of (layers, kvHeads, tokens) = ${np} values, got ${m.positions?.length ?? 'none'}`);
  }
}

/** Writes `src` (f32) into `out` (2-byte aligned, length src.length) as bf16 bits, round to nearest even. */
function toBf16(src: Float32Array, out: Uint16Array): void {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i]!;
    // same rule as gpu/dtype.ts f32ToBf16Bits, inlined for whole arrays
    out[i] = (b & 0x7fffffff) > 0x7f800000 ? (b >>> 16) | 0x40 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
}

/** Serialises a sparse memory into its bytes (layout in the header comment). */
export function encodeMemory(m: SparseMemory): Uint8Array<ArrayBuffer> {
  expectShape(m, (what) => new MemoryBlobError(`encodeMemory: ${what}`));
  const { layers: L, kvHeads: H, tokens: T, headDim: D } = m;
  let maxPos = 0;
  for (const p of m.positions) maxPos = Math.max(maxPos, p);
  const positionBytes = maxPos <= 0xffff ? 2 : 4;
  const bytes = memoryBytes({ ...m, positionBytes });
  const out = new Uint8Array(bytes);
  const view = new DataView(out.buffer);
  for (let i = 0; i < 4; i++) out[i] = MEMORY_MAGIC.charCodeAt(i);
  view.setUint16(4, MEMORY_VERSION, true);
  view.setUint8(6, DTYPE_CODE[m.dtype]);
  view.setUint8(7, positionBytes);
  view.setUint16(8, L, true);
  view.setUint16(10, H, true);
  view.setUint16(12, T, true);
  view.setUint16(14, D, true);
  view.setUint32(16, bytes - MEMORY_HEADER_BYTES, true);

  // K/V: per layer, that layer's (H, T, D) keys then its values (pq: M, then the codes in that order)
  const block = H * T * D;
  if (m.dtype === 'pq') {
    view.setUint32(MEMORY_HEADER_BYTES, m.subvectors!, true);
    out.set(m.codes!, MEMORY_HEADER_BYTES + 4);
  } else {
    const e = elementBytes(m.dtype);
    for (let l = 0; l < L; l++) {
      for (const [which, src] of [[0, m.k], [1, m.v]] as const) {
        const at = MEMORY_HEADER_BYTES + (2 * l + which) * block * e;
        const part = src.subarray(l * block, (l + 1) * block);
        if (m.dtype === 'f32') new Float32Array(out.buffer, at, block).set(part);
        else toBf16(part, new Uint16Array(out.buffer, at, block));
      }
    }
  }
  const posAt = MEMORY_HEADER_BYTES + kvBytes(m);
  if (positionBytes === 2) new Uint16Array(out.buffer, posAt, m.positions.length).set(m.positions);
  else new Uint32Array(out.buffer, posAt, m.positions.length).set(m.positions);

  view.setUint32(20, blobCrc(out), true);
  return out;
}

// ---- decode ----

/**
 * Reads and verifies a blob's header: magic, version, dtype, dims, that its size is exactly what the dims
 * need, and the checksum over header and payload. Reads no values: what a bank checks on add.
 * `label` names the blob in errors.
 */
export function memoryHeader(bytes: Uint8Array, label = 'memory blob'): MemoryHeader {
  const fail = (what: string) => new MemoryBlobError(`${label}: ${what}`);
  if (!(bytes instanceof Uint8Array)) throw fail(`expected a Uint8Array, got ${typeof bytes}`);
  if (bytes.length < MEMORY_HEADER_BYTES) {
    throw fail(`${bytes.length} bytes is too short: the header alone takes ${MEMORY_HEADER_BYTES} (truncated, or not a memory blob)`);
  }
  const magic = String.fromCharCode(...bytes.subarray(0, 4));
  if (magic !== MEMORY_MAGIC) throw fail(`not a memory blob: magic ${JSON.stringify(magic)}, expected '${MEMORY_MAGIC}'`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint16(4, true);
  if (version !== MEMORY_VERSION) throw fail(`format version ${version} is not supported (this engram reads version ${MEMORY_VERSION})`);
  const dtype = CODE_DTYPE[view.getUint8(6)];
  if (!dtype) throw fail(`unknown dtype code ${view.getUint8(6)} (1 = f32, 2 = bf16): the header is corrupt`);
  const positionBytes = view.getUint8(7);
  if (positionBytes !== 2 && positionBytes !== 4) throw fail(`position size ${positionBytes} bytes is not 2 or 4: the header is corrupt`);
  const shape: MemoryShape = { layers: view.getUint16(8, true), kvHeads: view.getUint16(10, true), tokens: view.getUint16(12, true), headDim: view.getUint16(14, true), dtype };
  if (!shape.layers || !shape.kvHeads || !shape.tokens || !shape.headDim) throw fail(`a zero dimension in ${fmtShape(shape)}: the header is corrupt`);
  const payload = view.getUint32(16, true);
  if (dtype === 'pq') {
    if (bytes.length < MEMORY_HEADER_BYTES + 4) throw fail(`truncated: ${bytes.length} bytes, a pq memory's code size alone ends at ${MEMORY_HEADER_BYTES + 4}`);
    shape.subvectors = view.getUint32(MEMORY_HEADER_BYTES, true);
    if (!(shape.subvectors >= 1 && shape.subvectors <= shape.headDim)) throw fail(`${shape.subvectors} code bytes per vector is not in [1, headDim ${shape.headDim}]: the blob is corrupt`);
  }
  const want = memoryBytes({ ...shape, positionBytes });
  if (payload !== want - MEMORY_HEADER_BYTES) {
    throw fail(`the header says ${payload} payload bytes, but ${fmtShape(shape)} needs ${want - MEMORY_HEADER_BYTES}: the header is corrupt`);
  }
  if (bytes.length < want) throw fail(`truncated: ${bytes.length} bytes, the header says ${want} (${fmtShape(shape)})`);
  if (bytes.length > want) throw fail(`${bytes.length - want} trailing bytes after the ${want} that ${fmtShape(shape)} takes`);
  const stored = view.getUint32(20, true);
  const got = blobCrc(bytes);
  if (stored !== got) throw fail(`checksum mismatch (stored ${hex(stored)}, computed ${hex(got)}): the blob is corrupt`);
  return { ...shape, positionBytes, bytes: want };
}

/**
 * Parses and verifies a blob (memoryHeader) and decodes it; k/v come back as f32. `label` names it in
 * errors. A pq blob needs `codebooks` (its bank's) and keeps its codes.
 */
export function decodeMemory(bytes: Uint8Array, label = 'memory blob', codebooks?: MemoryCodebooks): SparseMemory {
  const h = memoryHeader(bytes, label);
  // typed-array views need aligned offsets; a blob sliced out of a larger buffer may not be
  const b = bytes.byteOffset % 4 === 0 ? bytes : bytes.slice();
  const { layers: L, kvHeads: H, tokens: T, headDim: D } = h;
  const block = H * T * D;
  const k = new Float32Array(L * block);
  const v = new Float32Array(L * block);
  const posAt = b.byteOffset + MEMORY_HEADER_BYTES + kvBytes(h);
  const n = L * H * T;
  const positions = Uint32Array.from(h.positionBytes === 2 ? new Uint16Array(b.buffer, posAt, n) : new Uint32Array(b.buffer, posAt, n));
  if (h.dtype === 'pq') {
    const M = h.subvectors!;
    if (!codebooks) throw new MemoryBlobError(`${label}: a product-quantised memory decodes only with its bank's codebooks`);
    if (codebooks.books.length !== 2 * L || codebooks.books.some((c) => c.dim !== D || c.subvectors !== M)) {
      throw new MemoryBlobError(`${label}: its codes (${L} layers, ${M} bytes per ${D}-dim vector) do not fit the codebooks given (${codebooks.books.length} of ${codebooks.books.map((c) => `${c.subvectors} x ${c.dim}`).join(', ')})`);
    }
    const codes = b.slice(MEMORY_HEADER_BYTES + 4, MEMORY_HEADER_BYTES + 4 + 2 * n * M);
    for (let l = 0; l < L; l++) {
      for (const [which, dst] of [[0, k], [1, v]] as const) {
        const at = (2 * l + which) * H * T * M;
        dst.set(pqDecode(codebooks.books[2 * l + which]!, codes.subarray(at, at + H * T * M)), l * block);
      }
    }
    return { layers: L, kvHeads: H, tokens: T, headDim: D, dtype: 'pq', k, v, positions, codes, subvectors: M };
  }
  const e = elementBytes(h.dtype);
  for (let l = 0; l < L; l++) {
    for (const [which, dst] of [[0, k], [1, v]] as const) {
      const at = b.byteOffset + MEMORY_HEADER_BYTES + (2 * l + which) * block * e;
      const part = dst.subarray(l * block, (l + 1) * block);
      if (h.dtype === 'f32') part.set(new Float32Array(b.buffer, at, block));
      else {
        const src = new Uint16Array(b.buffer, at, block);
        const bits = new Uint32Array(part.buffer, part.byteOffset, block);
        for (let i = 0; i < block; i++) bits[i] = src[i]! << 16;
      }
    }
  }
  return { layers: L, kvHeads: H, tokens: T, headDim: D, dtype: h.dtype, k, v, positions };
}

/**
 * a bf16 memory's stored keys and values as they lie in its blob, (L, 2, Hkv, T, D) bf16 bytes (a
 * view), for the GPU to widen (kernels/memsel/memory_front.ts); null for a memory of another dtype
 */
export function bf16Kv(bytes: Uint8Array, label = 'memory blob'): { header: MemoryHeader; kv: Uint8Array } | null {
  const h = memoryHeader(bytes, label);
  if (h.dtype !== 'bf16') return null;
  return { header: h, kv: bytes.subarray(MEMORY_HEADER_BYTES, MEMORY_HEADER_BYTES + kvBytes(h)) };
}

const hex = (x: number): string => `0x${x.toString(16).padStart(8, '0')}`;
/** a memory shape as errors print it: (L, 2, Hkv, T, D) dtype */
export const fmtShape = (s: MemoryShape): string => `(L ${s.layers}, 2, Hkv ${s.kvHeads}, T ${s.tokens}, D ${s.headDim}) ${s.dtype}${s.dtype === 'pq' ? ` of ${s.subvectors} bytes` : ''}`;

/**
 * copies a memory's keys and values at memory layer `layer` (its index among the memory's layers)
 * into attention rows: `tokens` rows from `row` on of k, v laid out (rows, kvHeads, headDim), row
 * row + t holding each head's t-th kept token (heads keep different tokens; attention does not
 * care which row a key is in, its position is in its rotation)
 */
export function copyMemoryRows(m: SparseMemory, layer: number, k: Float32Array, v: Float32Array, row: number): void {
  const { kvHeads: H, tokens: K, headDim: D } = m;
  for (let t = 0; t < K; t++) {
    for (let g = 0; g < H; g++) {
      const src = ((layer * H + g) * K + t) * D;
      const dst = ((row + t) * H + g) * D;
      k.set(m.k.subarray(src, src + D), dst);
      v.set(m.v.subarray(src, src + D), dst);
    }
  }
}
