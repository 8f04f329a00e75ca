// shared plumbing for kernels: WGSL binding declarations with dtype-aware load/store helpers,
// uniform parameter blocks, and launch(). kernels interpolate constants into WGSL templates;
// nothing here knows any op.
//
// binding convention: @binding(0) is the uniform block `p` (when the kernel has parameters),
// storage buffers follow from @binding(1) in the order the kernel lists them: outputs, saved
// values, then inputs.
//
// for a storage binding named `x` of dtype D the header defines
//   ld_x(i: u32) -> f32             element i, decoded to f32 (any D)
//   st_x(i: u32, v: f32)            f32 only: f16/bf16 share a u32 word between two elements
//   st2_x(i: u32, a: f32, b: f32)   elements i and i+1, i even (any D; rounds to nearest even)
//   ld2_x(i: u32) -> vec2<f32>      elements i and i+1: one word load for f16/bf16 (i even); for
//                                   f32 the second index is clamped into the array, so a caller at
//                                   the end of an odd row reads a value it then discards
// index buffers (u32/i32) are plain arrays: x[i].

import type { Gpu } from '../gpu/device.ts';
import { isPacked, type DType } from '../gpu/dtype.ts';
import { LimitError, ShapeError } from '../gpu/errors.ts';
import type { Tensor } from '../gpu/tensor.ts';

export type StorageType = DType | 'u32' | 'i32';

export interface BindingDecl {
  name: string;
  type: StorageType;
  access: 'read' | 'read_write';
}

export type ParamType = 'u32' | 'i32' | 'f32';
export type ParamSpec = readonly (readonly [name: string, type: ParamType])[];

/** WGSL helpers for packed 16-bit storage; every header includes them. */
const PACK_HELPERS = /* wgsl */ `
fn bf16_lo(w: u32) -> f32 { return bitcast<f32>(w << 16u); }
fn bf16_hi(w: u32) -> f32 { return bitcast<f32>(w & 0xffff0000u); }
fn bf16_bits(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  if ((b & 0x7fffffffu) > 0x7f800000u) { return (b >> 16u) | 0x40u; }  // keep NaN a NaN
  return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;                      // round to nearest even
}
fn pack_bf16(a: f32, b: f32) -> u32 { return bf16_bits(a) | (bf16_bits(b) << 16u); }
`;

function storageDecl(binding: number, b: BindingDecl): string {
  const elem = b.type === 'f32' ? 'f32' : b.type === 'i32' ? 'i32' : 'u32';
  const decl = `@group(0) @binding(${binding}) var<storage, ${b.access}> ${b.name}: array<${elem}>;`;
  const n = b.name;
  const rw = b.access === 'read_write';
  switch (b.type) {
    case 'u32':
    case 'i32':
      return decl;
    case 'f32':
      return [
        decl,
        `fn ld_${n}(i_: u32) -> f32 { return ${n}[i_]; }`,
        `fn ld2_${n}(i_: u32) -> vec2<f32> { return vec2<f32>(${n}[i_], ${n}[min(i_ + 1u, arrayLength(&${n}) - 1u)]); }`,
        rw ? `fn st_${n}(i_: u32, v_: f32) { ${n}[i_] = v_; }` : '',
        rw ? `fn st2_${n}(i_: u32, a_: f32, b_: f32) { ${n}[i_] = a_; ${n}[i_ + 1u] = b_; }` : '',
      ].join('\n');
    case 'f16':
      return [
        decl,
        `fn ld_${n}(i_: u32) -> f32 { return unpack2x16float(${n}[i_ >> 1u])[i_ & 1u]; }`,
        `fn ld2_${n}(i_: u32) -> vec2<f32> { return unpack2x16float(${n}[i_ >> 1u]); }`,
        rw ? `fn st2_${n}(i_: u32, a_: f32, b_: f32) { ${n}[i_ >> 1u] = pack2x16float(vec2<f32>(a_, b_)); }` : '',
      ].join('\n');
    case 'bf16':
      return [
        decl,
        `fn ld_${n}(i_: u32) -> f32 { let w_ = ${n}[i_ >> 1u]; return select(bf16_lo(w_), bf16_hi(w_), (i_ & 1u) == 1u); }`,
        `fn ld2_${n}(i_: u32) -> vec2<f32> { let w_ = ${n}[i_ >> 1u]; return vec2<f32>(bf16_lo(w_), bf16_hi(w_)); }`,
        rw ? `fn st2_${n}(i_: u32, a_: f32, b_: f32) { ${n}[i_ >> 1u] = pack_bf16(a_, b_); }` : '',
      ].join('\n');
  }
}

/** The WGSL header: the Params struct (if any), storage bindings and their helpers. */
export function header(storage: readonly BindingDecl[], params: ParamSpec = []): string {
  const out: string[] = [PACK_HELPERS];
  if (params.length > 0) {
    out.push(`struct Params {\n${params.map(([n, t]) => `  ${n}: ${t},`).join('\n')}\n}`);
    out.push('@group(0) @binding(0) var<uniform> p: Params;');
  }
  storage.forEach((b, i) => out.push(storageDecl(i + 1, b)));
  return out.join('\n');
}

/** Packs parameter values into a uniform block (4-byte scalars in order, padded to 16 bytes). */
export function packParams(spec: ParamSpec, values: Readonly<Record<string, number>>): ArrayBuffer {
  const buf = new ArrayBuffer(Math.max(16, Math.ceil((spec.length * 4) / 16) * 16));
  const dv = new DataView(buf);
  spec.forEach(([name, type], i) => {
    const v = values[name];
    if (v === undefined || !Number.isFinite(v)) throw new Error(`kernel parameter '${name}' is ${v}`);
    if (type === 'f32') dv.setFloat32(i * 4, v, true);
    else if (type === 'i32') dv.setInt32(i * 4, v, true);
    else dv.setUint32(i * 4, v, true);
  });
  return buf;
}

export interface Launch {
  /** kernel name: the pipeline label and the name in errors */
  name: string;
  wgsl: string;
  entryPoint?: string;
  storage: readonly Tensor[];
  params?: ParamSpec;
  values?: Readonly<Record<string, number>>;
  workgroups: readonly [number, number?, number?];
}

/**
 * WebGPU forbids binding one buffer both writable and read-only in a dispatch, even on disjoint
 * ranges (tensors of one arena share a buffer). such read-only bindings are redeclared
 * read_write. an overlap of a written range with another binding is an error (WebGPU forbids
 * it too): a kernel that works in place binds the tensor once and reads it through its output.
 */
export function resolveAliasing(name: string, wgsl: string, storage: readonly Tensor[]): string {
  // the common case, every tensor in its own buffer, needs no scan of the source
  if (new Set(storage.map((t) => t.buffer)).size === storage.length) return wgsl;
  const writable = new Set<number>();
  storage.forEach((_, k) => {
    if (new RegExp(`@binding\\(${k + 1}\\) var<storage, read_write>`).test(wgsl)) writable.add(k);
  });
  let out = wgsl;
  storage.forEach((t, k) => {
    if (writable.has(k)) {
      storage.forEach((u, j) => {
        if (j !== k && u.buffer === t.buffer && u.offset < t.offset + t.byteLength && t.offset < u.offset + u.byteLength) {
          throw new ShapeError(`${name}: output ${t} overlaps ${u} in the same buffer; use separate tensors`);
        }
      });
    } else if (storage.some((u, j) => writable.has(j) && u.buffer === t.buffer)) {
      out = out.replace(`@binding(${k + 1}) var<storage, read>`, `@binding(${k + 1}) var<storage, read_write>`);
    }
  });
  return out;
}

const SOURCES = new Map<string, string>();

/**
 * The WGSL of one kernel variant, built on its first dispatch and kept: `key` must name
 * everything the source depends on (the kernel's family and its specialisation). A decode step
 * records hundreds of dispatches, and building their sources again each time cost more host
 * time than recording them; the same string object also makes the pipeline lookup cheap.
 */
export function wgslOnce(key: string, build: () => string): string {
  let s = SOURCES.get(key);
  if (s === undefined) SOURCES.set(key, (s = build()));
  return s;
}

/** Compiles (once, cached) and records one dispatch. */
export async function launch(gpu: Gpu, l: Launch): Promise<void> {
  // WebGPU guarantees 8 storage buffers per shader stage; browsers often give 8 or 10
  const maxStorage = gpu.limits['maxStorageBuffersPerShaderStage'] ?? 8;
  if (l.storage.length > maxStorage) {
    throw new LimitError(`kernel '${l.name}' binds ${l.storage.length} storage buffers; adapter '${gpu.adapterName}' allows ${maxStorage} per shader stage`);
  }
  const wgsl = resolveAliasing(l.name, l.wgsl, l.storage);
  const pipe = await gpu.pipelines.get(l.name, wgsl, l.entryPoint ?? 'main');
  const params = l.params && l.params.length > 0 ? packParams(l.params, l.values ?? {}) : null;
  gpu.dispatch(pipe, l.storage, params, l.workgroups);
}

/**
 * The SIMD lanes S of barrier-free kernels written for CPU adapters (a workgroup = one subgroup
 * of S lanes, sharing values through subgroup broadcasts): the subgroups feature with a fixed
 * size of 4, 8 or 16, else null.
 */
export function simdLanes(gpu: Gpu): number | null {
  const S = gpu.subgroupSize;
  return gpu.features.subgroups && S !== null && [4, 8, 16].includes(S) ? S : null;
}

/** simdLanes() when gpu.cpu is set (kernels take their CPU mappings then), else null. */
export function cpuLanes(gpu: Gpu): number | null {
  return gpu.cpu ? simdLanes(gpu) : null;
}

/** Splits a large 1-D workgroup count into an (x, y) grid within the per-dimension limit. */
export function grid1d(gpu: Gpu, groups: number): [number, number] {
  const max = gpu.device.limits.maxComputeWorkgroupsPerDimension;
  if (groups <= max) return [groups, 1];
  const y = Math.ceil(groups / max);
  return [Math.ceil(groups / y), y];
}

// ---------------------------------------------------------------- shape checks


/** Throws a ShapeError naming the op and the tensor unless t has exactly `shape` (-1 = any). */
export function expectShape(op: string, what: string, t: Tensor, shape: readonly number[]): void {
  const ok = t.shape.length === shape.length && shape.every((d, i) => d < 0 || d === t.shape[i]);
  if (!ok) throw new ShapeError(`${op}: ${what} ${t} should have shape [${shape.map((d) => (d < 0 ? '*' : d)).join(',')}]`);
}

/** Throws a ShapeError unless t's dtype is one of `dtypes`; narrows t.dtype for the caller. */
export function expectDtype<D extends StorageType>(op: string, what: string, t: Tensor, dtypes: readonly D[]): asserts t is Tensor & { readonly dtype: D } {
  if (!(dtypes as readonly StorageType[]).includes(t.dtype)) throw new ShapeError(`${op}: ${what} ${t} must be one of ${dtypes.join('/')}`);
}

/** t's dtype when it is a float type (f32/f16/bf16); a ShapeError naming the op otherwise. */
export function floatDtype(op: string, what: string, t: Tensor): DType {
  expectDtype(op, what, t, FLOAT_DTYPES);
  return t.dtype;
}

const FLOAT_DTYPES: readonly DType[] = ['f32', 'f16', 'bf16'];

/** f16/bf16 tensors are written two elements per word: their innermost dimension must be even. */
export function expectPackable(op: string, what: string, t: Tensor): void {
  const inner = t.shape[t.shape.length - 1] ?? 1;
  if (isPacked(t.dtype) && inner % 2 !== 0) {
    throw new ShapeError(`${op}: ${what} ${t} is ${t.dtype} with an odd innermost dimension (${inner}); use f32 or an even size`);
  }
}

/** Throws a ShapeError unless a and b are different bytes (an output must not overlap an input). */
export function expectDisjoint(op: string, a: Tensor, b: Tensor): void {
  if (a.buffer === b.buffer && a.offset < b.offset + b.byteLength && b.offset < a.offset + a.byteLength) {
    throw new ShapeError(`${op}: ${a} and ${b} overlap; use separate tensors`);
  }
}

export function expectSameShape(op: string, a: Tensor, b: Tensor): void {
  if (a.shape.length !== b.shape.length || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new ShapeError(`${op}: ${a} and ${b} must have the same shape`);
  }
}
