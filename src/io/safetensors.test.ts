import assert from 'node:assert/strict';
import { test } from 'node:test';
import { f32ToBf16Bits, f32ToF16Bits } from '../gpu/dtype.ts';
import { bytesToF32, decodeSafetensors, encodeSafetensors, f32Bytes, SafetensorsError, type SafeTensor } from './safetensors.ts';

const u8 = (...b: number[]) => Uint8Array.from(b);
/** `n` bytes counting from `start`, so every byte of a round trip is distinct and checked */
const ramp = (n: number, start = 0) => Uint8Array.from({ length: n }, (_, i) => (start + i * 7) & 0xff);

/** A file built without the encoder: u64le header length, the header text, then `data`. */
function file(header: string | Uint8Array, data: Uint8Array, pad = 0): Uint8Array {
  const h = typeof header === 'string' ? new TextEncoder().encode(header + ' '.repeat(pad)) : header;
  const out = new Uint8Array(8 + h.length + data.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  out.set(data, 8 + h.length);
  return out;
}

function throwsSafe(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof SafetensorsError, `expected a SafetensorsError, got ${String(e)}`);
    assert.match(e.message, message);
    return true;
  });
}

test('round trip of every dtype, 0-d and empty tensors and metadata is bit-exact', () => {
  const tensors: Record<string, SafeTensor> = {
    'w.f32': { dtype: 'F32', shape: [2, 3], data: ramp(24) },
    'w.f16': { dtype: 'F16', shape: [4], data: ramp(8, 1) },
    'w.bf16': { dtype: 'BF16', shape: [2, 1, 2], data: ramp(8, 2) },
    'ids.i32': { dtype: 'I32', shape: [3], data: ramp(12, 3) },
    'ids.u32': { dtype: 'U32', shape: [1, 1, 1], data: ramp(4, 4) },
    'step.i64': { dtype: 'I64', shape: [2], data: ramp(16, 5) },
    'mask.u8': { dtype: 'U8', shape: [5], data: ramp(5, 6) }, // odd length: later offsets unaligned
    scalar: { dtype: 'F32', shape: [], data: ramp(4, 9) },
    empty: { dtype: 'F32', shape: [0], data: new Uint8Array(0) },
    'empty.2d': { dtype: 'I64', shape: [3, 0], data: new Uint8Array(0) },
    '10': { dtype: 'U8', shape: [1], data: u8(10) }, // integer-like names must stay in sorted order
    '2': { dtype: 'U8', shape: [1], data: u8(2) },
  };
  const metadata = { format: 'engram', step: '12', note: 'ünïcode ✓ "quoted"' };
  const bytes = encodeSafetensors(tensors, metadata);

  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal((8 + n) % 8, 0, 'data starts 8-byte aligned');
  const header = new TextDecoder().decode(bytes.subarray(8, 8 + n));
  assert.match(header, /^\{.*\} *$/s);
  const parsed = JSON.parse(header) as Record<string, { data_offsets: [number, number] }>;
  const names = Object.keys(tensors).sort((a, b) => (a < b ? -1 : 1));
  // header order is name order (checked on the text: JSON.parse reorders integer-like keys)
  const positions = names.map((k) => header.indexOf(JSON.stringify(k) + ':'));
  assert.deepEqual([...positions].sort((a, b) => a - b), positions);
  // data in the same order, contiguous from 0
  let at = 0;
  for (const k of names) {
    assert.deepEqual(parsed[k]!.data_offsets, [at, at + tensors[k]!.data.length], k);
    at += tensors[k]!.data.length;
  }
  assert.equal(bytes.length, 8 + n + at);

  const back = decodeSafetensors(bytes, 'rt.safetensors');
  assert.deepEqual(back.metadata, metadata);
  assert.deepEqual(Object.keys(back.tensors).sort(), Object.keys(tensors).sort());
  for (const [k, t] of Object.entries(tensors)) {
    const b = back.tensors[k]!;
    assert.equal(b.dtype, t.dtype, k);
    assert.deepEqual(b.shape, t.shape, k);
    assert.deepEqual(b.data, t.data, k);
  }

  // deterministic: insertion order does not matter; re-encoding what was read gives the same bytes
  const reversed = Object.fromEntries(Object.entries(tensors).reverse());
  assert.deepEqual(encodeSafetensors(reversed, metadata), bytes);
  assert.deepEqual(encodeSafetensors(back.tensors, back.metadata), bytes);
});

test('no tensors, no metadata: a valid file', () => {
  const bytes = encodeSafetensors({});
  assert.deepEqual(bytes, u8(8, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0x7d, 32, 32, 32, 32, 32, 32));
  assert.deepEqual(decodeSafetensors(bytes), { tensors: {}, metadata: {} });
});

test('a file built byte by byte decodes as the format says', () => {
  // header (63 bytes, not padded to 8: padding is optional for readers); tensors listed in an
  // order other than their offsets; metadata last
  const header =
    '{"b":{"dtype":"I32","shape":[],"data_offsets":[8,12]},' + '"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' + '"h":{"dtype":"F16","shape":[1,2],"data_offsets":[12,16]},' + '"z":{"dtype":"BF16","shape":[0],"data_offsets":[16,16]},' + '"__metadata__":{"format":"pt"}}';
  const hb = new TextEncoder().encode(header);
  const bytes = u8(
    hb.length & 0xff, hb.length >> 8, 0, 0, 0, 0, 0, 0, // u64 little-endian header length
    ...hb,
    0x00, 0x00, 0x80, 0x3f, // a[0] = 1.0f   (0x3f800000 little-endian)
    0x00, 0x00, 0x20, 0xc0, // a[1] = -2.5f  (0xc0200000)
    0xfe, 0xff, 0xff, 0xff, // b = -2 (i32)
    0x00, 0x3c, 0x00, 0xc4, // h = [1.0, -4.0] (f16 0x3c00, 0xc400)
  );
  const { tensors, metadata } = decodeSafetensors(bytes, 'hand.safetensors');
  assert.deepEqual(metadata, { format: 'pt' });
  assert.deepEqual(Object.keys(tensors).sort(), ['a', 'b', 'h', 'z']);
  assert.deepEqual(tensors.a!.shape, [2]);
  assert.deepEqual(bytesToF32(tensors.a!), Float32Array.of(1, -2.5));
  assert.deepEqual(tensors.b!.shape, []);
  assert.equal(new DataView(tensors.b!.data.buffer).getInt32(0, true), -2);
  assert.deepEqual(bytesToF32(tensors.h!), Float32Array.of(1, -4));
  assert.deepEqual(tensors.z, { dtype: 'BF16', shape: [0], data: new Uint8Array(0) });
});

test('the encoder writes a one-tensor file exactly as the reference layout', () => {
  // reference writer: JSON without spaces, padded with spaces to a multiple of 8, data after
  const header = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'; // 54 bytes -> 56
  const want = file(header, u8(0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc0), 2);
  assert.deepEqual(encodeSafetensors({ a: { dtype: 'F32', shape: [2], data: f32Bytes(Float32Array.of(1, -2.5)) } }), want);
});

test('validation errors name the file, the entry and the problem', () => {
  const entry = (dtype: string, shape: number[], b: number, e: number) => `{"dtype":"${dtype}","shape":${JSON.stringify(shape)},"data_offsets":[${b},${e}]}`;
  const good = file(`{"a":${entry('F32', [2], 0, 8)},"b":${entry('U8', [4], 8, 12)}}`, ramp(12));
  assert.doesNotThrow(() => decodeSafetensors(good));

  throwsSafe(() => decodeSafetensors(u8(1, 2, 3), 'x.safetensors'), /^safetensors x\.safetensors: file is 3 bytes, too short.*truncated/);
  throwsSafe(() => decodeSafetensors(good.subarray(0, good.length - 3), 'x.safetensors'), /x\.safetensors: tensor 'b': data_offsets \[8, 12\] run past the end of the data \(9 bytes; file truncated\?\)/);
  throwsSafe(() => decodeSafetensors(good.subarray(0, 40)), /header length \d+ runs past the end of the file \(40 bytes/);
  const huge = good.slice();
  new DataView(huge.buffer).setBigUint64(0, 1n << 62n, true);
  throwsSafe(() => decodeSafetensors(huge), /header length 4611686018427387904 runs past the end of the file/);
  throwsSafe(() => decodeSafetensors(file('{"a": {"dtype": ', new Uint8Array(0))), /header is not valid JSON/);
  throwsSafe(() => decodeSafetensors(file('[1, 2]', new Uint8Array(0))), /header does not start with '\{'/);
  throwsSafe(() => decodeSafetensors(file('', new Uint8Array(0))), /header does not start with '\{'/);
  throwsSafe(() => decodeSafetensors(file(u8(0x7b, 0x22, 0xff, 0x22, 0x3a, 0x7b, 0x7d, 0x7d), ramp(0))), /header is not valid UTF-8/); // {"\xff":{}}
  throwsSafe(() => decodeSafetensors(file(`{"a":${entry('F32', [2], 0, 8)},"b":${entry('F32', [2], 4, 12)}}`, ramp(12))), /tensor 'b': data_offsets \[4, 12\] overlap tensor 'a' \[0, 8\]/);
  throwsSafe(() => decodeSafetensors(file(`{"a":${entry('F32', [1], 0, 4)},"b":${entry('F32', [1], 8, 12)}}`, ramp(12))), /tensor 'b': data_offsets \[8, 12\] leave a gap of 4 bytes after tensor 'a'/);
  throwsSafe(() => decodeSafetensors(file(`{"a":${entry('F32', [1], 4, 8)}}`, ramp(8))), /gap of 4 bytes after the header/);
  throwsSafe(() => decodeSafetensors(file(`{"a":${entry('F32', [1], 0, 4)}}`, ramp(6))), /2 bytes after the last tensor belong to no tensor/);
  throwsSafe(() => decodeSafetensors(file(`{"a":${entry('F32', [3], 0, 8)}}`, ramp(8))), /tensor 'a': data_offsets \[0, 8\] hold 8 bytes, but shape \[3\] of F32 needs 12/);
  throwsSafe(() => decodeSafetensors(file(`{"a":${entry('Q4', [2], 0, 1)}}`, ramp(1))), /tensor 'a': unknown dtype "Q4" \(supported: F32, F16, BF16, I32, U32, I64, U8\)/);
  throwsSafe(() => decodeSafetensors(file(`{"a":${entry('F32', [-1], 0, 0)}}`, ramp(0))), /tensor 'a': shape \[-1\] is not a list of non-negative integers/);
  throwsSafe(() => decodeSafetensors(file(`{"a":${entry('U8', [0], 4, 0)}}`, ramp(4))), /tensor 'a': data_offsets \[4, 0\] end before they begin/);
  throwsSafe(() => decodeSafetensors(file('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}}', ramp(1))), /tensor 'a': data_offsets \[0\] are not \[begin, end\]/);
  throwsSafe(() => decodeSafetensors(file('{"a":[]}', ramp(0))), /tensor 'a': entry is \[\], not an object/);
  throwsSafe(() => decodeSafetensors(file('{"__metadata__":{"step":12}}', ramp(0))), /__metadata__ 'step' is 12, not a string/);
  // a product of dims beyond 2^53 is an error, not a wrapped-around small size
  throwsSafe(() => decodeSafetensors(file(`{"a":${entry('F32', [2 ** 30, 2 ** 30, 2 ** 30], 0, 0)}}`, ramp(0))), /needs more than 2\^53/);
});

test('the encoder rejects inconsistent tensors', () => {
  throwsSafe(() => encodeSafetensors({ w: { dtype: 'F32', shape: [2, 2], data: ramp(12) } }), /tensor 'w': 12 bytes of data, but shape \[2, 2\] of F32 needs 16/);
  throwsSafe(() => encodeSafetensors({ __metadata__: { dtype: 'U8', shape: [0], data: ramp(0) } }), /reserved for metadata/);
  throwsSafe(() => encodeSafetensors({ w: { dtype: 'F64' as 'F32', shape: [1], data: ramp(8) } }), /unknown dtype 'F64'/);
  throwsSafe(() => encodeSafetensors({ w: { dtype: 'U8', shape: [1.5], data: ramp(1) } }), /shape \[1\.5\] must be a list of non-negative integers/);
  throwsSafe(() => encodeSafetensors({}, { step: 3 as unknown as string }), /metadata 'step' is a number/);
});

test('f32Bytes / bytesToF32: exact for f32, 16-bit floats widened', () => {
  const a = Float32Array.of(0, -0, 1.5, -3.25e-20, 3.4e38, Infinity, NaN, 1e-45);
  const view = new Float32Array(Float32Array.of(9, ...a).buffer, 4); // byteOffset 4
  const bytes = f32Bytes(view);
  assert.equal(bytes.byteLength, 32);
  assert.equal(bytes.byteOffset, 0);
  assert.deepEqual(bytesToF32({ dtype: 'F32', shape: [8], data: bytes }), a);
  // an unaligned view of F32 bytes still decodes
  const shifted = new Uint8Array(33);
  shifted.set(bytes, 1);
  assert.deepEqual(bytesToF32({ dtype: 'F32', shape: [2, 4], data: shifted.subarray(1) }), a);

  const xs = [1, -2, 0.5, 65504, -0.000060975552, 3.140625];
  const f16 = new Uint8Array(Uint16Array.from(xs, f32ToF16Bits).buffer);
  assert.deepEqual(bytesToF32({ dtype: 'F16', shape: [6], data: f16 }), Float32Array.from(xs));
  const bf = [1, -2, 0.5, 3.3895313892515355e38, 1.1754943508222875e-38, 3.140625];
  const bf16 = new Uint8Array(Uint16Array.from(bf, f32ToBf16Bits).buffer);
  assert.deepEqual(bytesToF32({ dtype: 'BF16', shape: [3, 2], data: bf16 }), Float32Array.from(bf));

  throwsSafe(() => bytesToF32({ dtype: 'I32', shape: [1], data: ramp(4) }), /dtype I32 is not a float type/);
  throwsSafe(() => bytesToF32({ dtype: 'F16', shape: [3], data: ramp(4) }), /4 bytes, but shape \[3\] of F16 needs 6/);
});
