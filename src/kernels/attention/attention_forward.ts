// causal self-attention forward, flash style (online softmax), plus the pieces the backward
// kernels share: shape checks, tile choice, row loads and stores, the visibility rule.
//
//   out (B,T,NH,HS) = softmax(scale q k^T + mask) v       lse (B,NH,T) = logsumexp, saved (f32)
//   q (B,T,NH,HS)  k, v (B,T,NKV,HS)  pk, pv (B,P,NKV,HS), optional
//
// thread mapping: one workgroup per (b, h, block of BR queries), latest blocks first (they have
// the most keys); RG = BR/4 row groups times CG = BC/4 column groups of threads. thread (rg, cg)
// owns query rows rg*4..rg*4+3 and, for the scores, keys cg, cg+CG, cg+2CG, cg+3CG of each
// BC-key tile (a 4x4 register tile, updated with fma's), and for the output, the 4-element
// column slices cg, cg+CG, ... of its 4 rows. per key tile (5 barriers):
//   k tile -> workgroup memory | s = q k^T in registers, row-max partials -> workgroup memory |
//   row max, p = exp2(s - m), the v tile replaces the k tile | p -> workgroup memory transposed
//   (over the partials) | o = o * alpha + p v |
// q is staged once, pre-multiplied by scale*log2(e) so the softmax runs on exp2. tiles wholly
// above the diagonal are never visited; only tiles that cross it (or the end) are masked.
// workgroup memory: BR*HS + BC*HS + BC*BR floats, 32 KiB at BR=64, BC=32, HS=64 (every device
// has 32 KiB; a separate buffer for the row partials, one barrier less, measured slower on an
// H100: fewer resident workgroups). row strides are not padded: accesses are xor-swizzled so
// that the 8 threads of a quarter warp hit distinct banks.
// numerics: f32 throughout (storage may be f32/f16/bf16); masked scores are -3e38, so exp2 gives
// exactly 0. lse is stored in natural-log units: lse = (m + log2(l)) * ln(2).
// keys live in one combined index c in [0, P+T): c < P is prefix key c (seen by every query),
// c >= P is sequence key c-P (seen by queries t >= c-P when causal).
// storage dtypes and the prefix length are uniforms, not specializations: one pipeline per
// (HS, tile) serves every dtype mix (lavapipe needs seconds to compile each of these kernels).

import type { Gpu } from '../../gpu/device.ts';
import { DTYPES, type DType } from '../../gpu/dtype.ts';
import { LimitError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDtype, expectShape, floatDtype, header, launch, type BindingDecl, type ParamSpec } from '../kernel.ts';

export interface AttentionOptions {
  /** score scale; default 1/sqrt(HS) */
  scale?: number;
  /** mask keys after the query (the prefix is never masked); default true */
  causal?: boolean;
}

export interface AttentionShape {
  B: number;
  T: number;
  NH: number;
  NKV: number;
  HS: number;
  /** prefix length (0 when pk/pv are absent) */
  P: number;
}

/** largest head size the kernels support (any even HS from 2 up to this) */
export const MAX_HS = 128;

export const PARAMS: ParamSpec = [
  ['T', 'u32'],
  ['NH', 'u32'],
  ['NKV', 'u32'],
  ['G', 'u32'],
  ['P', 'u32'],
  ['causal', 'u32'],
  ['qscale', 'f32'],
  ['scale', 'f32'],
];

export const C4 = ['x', 'y', 'z', 'w'] as const;
export const R4 = [0, 1, 2, 3] as const;
export const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** Validates q, k, v and the optional prefix; returns the dimensions. */
export function attentionShape(op: string, q: Tensor, k: Tensor, v: Tensor, pk?: Tensor, pv?: Tensor): AttentionShape {
  if (q.shape.length !== 4) throw new ShapeError(`${op}: q ${q} should have shape [B,T,NH,HS]`);
  const [B, T, NH, HS] = q.shape as [number, number, number, number];
  expectShape(op, 'k', k, [B, T, -1, HS]);
  const NKV = k.shape[2]!;
  if (NKV === 0 || NH % NKV !== 0) throw new ShapeError(`${op}: NH=${NH} query heads (q ${q}) must be a multiple of NKV=${NKV} kv heads (k ${k})`);
  expectShape(op, 'v', v, [B, T, NKV, HS]);
  if (HS % 2 !== 0 || HS < 2 || HS > MAX_HS) {
    throw new ShapeError(`${op}: head size HS=${HS} (q ${q}) is not supported: use an even HS from 2 to ${MAX_HS}`);
  }
  if ((pk === undefined) !== (pv === undefined)) throw new ShapeError(`${op}: give both pk and pv or neither`);
  let P = 0;
  if (pk && pv) {
    expectShape(op, 'pk', pk, [B, -1, NKV, HS]);
    P = pk.shape[1]!;
    expectShape(op, 'pv', pv, [B, P, NKV, HS]);
  }
  for (const [n, t] of [['q', q], ['k', k], ['v', v], ['pk', pk], ['pv', pv]] as const) if (t) expectDtype(op, n, t, DTYPES);
  return { B, T, NH, NKV, HS, P };
}

/** Uniform values shared by every attention kernel. */
export function paramValues(s: AttentionShape, opts: AttentionOptions): Record<string, number> {
  const scale = opts.scale ?? 1 / Math.sqrt(s.HS);
  return { T: s.T, NH: s.NH, NKV: s.NKV, G: s.NH / s.NKV, P: s.P, causal: opts.causal === false ? 0 : 1, qscale: scale * Math.LOG2E, scale };
}

// ---------------------------------------------------------------- tiles

export interface Tile {
  /** rows of the thread grid's first axis (queries, or keys in the dk/dv kernel) */
  BR: number;
  /** rows of the second axis (keys, or queries in the dk/dv kernel) */
  BC: number;
}

/** The first tile whose workgroup memory fits this device. */
export function pickTile(gpu: Gpu, op: string, HS: number, candidates: readonly Tile[], bytes: (t: Tile, HS4: number) => number): Tile {
  const limit = gpu.limits['maxComputeWorkgroupStorageSize'] ?? 16384;
  const HS4 = Math.ceil(HS / 4);
  const t = candidates.find((c) => bytes(c, HS4) <= limit);
  if (!t) throw new LimitError(`${op}: HS=${HS} needs more workgroup memory than this device's ${limit} bytes`);
  return t;
}

/** largest power of two dividing n (the xor swizzles stay inside a row of HS4 vec4 slots) */
export const pow2Divisor = (n: number): number => n & -n;

/** `d4 ^ (row & mask)`, or d4 when the mask is 0 */
export const swz = (d4: string, row: string, mask: number): string => (mask > 0 ? `((${d4}) ^ (${row} & ${mask}u))` : d4);

/**
 * Constants of a kernel over query blocks (forward, dq): RG x CG threads, thread (rg, cg) owning
 * rows rg*4..+3 and the column slices cg + CG*i (i < NV) of rows of HS4 vec4 slots; KM is the
 * swizzle mask of the key tiles, PM that of the transposed (key, row group) tile.
 */
export function queryTile(HS: number, tile: Tile) {
  const HS4 = Math.ceil(HS / 4);
  const { BR, BC } = tile;
  const RG = BR / 4;
  const CG = BC / 4;
  const NV = Math.ceil(HS4 / CG);
  return {
    HS4,
    BR,
    BC,
    RG,
    CG,
    NT: RG * CG,
    NV,
    KM: Math.min(CG, pow2Divisor(HS4)) - 1,
    PM: Math.min(CG, RG) - 1,
    /** (row, column slice) of each of a thread's accumulators */
    acc: R4.flatMap((r) => range(NV).map((i) => [r, i] as const)),
    /** WGSL `st`, skipped for a column slice past HS4 (small HS leaves some idle) */
    col: (i: number, st: string) => ((i + 1) * CG > HS4 ? `if (cg + ${CG * i}u < ${HS4}u) { ${st} }` : st),
  };
}

// ---------------------------------------------------------------- row access

/** storage dtype codes: kernels read them from the uniform block, so one pipeline serves every dtype */
const DT: Readonly<Record<DType, number>> = { f32: 0, f16: 1, bf16: 2 };

/** the uniform fields `dt_<name>` for these bindings */
export const dtParams = (names: readonly string[]): ParamSpec => names.map((n) => [`dt_${n}`, 'u32'] as const);
export const dtValues = (op: string, ts: Readonly<Record<string, Tensor>>): Record<string, number> =>
  Object.fromEntries(Object.entries(ts).map(([n, t]) => [`dt_${n}`, DT[floatDtype(op, n, t)]]));

/** a float tensor bound as raw words; ldv_/stv_ decode by p.dt_<name> */
export const raw = (name: string, write = false): BindingDecl => ({ name, type: 'u32', access: write ? 'read_write' : 'read' });

export const PACK16 = /* wgsl */ `
fn unpack16(w: u32, dt: u32) -> vec2<f32> {
  if (dt == 1u) { return unpack2x16float(w); }
  return vec2<f32>(bf16_lo(w), bf16_hi(w));
}
fn pack16(a: vec2<f32>, dt: u32) -> u32 {
  if (dt == 1u) { return pack2x16float(a); }
  return pack_bf16(a.x, a.y);
}
// words from raw_<name> to 4 floats: f32 uses all four, f16/bf16 the first two. branch-free
// (lavapipe compiles uniform branches as masked code, and these are inlined many times)
fn dec(w: vec4<u32>, dt: u32) -> vec4<f32> {
  let h = vec4<u32>(w.x << 16u, w.x & 0xffff0000u, w.y << 16u, w.y & 0xffff0000u);
  let b16 = select(bitcast<vec4<f32>>(h), vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)), dt == 1u);
  return select(b16, bitcast<vec4<f32>>(w), dt == 0u);
}
// the same with branches: fewer instructions on a GPU, for code that is not unrolled
fn decb(w: vec4<u32>, dt: u32) -> vec4<f32> {
  if (dt == 0u) { return bitcast<vec4<f32>>(w); }
  return vec4<f32>(unpack16(w.x, dt), unpack16(w.y, dt));
}`;

/**
 * WGSL raw_<name>(base, d4) -> vec4<u32>: the storage words of elements base+4*d4 .. +3 of a
 * row of HS elements (zero words past HS), undecoded so that they can wait in registers,
 * branch-free; rawb_<name>, the same with branches; ldv_<name>(base, d4) -> vec4<f32>, decoded
 * by p.dt_<name>. base is even (HS is even).
 */
export function rowLoad(name: string, HS: number): string {
  const HS4 = Math.ceil(HS / 4);
  // f32 reads words i..i+3; f16/bf16 read words i/2, i/2+1 (twice: the repeats hit the cache)
  const half = HS % 4 !== 0;
  return `fn raw_${name}(base: u32, d4: u32) -> vec4<u32> {
  let i = base + 4u * d4;
  let f = p.dt_${name} == 0u;
  let j = select(i >> 1u, i, f);
  let w = vec4<u32>(${name}[j], ${name}[j + 1u], ${name}[select(j, j + 2u, f)], ${name}[select(j + 1u, j + 3u, f)]);
  ${half ? `if (d4 == ${HS4 - 1}u) { return select(vec4<u32>(w.x, 0u, 0u, 0u), vec4<u32>(w.xy, 0u, 0u), f); }` : ''}
  return w;
}
fn rawb_${name}(base: u32, d4: u32) -> vec4<u32> {
  let i = base + 4u * d4;
  if (p.dt_${name} == 0u) {
    ${half ? `if (d4 == ${HS4 - 1}u) { return vec4<u32>(${name}[i], ${name}[i + 1u], 0u, 0u); }` : ''}
    return vec4<u32>(${name}[i], ${name}[i + 1u], ${name}[i + 2u], ${name}[i + 3u]);
  }
  ${half ? `if (d4 == ${HS4 - 1}u) { return vec4<u32>(${name}[i >> 1u], 0u, 0u, 0u); }` : ''}
  return vec4<u32>(${name}[i >> 1u], ${name}[(i >> 1u) + 1u], 0u, 0u);
}
fn ldv_${name}(base: u32, d4: u32) -> vec4<f32> { return decb(rawb_${name}(base, d4), p.dt_${name}); }`;
}

/**
 * Without a prefix (P = 0) the prefix tensors are not bound at all: a dispatch then stays within
 * browsers' storage-buffer limits (8 or 10 per stage). the code that would touch them is still
 * generated but never runs (every combined key index is >= P); these stand in for their loads
 * and stores.
 */
export const rowLoadStub = (name: string): string =>
  `fn raw_${name}(base: u32, d4: u32) -> vec4<u32> { return vec4<u32>(); }
fn rawb_${name}(base: u32, d4: u32) -> vec4<u32> { return vec4<u32>(); }
fn ldv_${name}(base: u32, d4: u32) -> vec4<f32> { return vec4<f32>(); }`;
export const rowStoreStub = (name: string): string => `fn stv_${name}(base: u32, d4: u32, v: vec4<f32>) {}`;

/** the row loaders of these bindings: real ones, or stubs for absent prefix tensors */
export const rowLoads = (names: readonly string[], HS: number, prefix: boolean): string =>
  names.map((n) => (!prefix && (n === 'pk' || n === 'pv') ? rowLoadStub(n) : rowLoad(n, HS))).join('\n');

/** WGSL stv_<name>(base, d4, v): stores v to elements base+4*d4 .. +3 of a row, whole words, stopping at HS. */
export function rowStore(name: string, HS: number): string {
  const HS4 = Math.ceil(HS / 4);
  const full = HS % 4 !== 0 ? `d4 != ${HS4 - 1}u` : 'true';
  return `fn stv_${name}(base: u32, d4: u32, v: vec4<f32>) {
  let i = base + 4u * d4;
  let dt = p.dt_${name};
  if (dt == 0u) {
    ${name}[i] = bitcast<u32>(v.x);
    ${name}[i + 1u] = bitcast<u32>(v.y);
    if (${full}) { ${name}[i + 2u] = bitcast<u32>(v.z); ${name}[i + 3u] = bitcast<u32>(v.w); }
    return;
  }
  ${name}[i >> 1u] = pack16(v.xy, dt);
  if (${full}) { ${name}[(i >> 1u) + 1u] = pack16(v.zw, dt); }
}`;
}

/** WGSL keep(c, t): combined key c is visible to query t */
export const KEEP = /* wgsl */ `
fn keep(c: u32, t: u32) -> bool {
  if (c < p.P) { return true; }
  let j = c - p.P;
  return j < p.T && (p.causal == 0u || j <= t);
}`;

/**
 * Moving a tile of `rows` rows of HS elements into workgroup memory `dst` ([row][d4 ^ (row &
 * mask)], zeros outside the tensor) in two steps, so that the global latency hides behind
 * math: WGSL fetch_<id>(e, ...) -> vec4<u32> reads the raw words of tile element e (row e/HS4,
 * slot e%HS4) into registers; put_<id>(e, at, w) decodes and stores them. `at` is the tile's
 * first row; element e of a thread is tid + k*NT (see tileRegs).
 *   keys:    rows are combined keys at..at+rows-1 of kv head kvh: prefix `pre` below P, then `seq`
 *   queries: rows are tokens at..at+rows-1 of head h of a (B,T,NH,HS) tensor, times `mul`
 * `unrolled`: the calls get unrolled (tileRegs), so use the branch-free raw/dec (see dec).
 */
export function keyTileIo(id: string, dst: string, seq: string, pre: string, HS: number, mask: number, unrolled = false): string {
  const HS4 = Math.ceil(HS / 4);
  const [raw, dec] = unrolled ? ['raw', 'dec'] : ['rawb', 'decb'];
  return `fn fetch_${id}(e: u32, b: u32, kvh: u32, at: u32) -> vec4<u32> {
  let c = at + e / ${HS4}u;
  let d4 = e % ${HS4}u;
  if (c < p.P) { return ${raw}_${pre}(((b * p.P + c) * p.NKV + kvh) * ${HS}u, d4); }
  if (c - p.P < p.T) { return ${raw}_${seq}(((b * p.T + c - p.P) * p.NKV + kvh) * ${HS}u, d4); }
  return vec4<u32>(0u);
}
fn put_${id}(e: u32, at: u32, w: vec4<u32>) {
  let r = e / ${HS4}u;
  ${dst}[r * ${HS4}u + ${swz(`e % ${HS4}u`, 'r', mask)}] = ${dec}(w, select(p.dt_${seq}, p.dt_${pre}, at + r < p.P));
}`;
}

export function queryTileIo(id: string, dst: string, src: string, HS: number, mask: number, mul = '', unrolled = false): string {
  const HS4 = Math.ceil(HS / 4);
  const [raw, dec] = unrolled ? ['raw', 'dec'] : ['rawb', 'decb'];
  return `fn fetch_${id}(e: u32, b: u32, h: u32, at: u32) -> vec4<u32> {
  let t = at + e / ${HS4}u;
  if (t < p.T) { return ${raw}_${src}(((b * p.T + t) * p.NH + h) * ${HS}u, e % ${HS4}u); }
  return vec4<u32>(0u);
}
fn put_${id}(e: u32, w: vec4<u32>) {
  let r = e / ${HS4}u;
  ${dst}[r * ${HS4}u + ${swz(`e % ${HS4}u`, 'r', mask)}] = ${dec}(w, p.dt_${src})${mul};
}`;
}

/**
 * Per-thread registers for a tile of `total` elements over NT threads: declarations, and the
 * fetch and put statements (`args` follow e in fetch_<id>; `put` args follow e).
 */
export function tileRegs(id: string, total: number, NT: number) {
  const n = Math.ceil(total / NT);
  const each = (f: (k: number, e: string) => string) =>
    range(n)
      .map((k) => {
        const e = `tid + ${NT * k}u`;
        return (k + 1) * NT > total ? `if (${e} < ${total}u) { ${f(k, e)} }` : f(k, e);
      })
      .join(' ');
  return {
    decl: range(n)
      .map((k) => `var w${id}${k} = vec4<u32>(0u);`)
      .join(' '),
    fetch: (args: string) => each((k, e) => `w${id}${k} = fetch_${id}(${e}, ${args});`),
    put: (args: string) => each((k, e) => `put_${id}(${e}, ${args}${args ? ', ' : ''}w${id}${k});`),
  };
}

/** Direct (unprefetched) tile load through the same fetch/put pair: WGSL statements. */
export const tileLoad = (id: string, total: number, NT: number, fetchArgs: string, putArgs: string): string =>
  `for (var e = tid; e < ${total}u; e += ${NT}u) { put_${id}(e, ${putArgs}${putArgs ? ', ' : ''}fetch_${id}(e, ${fetchArgs})); }`;

export const VEC_HELPERS = /* wgsl */ `
const NEG = -3.0e38;
const LN2 = 0.6931471805599453;
const LOG2E = 1.4426950408889634;
fn hmax(x: vec4<f32>) -> f32 { return max(max(x.x, x.y), max(x.z, x.w)); }
fn hsum(x: vec4<f32>) -> f32 { return (x.x + x.y) + (x.z + x.w); }`;

/**
 * WGSL for acc += vec4(dot(a, b0), dot(a, b1), dot(a, b2), dot(a, b3)) as four fma's (one per
 * component of a) against `${b}T0..3`, the transposes made by transpose4(b): no horizontal adds.
 */
export const outer = (acc: string, a: string, b: string): string =>
  R4.map((c) => `${acc} = fma(vec4<f32>(${a}.${C4[c]}), ${b}T${c}, ${acc});`).join(' ');

/** WGSL `let ${b}T<c> = vec4(b0.c, b1.c, b2.c, b3.c)` for c in xyzw */
export const transpose4 = (b: string): string =>
  R4.map((c) => `let ${b}T${c} = vec4<f32>(${R4.map((j) => `${b}${j}.${C4[c]}`).join(', ')});`).join(' ');

// ---------------------------------------------------------------- forward

/** forward tiles (BR queries, BC keys), best first; workgroup memory BR*HS + BC*HS + BC*BR floats */
const FWD_TILES: readonly Tile[] = [
  { BR: 64, BC: 32 },
  { BR: 32, BC: 32 },
  { BR: 32, BC: 16 },
  { BR: 16, BC: 16 },
];
const fwdBytes = (t: Tile, HS4: number) => 16 * (t.BR * HS4 + t.BC * HS4 + (t.BC * t.BR) / 4);

const FWD_PARAMS: ParamSpec = [...PARAMS, ...dtParams(['out', 'q', 'k', 'v', 'pk', 'pv'])];

function forwardWgsl(HS: number, tile: Tile, prefix: boolean): string {
  // KM swizzles the k tile, PM the p^T tile
  const { HS4, BR, BC, RG, CG, NT, NV, KM, PM, acc, col } = queryTile(HS, tile);
  const cols = (f: (i: number) => string) =>
    range(NV)
      .map((i) => col(i, f(i)))
      .join('\n      ');
  const rows = (f: (r: number) => string, sep = '\n    ') => R4.map(f).join(sep);
  return /* wgsl */ `
${header([raw('out', true), { name: 'lse', type: 'f32', access: 'read_write' }, raw('q'), raw('k'), raw('v'), ...(prefix ? [raw('pk'), raw('pv')] : [])], FWD_PARAMS)}
${VEC_HELPERS}
${PACK16}
${KEEP}
${rowLoads(['q', 'k', 'v', 'pk', 'pv'], HS, prefix)}
${rowStore('out', HS)}
var<workgroup> sq: array<vec4<f32>, ${BR * HS4}>;  // q tile * scale*log2(e): [row][d4]
var<workgroup> skv: array<vec4<f32>, ${BC * HS4}>; // k tile [key][d4 ^ (key & ${KM})], then v tile [key][d4]
var<workgroup> sp: array<vec4<f32>, ${BC * RG}>;   // p^T [key][row group ^ (key & ${PM})], 4 rows a vec4; row partials
${queryTileIo('q', 'sq', 'q', HS, 0, ' * p.qscale')}
${keyTileIo('k', 'skv', 'k', 'pk', HS, KM)}
${keyTileIo('v', 'skv', 'v', 'pv', HS, 0)}

@compute @workgroup_size(${NT})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let b = wid.x / p.NH;
  let h = wid.x % p.NH;
  let kvh = h / p.G;
  let q0 = (nwg.y - 1u - wid.y) * ${BR}u;  // latest (longest) query blocks start first
  let rg = tid / ${CG}u;
  let cg = tid % ${CG}u;
  let r0 = q0 + rg * 4u;
  ${tileLoad('q', BR * HS4, NT, 'b, h, q0', '')}
  var kend = p.P + p.T;  // combined keys this block can see
  if (p.causal != 0u) { kend = p.P + min(p.T, q0 + ${BR}u); }
  var m = vec4<f32>(NEG);   // running max of rows r0..r0+3 (log2 units)
  var l = vec4<f32>(0.0);   // this thread's share of the running sums
  ${acc.map(([r, i]) => `var o${r}${i} = vec4<f32>(0.0);`).join(' ')}
  for (var c0 = 0u; c0 < kend; c0 += ${BC}u) {
    ${tileLoad('k', BC * HS4, NT, 'b, kvh, c0', 'c0')}
    workgroupBarrier();
    ${rows((r) => `var s${r} = vec4<f32>(0.0);`, ' ')}
    for (var d4 = 0u; d4 < ${HS4}u; d4++) {
      let kx = ${swz('d4', 'cg', KM)};
      ${R4.map((j) => `let k${j} = skv[(cg + ${CG * j}u) * ${HS4}u + kx];`).join(' ')}
      ${rows((r) => `let a${r} = sq[(rg * 4u + ${r}u) * ${HS4}u + d4];`, ' ')}
      ${transpose4('k')}
      ${rows((r) => outer(`s${r}`, `a${r}`, 'k'), '\n      ')}
    }
    if (c0 + ${BC}u > p.P + p.T || (p.causal != 0u && c0 + ${BC}u > p.P + q0 + 1u)) {
      ${R4.map((j) => `let kc${j} = c0 + cg + ${CG * j}u;`).join(' ')}
      ${R4.map((j) => rows((r) => `s${r}.${C4[j]} = select(NEG, s${r}.${C4[j]}, keep(kc${j}, r0 + ${r}u));`, ' ')).join('\n      ')}
    }
    sp[cg * ${RG}u + rg] = vec4<f32>(hmax(s0), hmax(s1), hmax(s2), hmax(s3));
    workgroupBarrier();  // the k tile is dead
    var mt = m;
    for (var c = 0u; c < ${CG}u; c++) { mt = max(mt, sp[c * ${RG}u + rg]); }
    let alpha = exp2(m - mt);
    m = mt;
    ${rows((r) => `let p${r} = exp2(s${r} - mt.${C4[r]});`, ' ')}
    l = l * alpha + vec4<f32>(hsum(p0), hsum(p1), hsum(p2), hsum(p3));
    ${acc.map(([r, i]) => `o${r}${i} *= alpha.${C4[r]};`).join(' ')}
    ${tileLoad('v', BC * HS4, NT, 'b, kvh, c0', 'c0')}
    workgroupBarrier();  // every thread has read the row maxes: p^T may overwrite them
    ${R4.map((j) => `sp[(cg + ${CG * j}u) * ${RG}u + ${swz('rg', 'cg', PM)}] = vec4<f32>(p0.${C4[j]}, p1.${C4[j]}, p2.${C4[j]}, p3.${C4[j]});`).join('\n    ')}
    workgroupBarrier();
    for (var key = 0u; key < ${BC}u; key++) {
      let w = sp[key * ${RG}u + ${swz('rg', 'key', PM)}];
      ${cols((i) => `let x${i} = skv[key * ${HS4}u + cg + ${CG * i}u]; ${rows((r) => `o${r}${i} += w.${C4[r]} * x${i};`, ' ')}`)}
    }
    workgroupBarrier();
  }
  sp[cg * ${RG}u + rg] = l;
  workgroupBarrier();
  var lt = vec4<f32>(0.0);
  for (var c = 0u; c < ${CG}u; c++) { lt += sp[c * ${RG}u + rg]; }
  let inv = 1.0 / lt;
  // normalized rows go through sq (free now) so that whole rows are stored by all threads
  ${acc.map(([r, i]) => col(i, `sq[(rg * 4u + ${r}u) * ${HS4}u + cg + ${CG * i}u] = o${r}${i} * inv.${C4[r]};`)).join('\n  ')}
  if (cg == 0u) {
    ${rows((r) => `if (r0 + ${r}u < p.T) { lse[(b * p.NH + h) * p.T + r0 + ${r}u] = (m.${C4[r]} + log2(lt.${C4[r]})) * LN2; }`)}
  }
  workgroupBarrier();
  for (var e = tid; e < ${BR * HS4}u; e += ${NT}u) {
    let r = e / ${HS4}u;
    if (q0 + r < p.T) { stv_out(((b * p.T + q0 + r) * p.NH + h) * ${HS}u, e % ${HS4}u, sq[e]); }
  }
}`;
}

/**
 * out = softmax(scale q k^T, causal, prefix first) v; saves lse (B,NH,T), the natural-log
 * logsumexp of each row's scores, for the backward pass.
 */
export async function attentionForward(
  gpu: Gpu,
  o: { out: Tensor; lse: Tensor },
  i: { q: Tensor; k: Tensor; v: Tensor; pk?: Tensor; pv?: Tensor },
  opts: AttentionOptions = {},
): Promise<void> {
  const op = 'attentionForward';
  const s = attentionShape(op, i.q, i.k, i.v, i.pk, i.pv);
  expectShape(op, 'out', o.out, i.q.shape);
  expectDtype(op, 'out', o.out, DTYPES);
  expectShape(op, 'lse', o.lse, [s.B, s.NH, s.T]);
  expectDtype(op, 'lse', o.lse, ['f32']);
  if (s.B * s.T === 0) return;
  const tile = pickTile(gpu, op, s.HS, FWD_TILES, fwdBytes);
  // without a prefix the kernel binds no pk/pv (rowLoadStub); their dtype codes are unused
  const prefix = s.P > 0;
  const pk = i.pk ?? i.k;
  const pv = i.pv ?? i.v;
  await launch(gpu, {
    name: `attention_forward_hs${s.HS}_${tile.BR}x${tile.BC}${prefix ? '' : '_nopre'}`,
    wgsl: forwardWgsl(s.HS, tile, prefix),
    storage: prefix ? [o.out, o.lse, i.q, i.k, i.v, pk, pv] : [o.out, o.lse, i.q, i.k, i.v],
    params: FWD_PARAMS,
    values: { ...paramValues(s, opts), ...dtValues(op, { out: o.out, q: i.q, k: i.k, v: i.v, pk, pv }) },
    workgroups: [s.B * s.NH, Math.ceil(s.T / tile.BR)],
  });
}
