// memory blobs: exact f32 round trip, bf16 within its rounding (and bit-equal to gpu/dtype.ts's rounding),
// u16/u32 positions, the size formula (the paper's 453,400 B), and every kind of damage a clear error.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { bf16BitsToF32, f32ToBf16Bits } from '../gpu/dtype.ts';
import { EngramError } from '../gpu/errors.ts';
import { Rng } from '../testing/rng.ts';
import {
  decodeMemory,
  encodeMemory,
  MEMORY_HEADER_BYTES,
  MemoryBlobError,
  memoryBytes,
  memoryHeader,
  type MemoryDType,
  type SparseMemory,
} from './blob.ts';

function randomMemory(seed: number, dims: { layers: number; kvHeads: number; tokens: number; headDim: number }, dtype: MemoryDType, maxPos = 128): SparseMemory {
  const rng = new Rng(seed);
  const n = dims.layers * dims.kvHeads * dims.tokens * dims.headDim;
  const k = Float32Array.from(rng.normals(n, 3));
  const v = Float32Array.from(rng.normals(n, 0.5));
  const positions = Uint32Array.from({ length: dims.layers * dims.kvHeads * dims.tokens }, () => rng.int(maxPos));
  return { ...dims, dtype, k, v, positions };
}

function rejects(f: () => unknown, message: RegExp): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof MemoryBlobError && e instanceof EngramError, `expected a MemoryBlobError, got ${String(e)}`);
    assert.match(e.message, message);
    return true;
  });
}

const DIMS = { layers: 3, kvHeads: 2, tokens: 5, headDim: 6 };

test('f32 round trip is exact; header fields; u16 positions', () => {
  const m = randomMemory(1, DIMS, 'f32');
  m.k[0] = -0;
  m.v[1] = 1e-40; // subnormal
  m.v[2] = -Infinity;
  const bytes = encodeMemory(m);
  assert.equal(bytes.length, memoryBytes({ ...DIMS, dtype: 'f32' }));
  assert.equal(new TextDecoder().decode(bytes.subarray(0, 4)), 'EMK1');
  const h = memoryHeader(bytes);
  assert.deepEqual(h, { ...DIMS, dtype: 'f32', positionBytes: 2, bytes: bytes.length });
  const d = decodeMemory(bytes);
  assert.deepEqual(d, m);
  assert.ok(Object.is(d.k[0], -0));
});

test('bf16 round trip: round to nearest even, bit-equal to f32ToBf16Bits; NaN stays NaN', () => {
  const m = randomMemory(2, DIMS, 'bf16');
  m.k[3] = NaN;
  m.k[4] = 3.4e38; // rounds up past bf16's largest finite value: +inf, as RNE says
  m.v[0] = 1 + 2 ** -8; // exactly halfway between two bf16 values: ties to the even one (1)
  m.v[1] = 1 + 3 * 2 ** -8; // halfway, odd below: up to 1 + 2^-6
  const d = decodeMemory(encodeMemory(m));
  assert.deepEqual(d.positions, m.positions);
  for (const key of ['k', 'v'] as const) {
    for (let i = 0; i < m[key].length; i++) {
      const want = bf16BitsToF32(f32ToBf16Bits(m[key][i]!));
      assert.ok(Object.is(d[key][i], want), `${key}[${i}]: ${d[key][i]} vs ${want}`);
      const x = m[key][i]!;
      if (Number.isFinite(x) && Math.abs(x) < 3e38) assert.ok(Math.abs(d[key][i]! - x) <= Math.abs(x) * 2 ** -8, `${key}[${i}] within half an ulp (8 significant bits)`);
    }
  }
  assert.ok(Number.isNaN(d.k[3]));
  assert.equal(d.k[4], Infinity);
  assert.equal(d.v[0], 1);
  assert.equal(d.v[1], 1 + 2 ** -6);
});

test('positions past 65535 are stored as u32', () => {
  const m = randomMemory(3, DIMS, 'bf16');
  m.positions[7] = 70000;
  const bytes = encodeMemory(m);
  assert.equal(bytes.length, memoryBytes({ ...DIMS, dtype: 'bf16', positionBytes: 4 }));
  assert.equal(memoryHeader(bytes).positionBytes, 4);
  assert.deepEqual(decodeMemory(bytes).positions, m.positions);
});

test('a blob at an odd offset inside a larger buffer decodes', () => {
  const bytes = encodeMemory(randomMemory(4, DIMS, 'f32'));
  const big = new Uint8Array(bytes.length + 3);
  big.set(bytes, 1);
  assert.deepEqual(decodeMemory(big.subarray(1, 1 + bytes.length)), decodeMemory(bytes));
});

test('size formula: the paper model (22 layers, 8 KV heads, 8 tokens, 80 dims, bf16) is 453,400 B', () => {
  const paper = { layers: 22, kvHeads: 8, tokens: 8, headDim: 80 };
  assert.equal(memoryBytes({ ...paper, dtype: 'bf16' }), 24 + 450_560 + 2_816);
  assert.equal(memoryBytes({ ...paper, dtype: 'f32' }), 24 + 2 * 450_560 + 2_816);
  for (const dtype of ['bf16', 'f32'] as const) {
    assert.equal(encodeMemory(randomMemory(5, { layers: 1, kvHeads: 1, tokens: 1, headDim: 1 }, dtype)).length, memoryBytes({ layers: 1, kvHeads: 1, tokens: 1, headDim: 1, dtype }));
  }
});

test('damage is an error naming the blob and what is wrong', () => {
  const good = encodeMemory(randomMemory(7, DIMS, 'bf16'));
  const flip = (at: number) => {
    const b = good.slice();
    b[at]! ^= 0x10;
    return b;
  };
  // one flipped byte anywhere in the payload, and in the header's dims
  rejects(() => decodeMemory(flip(MEMORY_HEADER_BYTES + 100), "ref 'x'"), /^ref 'x': checksum mismatch .*corrupt/);
  rejects(() => decodeMemory(flip(good.length - 1)), /checksum mismatch/);
  rejects(() => memoryHeader(flip(20)), /checksum mismatch/);
  rejects(() => decodeMemory(flip(8)), /header says \d+ payload bytes, but .* needs \d+: the header is corrupt/);
  rejects(() => decodeMemory(flip(6)), /unknown dtype code/);
  rejects(() => decodeMemory(flip(7)), /position size/);
  rejects(() => decodeMemory(flip(4)), /format version \d+ is not supported/);
  // swapping Hkv and T keeps every size: only the checksum (which covers the header) can tell
  const swapped = good.slice();
  swapped.set(good.subarray(10, 12), 12);
  swapped.set(good.subarray(12, 14), 10);
  rejects(() => decodeMemory(swapped), /checksum mismatch/);
  // truncated, trailing bytes, empty, wrong magic
  rejects(() => decodeMemory(good.subarray(0, good.length - 1)), /truncated: \d+ bytes, the header says \d+/);
  rejects(() => decodeMemory(good.subarray(0, 10)), /10 bytes is too short/);
  rejects(() => decodeMemory(new Uint8Array(0)), /0 bytes is too short/);
  const longer = new Uint8Array(good.length + 2);
  longer.set(good);
  rejects(() => decodeMemory(longer), /2 trailing bytes/);
  const wrong = good.slice();
  wrong.set(new TextEncoder().encode('PK\x03\x04'));
  rejects(() => decodeMemory(wrong), /not a memory blob: magic "PK\\u0003\\u0004", expected 'EMK1'/);
});

test('encodeMemory rejects a memory whose arrays do not fit its dims', () => {
  const m = randomMemory(8, DIMS, 'f32');
  rejects(() => encodeMemory({ ...m, k: m.k.subarray(1) }), /encodeMemory: k must be a Float32Array of .* = 180 values, got 179/);
  rejects(() => encodeMemory({ ...m, positions: new Uint32Array(3) }), /positions must be a Uint32Array of .* = 30 values, got 3/);
  rejects(() => encodeMemory({ ...m, tokens: 0 }), /tokens is 0/);
  rejects(() => encodeMemory({ ...m, headDim: 70000 }), /headDim is 70000/);
  rejects(() => encodeMemory({ ...m, dtype: 'f16' as MemoryDType }), /dtype 'f16'/);
});
