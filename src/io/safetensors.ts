// safetensors reader and writer (no maintained npm package exists; the format is small).
//
// layout (huggingface/safetensors README, "Format"):
//   8 bytes   N, the header length, unsigned little-endian u64
//   N bytes   UTF-8 JSON object, starting with '{', possibly padded at the end with spaces:
//             { "<name>": { "dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end] }, ...,
//               "__metadata__": { "<key>": "<string value>" } }        (metadata optional)
//   the rest  the byte buffer: every tensor's little-endian row-major bytes at
//             [begin, end) relative to the start of the buffer (not of the file)
// the reference reader insists the tensors tile the buffer exactly: sorted by offset they are
// contiguous from 0 to the end of the file, with no overlap, no gap and no trailing bytes.
// we check the same (and everything else in the header) before touching any data, so a
// damaged or hostile file gives an error naming what is wrong, never an out-of-bounds read or a
// silently misread tensor.
//
// writer: tensors sorted by name (code-unit order, so the bytes are deterministic), their data
// in that order, the header padded with spaces so the data starts 8-byte aligned (what the
// reference writer does too). byte order: engram (like WebGPU) assumes a little-endian host, so
// typed-array bytes are already the file's bytes.

import { bf16BitsToF32, f16BitsToF32 } from '../gpu/dtype.ts';
import { EngramError } from '../gpu/errors.ts';

export type SafeDType = 'F32' | 'F16' | 'BF16' | 'I32' | 'U32' | 'I64' | 'U8';
/** one tensor: `data` holds product(shape) elements of `dtype` as raw little-endian bytes */
export interface SafeTensor {
  dtype: SafeDType;
  shape: number[];
  data: Uint8Array;
}

/** A safetensors file (or a tensor handed to the writer) is malformed; says which and why. */
export class SafetensorsError extends EngramError {}

const DTYPE_BYTES: Readonly<Record<SafeDType, number>> = { F32: 4, F16: 2, BF16: 2, I32: 4, U32: 4, I64: 8, U8: 1 };
const DTYPES = Object.keys(DTYPE_BYTES) as SafeDType[];
const METADATA = '__metadata__';

const isDType = (d: unknown): d is SafeDType => typeof d === 'string' && Object.hasOwn(DTYPE_BYTES, d);
const isIndex = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const fmtShape = (shape: readonly unknown[]): string => `[${shape.join(', ')}]`;

/** Bytes a tensor of `shape` and `dtype` takes; undefined when it overflows a safe integer. */
function byteLength(shape: readonly number[], dtype: SafeDType): number | undefined {
  let n = DTYPE_BYTES[dtype];
  for (const d of shape) {
    n *= d;
    if (!Number.isSafeInteger(n)) return undefined;
  }
  return n;
}

/** Serialises `tensors` (and string `metadata`) into the bytes of a .safetensors file. */
export function encodeSafetensors(tensors: Record<string, SafeTensor>, metadata?: Record<string, string>): Uint8Array {
  const names = Object.keys(tensors).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const fail = (what: string) => new SafetensorsError(`encodeSafetensors: ${what}`);
  // the header is built by hand: JSON.stringify of an object would move integer-like names
  // ("0", "12") to the front and break the sorted order
  const parts: string[] = [];
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw fail(`metadata '${k}' is a ${typeof v}; safetensors metadata values must be strings`);
    }
    parts.push(`${JSON.stringify(METADATA)}:${JSON.stringify(metadata)}`);
  }
  let offset = 0;
  for (const name of names) {
    const t = tensors[name]!;
    if (name === METADATA) throw fail(`'${METADATA}' is reserved for metadata and cannot name a tensor`);
    if (!isDType(t.dtype)) throw fail(`tensor '${name}': unknown dtype '${String(t.dtype)}' (supported: ${DTYPES.join(', ')})`);
    if (!Array.isArray(t.shape) || !t.shape.every(isIndex)) {
      throw fail(`tensor '${name}': shape ${JSON.stringify(t.shape)} must be a list of non-negative integers`);
    }
    const want = byteLength(t.shape, t.dtype);
    if (want !== t.data.byteLength) {
      throw fail(`tensor '${name}': ${t.data.byteLength} bytes of data, but shape ${fmtShape(t.shape)} of ${t.dtype} needs ${want ?? 'too many'}`);
    }
    const info = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + want] };
    parts.push(`${JSON.stringify(name)}:${JSON.stringify(info)}`);
    offset += want;
  }
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  const headerLen = Math.ceil(json.byteLength / 8) * 8; // 8 + headerLen: data 8-byte aligned
  const out = new Uint8Array(8 + headerLen + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLen), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.byteLength, 8 + headerLen);
  let at = 8 + headerLen;
  for (const name of names) {
    out.set(tensors[name]!.data, at);
    at += tensors[name]!.data.byteLength;
  }
  return out;
}

interface Entry {
  name: string;
  dtype: SafeDType;
  shape: number[];
  begin: number;
  end: number;
}

/**
 * Parses and validates a .safetensors file: the header length lies within the file, the header
 * is a UTF-8 JSON object, every entry has a known dtype, a shape of non-negative integers and
 * offsets whose byte length is product(shape) * element size, and the tensors tile the data
 * exactly (in bounds, no overlap, no gap, no trailing bytes). Throws SafetensorsError naming
 * `source` (a file name, for the message), the entry and what is wrong. Tensor data is copied.
 */
export function decodeSafetensors(bytes: Uint8Array, source = '<bytes>'): { tensors: Record<string, SafeTensor>; metadata: Record<string, string> } {
  const fail = (what: string) => new SafetensorsError(`safetensors ${source}: ${what}`);
  if (bytes.byteLength < 8) throw fail(`file is ${bytes.byteLength} bytes, too short to hold the 8-byte header length (truncated?)`);
  const n64 = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(0, true);
  if (n64 > BigInt(bytes.byteLength - 8)) {
    throw fail(`header length ${n64} runs past the end of the file (${bytes.byteLength} bytes; truncated, or not a safetensors file?)`);
  }
  const headerLen = Number(n64);
  const header = bytes.subarray(8, 8 + headerLen);
  if (header[0] !== 0x7b) throw fail(`header does not start with '{' (not a safetensors file?)`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(header);
  } catch {
    throw fail('header is not valid UTF-8');
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw fail(`header is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw fail('header is not a JSON object');

  const metadata: Record<string, string> = {};
  const entries: Entry[] = [];
  for (const [name, raw] of Object.entries(parsed)) {
    if (name === METADATA) {
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw fail(`${METADATA} is not an object of strings`);
      for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
        if (typeof v !== 'string') throw fail(`${METADATA} '${k}' is ${JSON.stringify(v)}, not a string`);
        Object.defineProperty(metadata, k, { value: v, enumerable: true, writable: true, configurable: true });
      }
      continue;
    }
    entries.push(parseEntry(name, raw, (what) => fail(`tensor '${name}': ${what}`)));
  }

  // the tensors must tile the buffer: sorted by offset (empty tensors first at a tie), each
  // starts where the previous one ended, and the last one ends at the end of the file
  const dataLen = bytes.byteLength - 8 - headerLen;
  for (const e of entries) {
    if (e.end > dataLen) {
      throw fail(`tensor '${e.name}': data_offsets [${e.begin}, ${e.end}] run past the end of the data (${dataLen} bytes; file truncated?)`);
    }
  }
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expected = 0;
  let prev: Entry | undefined;
  for (const e of entries) {
    if (e.begin < expected) {
      throw fail(`tensor '${e.name}': data_offsets [${e.begin}, ${e.end}] overlap tensor '${prev!.name}' [${prev!.begin}, ${prev!.end}]`);
    }
    if (e.begin > expected) {
      throw fail(`tensor '${e.name}': data_offsets [${e.begin}, ${e.end}] leave a gap of ${e.begin - expected} bytes after ${prev ? `tensor '${prev.name}'` : 'the header'}`);
    }
    expected = e.end;
    prev = e;
  }
  if (expected !== dataLen) throw fail(`${dataLen - expected} bytes after the last tensor belong to no tensor`);

  const base = 8 + headerLen;
  const tensors = Object.fromEntries(
    entries.map((e) => [e.name, { dtype: e.dtype, shape: e.shape, data: bytes.slice(base + e.begin, base + e.end) }]),
  ) as Record<string, SafeTensor>;
  return { tensors, metadata };
}

function parseEntry(name: string, raw: unknown, fail: (what: string) => SafetensorsError): Entry {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw fail(`entry is ${JSON.stringify(raw)}, not an object`);
  const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
  if (!isDType(dtype)) throw fail(`unknown dtype ${JSON.stringify(dtype)} (supported: ${DTYPES.join(', ')})`);
  if (!Array.isArray(shape) || !shape.every(isIndex)) throw fail(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isIndex)) {
    throw fail(`data_offsets ${JSON.stringify(offsets)} are not [begin, end] non-negative integers`);
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) throw fail(`data_offsets [${begin}, ${end}] end before they begin`);
  const want = byteLength(shape, dtype);
  if (want !== end - begin) {
    throw fail(`data_offsets [${begin}, ${end}] hold ${end - begin} bytes, but shape ${fmtShape(shape)} of ${dtype} needs ${want ?? 'more than 2^53'}`);
  }
  return { name, dtype, shape, begin, end };
}

/** The little-endian bytes of `a` (a copy), for an F32 SafeTensor. */
export function f32Bytes(a: Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();
}

/** The elements of an F32, F16 or BF16 tensor as f32 (16-bit floats widened exactly). */
export function bytesToF32(t: SafeTensor): Float32Array {
  const fail = (what: string) => new SafetensorsError(`bytesToF32: ${what}`);
  if (t.dtype !== 'F32' && t.dtype !== 'F16' && t.dtype !== 'BF16') throw fail(`dtype ${t.dtype} is not a float type (F32, F16, BF16)`);
  const want = byteLength(t.shape, t.dtype);
  if (want !== t.data.byteLength) throw fail(`${t.data.byteLength} bytes, but shape ${fmtShape(t.shape)} of ${t.dtype} needs ${want ?? 'too many'}`);
  // slice() copies into a fresh, aligned buffer whatever the view's byteOffset
  if (t.dtype === 'F32') return new Float32Array(t.data.slice().buffer);
  const bits = new Uint16Array(t.data.slice().buffer);
  const toF32 = t.dtype === 'F16' ? f16BitsToF32 : bf16BitsToF32;
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = toF32(bits[i]!);
  return out;
}
