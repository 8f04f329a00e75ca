// what the attention kernels share: options and shape checks, the uniform blocks and storage
// bindings of each kernel (one interface per kernel, whichever mapping implements it), row loads
// and stores that decode the storage dtype at run time, the visibility rule, and the tile
// plumbing of the GPU mappings. the kernels: attention_forward.ts and attention_backward.ts (GPU
// mappings: tiles in workgroup memory), attention_cpu.ts (CPU-adapter mappings: a row per thread).
//
// keys live in one combined index c in [0, np+T) of a workgroup: c < np is prefix row po+c of
// pk (po, np: the workgroup's window into pk's PR rows), c >= np is sequence key c-np (seen by
// queries t >= c-np when causal). without chunks (PC = 0) po = 0 and np = P = PR: every query
// sees every prefix row. with a chunked prefix (PC = C > 0) pk holds ceil(T/C) blocks of P rows
// and query t sees only block floor(t/C), rows [floor(t/C) P, +P): the forward and dq kernels
// take as window the blocks of the chunks their queries span (po = first chunk * P, np = P
// times the chunks spanned: P when the query block stays inside one chunk, no masked prefix
// work then), the dk/dv kernels the whole of pk (po = 0, np = PR), and keep() masks a prefix
// row whose chunk (its pk row / P) is not the query's (t / C).
// storage dtypes, the prefix length and the chunk size are uniforms, not specializations: one
// pipeline per (HS, tile) serves every dtype mix and prefix layout (lavapipe needs seconds to
// compile each of these kernels).

import type { Gpu } from '../../gpu/device.ts';
import { DTYPES, type DType } from '../../gpu/dtype.ts';
import { LimitError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDtype, expectShape, floatDtype, type BindingDecl, type ParamSpec } from '../kernel.ts';

export interface AttentionOptions {
  /** score scale; default 1/sqrt(HS) */
  scale?: number;
  /** mask keys after the query (the prefix is never masked); default true */
  causal?: boolean;
  /**
   * chunked prefix: C queries per chunk (default 0: one prefix that every query sees). with
   * C > 0, pk/pv hold ceil(T/C) consecutive blocks of P rows, (B, ceil(T/C)*P, NKV, HS), and
   * query t sees only block floor(t/C). P is derived (pk rows / ceil(T/C), which must divide).
   */
  prefixChunk?: number;
  /**
   * forward only, unchunked: the keys are pk/pv's first prefixLen rows of each batch row (the
   * rest is ignored; default all). a batched KV cache binds whole (B, front + max, NKV, HS)
   * buffers, so its batch rows lie front + max rows apart while only the filled rows are keys.
   */
  prefixLen?: number;
}

export interface AttentionShape {
  B: number;
  T: number;
  NH: number;
  NKV: number;
  HS: number;
  /** prefix keys each query sees (0 when pk/pv are absent): pk's rows (or prefixLen of them), or a chunk's block */
  P: number;
  /** rows of pk per batch row: P (or more, with prefixLen), or ceil(T/C) * P with a chunked prefix */
  PR: number;
  /** queries per prefix chunk, 0 for an unchunked prefix (also 0 without a prefix) */
  PC: number;
}

/** largest head size the kernels support (any even HS from 2 up to this) */
export const MAX_HS = 128;

export const PARAMS: ParamSpec = [
  ['T', 'u32'],
  ['NH', 'u32'],
  ['NKV', 'u32'],
  ['G', 'u32'],
  ['P', 'u32'],
  ['PR', 'u32'],
  ['PC', 'u32'],
  ['causal', 'u32'],
  ['qscale', 'f32'],
  ['scale', 'f32'],
];

export const C4 = ['x', 'y', 'z', 'w'] as const;
export const R4 = [0, 1, 2, 3] as const;
export const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** Validates q, k, v and the optional prefix (chunked with prefixChunk > 0, or the first prefixLen rows); returns the dimensions. */
export function attentionShape(op: string, q: Tensor, k: Tensor, v: Tensor, pk?: Tensor, pv?: Tensor, prefixChunk = 0, prefixLen?: number): AttentionShape {
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
  const C = prefixChunk;
  if (!Number.isInteger(C) || C < 0) throw new ShapeError(`${op}: prefixChunk=${C} should be a whole number of queries (0: unchunked)`);
  let P = 0;
  let PR = 0;
  if (pk && pv) {
    expectShape(op, 'pk', pk, [B, -1, NKV, HS]);
    PR = pk.shape[1]!;
    expectShape(op, 'pv', pv, [B, PR, NKV, HS]);
    // T = 0 has no chunk: take pk as one block (nothing is computed)
    const chunks = C > 0 ? Math.max(1, Math.ceil(T / C)) : 1;
    if (PR % chunks !== 0) {
      throw new ShapeError(`${op}: pk ${pk} should have ceil(T/C)*P rows, a block of P per chunk: T=${T} queries in chunks of prefixChunk=${C} make ${chunks} chunks, which do not divide ${PR}`);
    }
    P = PR / chunks;
    if (prefixLen !== undefined) {
      if (C > 0) throw new ShapeError(`${op}: prefixLen applies to an unchunked prefix; prefixChunk=${C} was given too`);
      if (!(Number.isInteger(prefixLen) && prefixLen >= 0 && prefixLen <= PR)) throw new ShapeError(`${op}: prefixLen=${prefixLen} should be a whole number of pk's ${PR} rows per batch row (pk ${pk})`);
      P = prefixLen;
    }
  } else if (prefixLen !== undefined) {
    throw new ShapeError(`${op}: prefixLen=${prefixLen} without pk and pv`);
  }
  for (const [n, t] of [['q', q], ['k', k], ['v', v], ['pk', pk], ['pv', pv]] as const) if (t) expectDtype(op, n, t, DTYPES);
  return { B, T, NH, NKV, HS, P, PR, PC: P > 0 ? C : 0 };
}

/** Uniform values shared by every attention kernel. */
export function paramValues(s: AttentionShape, opts: AttentionOptions): Record<string, number> {
  const scale = opts.scale ?? 1 / Math.sqrt(s.HS);
  return { T: s.T, NH: s.NH, NKV: s.NKV, G: s.NH / s.NKV, P: s.P, PR: s.PR, PC: s.PC, causal: opts.causal === false ? 0 : 1, qscale: scale * Math.LOG2E, scale };
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
 * generated but never runs (every combined key index is >= np = 0); these stand in for their loads
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

/**
 * WGSL keep(c, t, np, po): combined key c is visible to query t, for the workgroup's prefix
 * window np, po (see the top of this file; locals of main, passed on: the uniformity analysis
 * takes module-scope private variables for non-uniform, and loop bounds derive from them)
 */
export const KEEP = /* wgsl */ `
fn keep(c: u32, t: u32, np: u32, po: u32) -> bool {
  if (c < np) { return p.PC == 0u || (po + c) / p.P == t / p.PC; }
  let j = c - np;
  return j < p.T && (p.causal == 0u || j <= t);
}`;

/**
 * WGSL statements declaring np, po (vars) for the queries t0 .. min(t0 + n, T) - 1 of a
 * forward or dq workgroup: the blocks of the chunks they span (a block may straddle chunks)
 */
export const queryWindow = (t0: string, n: number): string =>
  `var np = p.P;  // combined keys below np are prefix rows
  var po = 0u;    // pk row (in a batch row) of combined key 0
  if (p.PC != 0u) { let ch0 = ${t0} / p.PC; po = ch0 * p.P; np = ((min(${t0} + ${n}u, p.T) - 1u) / p.PC - ch0 + 1u) * p.P; }`;

/**
 * WGSL statements declaring tstart, tend (vars): the queries that can see some combined key of
 * c0 .. c0+n-1 (a dk/dv block, np = PR), tstart rounded down to a multiple of \`align\`: with a
 * chunked prefix and only prefix keys, the chunks of those keys; from the block's first
 * sequence key on when causal; else (a block with sequence key 0, or unchunked) all
 */
export const keyQueries = (c0: string, n: number, align: number): string => {
  const down = (x: string) => (align > 1 ? `${x} / ${align}u * ${align}u` : x);
  return `var tstart = 0u;
  var tend = p.T;
  if (${c0} + ${n}u <= np) {
    if (p.PC != 0u) { tstart = ${down(`${c0} / p.P * p.PC`)}; tend = min(p.T, ((${c0} + ${n - 1}u) / p.P + 1u) * p.PC); }
  } else if (p.causal != 0u && ${c0} > np) { tstart = ${down(`(${c0} - np)`)}; }`;
};

/**
 * Moving a tile of `rows` rows of HS elements into workgroup memory `dst` ([row][d4 ^ (row &
 * mask)], zeros outside the tensor) in two steps, so that the global latency hides behind
 * math: WGSL fetch_<id>(e, ...) -> vec4<u32> reads the raw words of tile element e (row e/HS4,
 * slot e%HS4) into registers; put_<id>(e, at, w) decodes and stores them. `at` is the tile's
 * first row; element e of a thread is tid + k*NT (see tileRegs).
 *   keys:    rows are combined keys at..at+rows-1 of kv head kvh: prefix `pre` below np (pk rows po+c; np, po follow `at` in fetch_<id>, np in put_<id>), then `seq`
 *   queries: rows are tokens at..at+rows-1 of head h of a (B,T,NH,HS) tensor, times `mul`
 * `unrolled`: the calls get unrolled (tileRegs), so use the branch-free raw/dec (see dec).
 */
export function keyTileIo(id: string, dst: string, seq: string, pre: string, HS: number, mask: number, unrolled = false): string {
  const HS4 = Math.ceil(HS / 4);
  const [raw, dec] = unrolled ? ['raw', 'dec'] : ['rawb', 'decb'];
  return `fn fetch_${id}(e: u32, b: u32, kvh: u32, at: u32, np: u32, po: u32) -> vec4<u32> {
  let c = at + e / ${HS4}u;
  let d4 = e % ${HS4}u;
  if (c < np) { return ${raw}_${pre}(((b * p.PR + po + c) * p.NKV + kvh) * ${HS}u, d4); }
  if (c - np < p.T) { return ${raw}_${seq}(((b * p.T + c - np) * p.NKV + kvh) * ${HS}u, d4); }
  return vec4<u32>(0u);
}
fn put_${id}(e: u32, at: u32, np: u32, w: vec4<u32>) {
  let r = e / ${HS4}u;
  ${dst}[r * ${HS4}u + ${swz(`e % ${HS4}u`, 'r', mask)}] = ${dec}(w, select(p.dt_${seq}, p.dt_${pre}, at + r < np));
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


// ---------------------------------------------------------------- kernel interfaces

// each kernel's uniform block and storage bindings, the same for its GPU and CPU mappings.
// without a prefix (P = 0) the prefix tensors are not bound (see rowLoadStub)

const f32Rw = (name: string): BindingDecl => ({ name, type: 'f32', access: 'read_write' });
const f32R = (name: string): BindingDecl => ({ name, type: 'f32', access: 'read' });
const pre = (prefix: boolean, ...names: string[]): BindingDecl[] => (prefix ? names.map((n) => raw(n)) : []);

export const FWD_PARAMS: ParamSpec = [...PARAMS, ...dtParams(['out', 'q', 'k', 'v', 'pk', 'pv'])];
export const fwdBindings = (prefix: boolean): BindingDecl[] => [raw('out', true), f32Rw('lse'), raw('q'), raw('k'), raw('v'), ...pre(prefix, 'pk', 'pv')];

export const DQ_PARAMS: ParamSpec = [...PARAMS, ...dtParams(['dq', 'q', 'k', 'v', 'pk', 'pv', 'dout'])];
export const dqBindings = (prefix: boolean): BindingDecl[] => [
  raw('dq', true),
  raw('q'),
  raw('k'),
  raw('v'),
  ...pre(prefix, 'pk', 'pv'),
  raw('dout'),
  f32R('lse'),
  f32R('dsum'),
];

export const DKV_PARAMS: ParamSpec = [...PARAMS, ...dtParams(['dk', 'dv', 'dpk', 'dpv', 'q', 'k', 'v', 'pk', 'pv', 'dout'])];
export const dkvBindings = (prefix: boolean): BindingDecl[] => [
  raw('dk', true),
  raw('dv', true),
  ...(prefix ? [raw('dpk', true), raw('dpv', true)] : []),
  raw('q'),
  raw('k'),
  raw('v'),
  ...pre(prefix, 'pk', 'pv'),
  raw('dout'),
  f32R('lse'),
  f32R('dsum'),
];

/** the stores of the dk/dv kernels: real ones, or stubs for the absent prefix gradients */
export const dkvStores = (HS: number, prefix: boolean): string =>
  ['dk', 'dv', 'dpk', 'dpv'].map((n) => (!prefix && n.startsWith('dp') ? rowStoreStub(n) : rowStore(n, HS))).join('\n');
