// memory bag: the weighted value-row read of the product-key memory layer (torch EmbeddingBag,
// mode sum, per-sample weights), forward and backward, over a value table split into chunks.
//
//   forward   out (T,d)  = sum_{j<B} w[t,j] * V[idx[t,j]]            (=; out f32/f16/bf16)
//   backward  dw (T,B)   = <dout[t], V[idx[t,j]]>                      (=, f32; optional)
//             dV (N,d)  += sum over (t,j) with idx[t,j] = v of w[t,j] * dout[t]
//                                                                     (+=, f32 chunks; optional)
// idx (T,B) u32, w (T,B) f32, dout (T,d) f32/f16/bf16. an idx >= N reads nothing: it adds
// nothing to out, gets dw = 0 and adds nothing to dV. rows of dV no idx names keep their values.
//
// chunks: V (N,d) is stored as row chunks (ValueChunks), chunk c holding rows [c*R, (c+1)*R) as a
// (rows_c, d) tensor, so a table over one storage binding (2 GiB - 4 on the H100) can be read;
// dV uses the same chunking in f32 (pick R with chunkRows(N, d, 'f32', ...) to keep both
// bindable). WGSL cannot index an array of bindings, so each kernel is generated for the number
// of chunks it binds and picks a row's chunk with a switch on idx / R. a kernel binds at most
// maxStorageBuffersPerShaderStage storage buffers (8 on most GPUs, 16 on lavapipe); when the
// chunks do not fit beside the other bindings, each op runs one pass per group of chunks and a
// pass only reads the entries whose rows lie in its group:
//   forward  pass 0 writes, later passes add (into out when it is f32, else into an f32 scratch
//            that the last pass converts into out, so a 16-bit out is rounded once).
//   dw       every entry's row lies in one chunk: pass 0 writes every dw (0 outside its group),
//            later passes overwrite the entries of their group. exact, no sums across passes.
//   dV       a pass adds only the runs of slots in its group into its dV chunks.
//
// forward thread mapping: a workgroup per (token, block of WG units); a unit is E = 4 columns
// (d % 4 == 0: vec4<f32> loads for f32, vec2<u32> = 4 halves for f16/bf16), else 2 (d even) or 1.
// the bag's (chunk, row offset, weight) are staged in workgroup memory WG entries at a time
// (one idx / R per entry, not per thread); each thread then loads its unit of UNROLL rows before
// it adds any (several loads in flight), and writes its unit once.
// dw: a workgroup per token; G threads (a power of two) per bag entry walk the row's units with
// stride G (4 loads in flight), multiply by dout and reduce their partial dots in a fixed tree in
// workgroup memory; 256 / G entries per round.
// dV, sort-and-segment-sum as in embedding.ts (no float atomics; bitwise reproducible):
//   1. sortPairs stably sorts (slot, flat position t*B+j) by slot with bitLength(N) key bits
//      (idx >= N saturate past N - 1 and are skipped): each slot's entries form one run, in
//      order of (t, j).
//   2. segsum: sorted entries cut into blocks of 64; a workgroup per (block, 128-column chunk)
//      sums w * dout rows per run in f32; a run inside the block is added into dV at once, a run
//      cut by the block's start or end leaves its piece in `part` (2 slots a block).
//   3. segsum_join: for each run that starts in a block and goes on past it, one thread per
//      column adds the pieces in block order into dV.
//   every dV element is written by exactly one thread.
// numerics: f32 accumulation everywhere. the forward sums a token's entries in order j = 0..B-1
// (with several passes: each pass's entries in order, passes in order); dw sums each thread's
// units in order, then the fixed tree; dV sums in sorted order within a block, pieces in block
// order. no atomics, no order that depends on scheduling: results are bitwise reproducible.

import type { Gpu } from '../../gpu/device.ts';
import { byteSize, bytesPerElement, isPacked, type DType } from '../../gpu/dtype.ts';
import { EngramError, LimitError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDisjoint, expectDtype, expectShape, floatDtype, grid1d, header, launch, type BindingDecl, type ParamSpec } from '../kernel.ts';
import { sortPairs } from '../sort/sort.ts';

/** a value table as row chunks: chunk c holds rows [c*rowsPerChunk, ...), each [rows_c, dim], one dtype */
export interface ValueChunks {
  chunks: readonly Tensor[];
  rowsPerChunk: number;
  rows: number;
  dim: number;
}

const UNROLL = 4; // forward rows loaded before they are added
const DW_WG = 256; // dw threads per workgroup
const SEG_WG = 64; // segsum threads; each owns 2 columns
const COLS = 2 * SEG_WG; // columns per segsum chunk
const SEG_R = SEG_WG; // sorted entries per block (one load per thread)
const NONE = 0xffffffff; // "row not in this pass" in the forward's staged chunk numbers

/**
 * Rows per chunk for a table of `rows` x `dim` in `dtype` whose chunks fit maxBindingBytes each
 * (pass gpu.limits['maxStorageBufferBindingSize']): the most rows that fit (at most `rows`), so
 * the fewest chunks, all full but the last (2^20 x 1024 bf16 on the H100: 2^20 - 1 rows and 1).
 * For an f32 gradient in the same chunking, ask for 'f32'.
 */
export function chunkRows(rows: number, dim: number, dtype: DType, maxBindingBytes: number): number {
  for (const [what, v] of [['rows', rows], ['dim', dim], ['maxBindingBytes', maxBindingBytes]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new EngramError(`chunkRows: ${what} = ${v}, need a positive integer`);
  }
  let r = Math.min(rows, Math.floor(maxBindingBytes / (dim * bytesPerElement(dtype))));
  while (r > 0 && byteSize(r * dim, dtype) > maxBindingBytes) r--; // packed odd sizes round up a word
  if (r < 1) throw new LimitError(`chunkRows: one row of ${dim} ${dtype} (${dim * bytesPerElement(dtype)} bytes) exceeds ${maxBindingBytes} bytes per binding`);
  return r;
}

// ---------------------------------------------------------------- validation

/** checks a ValueChunks' geometry and its chunks' shapes; returns the chunks' common dtype */
function checkChunks(op: string, what: string, v: ValueChunks): DType {
  for (const [k, x] of [['rows', v.rows], ['rowsPerChunk', v.rowsPerChunk], ['dim', v.dim]] as const) {
    if (!Number.isInteger(x) || x < 1) throw new ShapeError(`${op}: ${what}.${k} = ${x}, need a positive integer`);
  }
  const n = Math.ceil(v.rows / v.rowsPerChunk);
  if (v.chunks.length !== n) {
    throw new ShapeError(`${op}: ${what} has ${v.chunks.length} chunks; ${v.rows} rows at ${v.rowsPerChunk} rows per chunk need ${n}`);
  }
  const dtype = floatDtype(op, `${what}.chunks[0]`, v.chunks[0]!);
  v.chunks.forEach((t, c) => {
    expectShape(op, `${what}.chunks[${c}]`, t, [Math.min(v.rowsPerChunk, v.rows - c * v.rowsPerChunk), v.dim]);
    if (t.dtype !== dtype) throw new ShapeError(`${op}: ${what}.chunks[${c}] ${t} is ${t.dtype}, chunks[0] is ${dtype}; all chunks need one dtype`);
  });
  return dtype;
}

/** idx (T,B) u32 and w (T,B) f32; returns T, B */
function checkBag(op: string, idx: Tensor, w: Tensor): { T: number; B: number } {
  expectShape(op, 'idx', idx, [-1, -1]);
  expectDtype(op, 'idx', idx, ['u32']);
  const [T, B] = idx.shape as [number, number];
  expectShape(op, 'w', w, [T, B]);
  expectDtype(op, 'w', w, ['f32']);
  return { T, B };
}

const storageLimit = (gpu: Gpu): number => gpu.limits['maxStorageBuffersPerShaderStage'] ?? 8;

/** groups of at most `per` consecutive chunks: [first chunk, count] */
function chunkGroups(op: string, gpu: Gpu, chunks: number, fixed: number): [number, number][] {
  const per = storageLimit(gpu) - fixed;
  if (per < 1) throw new LimitError(`${op}: needs ${fixed + 1} storage buffers per shader stage; adapter '${gpu.adapterName}' allows ${storageLimit(gpu)}`);
  const out: [number, number][] = [];
  for (let c0 = 0; c0 < chunks; c0 += per) out.push([c0, Math.min(per, chunks - c0)]);
  return out;
}

// ---------------------------------------------------------------- WGSL pieces

type Unit = 1 | 2 | 4;
/** columns a thread reads as one unit: 4 when d % 4 == 0, else 2 when d is even, else 1 */
const unitOf = (d: number): Unit => (d % 4 === 0 ? 4 : d % 2 === 0 ? 2 : 1);
const accType = (E: Unit): string => (E === 1 ? 'f32' : `vec${E}<f32>`);

/** the storage element of a unit of E columns of `dtype` (E = 1 and 16-bit: the word holding it) */
const rawType = (dtype: DType, E: Unit): string => (dtype === 'f32' ? accType(E) : E === 4 ? 'vec2<u32>' : 'u32');

/**
 * `dec_<dtype>(x, u)`: a unit read as rawType, decoded to f32 (for E = 1 and a 16-bit dtype, u is
 * the element index and picks the half of the word x).
 */
function decoder(dtype: DType, E: Unit): string {
  const bf = dtype === 'bf16';
  let body: string;
  if (dtype === 'f32') body = 'x_';
  else if (E === 4) body = bf ? 'vec4<f32>(bf16_lo(x_.x), bf16_hi(x_.x), bf16_lo(x_.y), bf16_hi(x_.y))' : 'vec4<f32>(unpack2x16float(x_.x), unpack2x16float(x_.y))';
  else if (E === 2) body = bf ? 'vec2<f32>(bf16_lo(x_), bf16_hi(x_))' : 'unpack2x16float(x_)';
  else body = bf ? 'select(bf16_lo(x_), bf16_hi(x_), (u_ & 1u) == 1u)' : 'unpack2x16float(x_)[u_ & 1u]';
  return `fn dec_${dtype}(x_: ${rawType(dtype, E)}, u_: u32) -> ${accType(E)} { return ${body}; }`;
}

/** the storage index of unit u: for E = 1 and a 16-bit dtype, the word holding element u */
const rawIndex = (dtype: DType, E: Unit, u: string): string => (dtype !== 'f32' && E === 1 ? `${u} >> 1u` : u);

/**
 * A binding read (and written) a unit of E elements at a time: `ld_<name>(u) -> acc_t` and, when
 * writable, `st_<name>(u, v)` (not for E = 1 and a 16-bit dtype). needs decoder(dtype, E).
 */
function unitDecl(binding: number, name: string, dtype: DType, E: Unit, access: BindingDecl['access']): string {
  const out = [
    `@group(0) @binding(${binding}) var<storage, ${access}> ${name}: array<${rawType(dtype, E)}>;`,
    `fn ld_${name}(u_: u32) -> ${accType(E)} { return dec_${dtype}(${name}[${rawIndex(dtype, E, 'u_')}], u_); }`,
  ];
  if (access === 'read_write' && (dtype === 'f32' || E > 1)) {
    const pk = (a: string, b: string) => (dtype === 'bf16' ? `pack_bf16(${a}, ${b})` : `pack2x16float(vec2<f32>(${a}, ${b}))`);
    const st = dtype === 'f32' ? 'v_' : E === 4 ? `vec2<u32>(${pk('v_.x', 'v_.y')}, ${pk('v_.z', 'v_.w')})` : pk('v_.x', 'v_.y');
    out.push(`fn st_${name}(u_: u32, v_: ${accType(E)}) { ${name}[u_] = ${st}; }`);
  }
  return out.join('\n');
}

/** the decoders a kernel's unit bindings need, once each */
const decoders = (E: Unit, ...dtypes: DType[]): string => [...new Set(dtypes)].map((t) => decoder(t, E)).join('\n');

/**
 * chunk bindings v0.. from @binding(b0), and `ld_row(c, u)`: unit u of chunk v<c> of this pass,
 * zeros for any other c (NONE). the switch only loads the raw word(s) and the decode follows it
 * once: code size (and lavapipe's compile time) grows with chunks x call sites.
 */
function rowLoader(vdt: DType, E: Unit, nc: number, b0: number): string {
  const decls = Array.from({ length: nc }, (_, c) => `@group(0) @binding(${b0 + c}) var<storage, read> v${c}: array<${rawType(vdt, E)}>;`);
  const cases = Array.from({ length: nc }, (_, c) => `case ${c}u: { x_ = v${c}[i_]; }`).join('\n    ');
  return /* wgsl */ `
${decls.join('\n')}
fn ld_row(c_: u32, u_: u32) -> acc_t {
  let i_ = ${rawIndex(vdt, E, 'u_')};
  var x_ = ${rawType(vdt, E)}(0);
  switch c_ {
    ${cases}
    default: {}
  }
  return dec_${vdt}(x_, u_);
}`;
}

const hsum = (E: Unit): string => (E === 4 ? '(a.x + a.y) + (a.z + a.w)' : E === 2 ? 'a.x + a.y' : 'a');

// ---------------------------------------------------------------- forward

const FWD_PARAMS: ParamSpec = [
  ['T', 'u32'],
  ['B', 'u32'],
  ['Q', 'u32'], // units per row
  ['N', 'u32'], // rows of the table
  ['R', 'u32'], // rows per chunk
  ['c0', 'u32'], // first chunk of this pass
  ['CB', 'u32'], // workgroups per token (column blocks)
];

/** where a pass starts from: zeros, what out holds (f32 out), or a separate f32 partial sum */
type Prev = 'none' | 'self' | 'f32';

interface FwdKernel {
  vdt: DType; // values
  tdt: DType; // the tensor this pass writes
  prev: Prev;
  E: Unit;
  WG: number;
  nc: number; // chunks bound
}

function forwardWgsl(k: FwdKernel): string {
  let b = 1;
  const decls = [unitDecl(b++, 'out', k.tdt, k.E, 'read_write')];
  if (k.prev === 'f32') decls.push(unitDecl(b++, 'prev', 'f32', k.E, 'read'));
  decls.push(`@group(0) @binding(${b++}) var<storage, read> idx: array<u32>;`);
  decls.push(`@group(0) @binding(${b++}) var<storage, read> w: array<f32>;`);
  const init = k.prev === 'none' ? '' : `if (live) { acc = ld_${k.prev === 'self' ? 'out' : 'prev'}(o); }`;
  const js = Array.from({ length: UNROLL }, (_, q) => q);
  return /* wgsl */ `
alias acc_t = ${accType(k.E)};
${header([], FWD_PARAMS)}
${decoders(k.E, k.tdt, 'f32', k.vdt)}
${decls.join('\n')}
${rowLoader(k.vdt, k.E, k.nc, b)}
var<workgroup> sc: array<u32, ${k.WG}>;  // entry's chunk in this pass, or NONE
var<workgroup> sb: array<u32, ${k.WG}>;  // its row's first unit in the chunk
var<workgroup> sw: array<f32, ${k.WG}>;  // its weight (0 for NONE)
@compute @workgroup_size(${k.WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let g = wid.x + wid.y * nwg.x;
  let t = g / p.CB;
  if (t >= p.T) { return; }  // grid padding; uniform per workgroup
  let u = (g - t * p.CB) * ${k.WG}u + l.x;
  let live = u < p.Q;
  let o = t * p.Q + u;
  var acc = acc_t(0.0);
  ${init}
  for (var j0 = 0u; j0 < p.B; j0 += ${k.WG}u) {
    let n = min(${k.WG}u, p.B - j0);
    workgroupBarrier();  // the previous tile is consumed
    // entries past the bag pad the tile to whole rounds of ${UNROLL} as NONE: one unrolled loop, no tail
    var c = ${NONE}u;
    var r = 0u;
    var wt = 0.0;
    if (l.x < n) {
      let e = t * p.B + j0 + l.x;
      r = idx[e];
      let cg = r / p.R;
      let here = r < p.N && cg >= p.c0 && cg - p.c0 < ${k.nc}u;
      c = select(${NONE}u, cg - p.c0, here);
      r -= cg * p.R;
      wt = select(0.0, w[e], here);
    }
    sc[l.x] = c;
    sb[l.x] = r * p.Q;
    sw[l.x] = wt;
    workgroupBarrier();
    if (live) {
      for (var j = 0u; j < n; j += ${UNROLL}u) {
        ${js.map((q) => `let a${q} = ld_row(sc[j + ${q}u], sb[j + ${q}u] + u);`).join('\n        ')}
        ${js.map((q) => `acc += sw[j + ${q}u] * a${q};`).join('\n        ')}
      }
    }
  }
  if (live) { st_out(o, acc); }
}`;
}

/** out (T,d) = sum_j w[t,j] * V[idx[t,j]]; idx >= N add nothing. chunk groups that do not fit one binding set run as passes. */
export async function membagForward(gpu: Gpu, o: { out: Tensor }, i: { values: ValueChunks; idx: Tensor; w: Tensor }): Promise<void> {
  const op = 'membagForward';
  const vdt = checkChunks(op, 'values', i.values);
  const { T, B } = checkBag(op, i.idx, i.w);
  const { dim: d, rows: N, rowsPerChunk: R, chunks } = i.values;
  expectShape(op, 'out', o.out, [T, d]);
  const odt = floatDtype(op, 'out', o.out);
  if (isPacked(odt) && d % 2 !== 0) throw new ShapeError(`${op}: out ${o.out} is ${odt} with an odd row size d = ${d}; use an f32 out or an even d`);
  for (const r of [i.idx, i.w, ...chunks]) expectDisjoint(op, o.out, r);
  if (T === 0) return;
  const E = unitOf(d);
  const Q = d / E;
  const WG = Q <= 64 ? 64 : Q <= 128 ? 128 : 256;
  const CB = Math.ceil(Q / WG);
  const groups = chunkGroups(op, gpu, chunks.length, 4); // out, prev, idx, w
  // several passes into a 16-bit out add in an f32 scratch, so out is rounded once
  const acc = groups.length > 1 && odt !== 'f32' ? gpu.scratch.take([T, d], 'f32', 'membag_acc') : null;
  try {
    for (const [k, [c0, nc]] of groups.entries()) {
      const last = k === groups.length - 1;
      const target = acc && !last ? acc : o.out;
      const prev: Prev = k === 0 ? 'none' : acc && last ? 'f32' : 'self';
      const kern: FwdKernel = { vdt, tdt: target.dtype as DType, prev, E, WG, nc };
      await launch(gpu, {
        name: `membag_forward_${vdt}_${kern.tdt}_e${E}_wg${WG}_${prev}_c${nc}`,
        wgsl: forwardWgsl(kern),
        storage: [target, ...(prev === 'f32' ? [acc!] : []), i.idx, i.w, ...chunks.slice(c0, c0 + nc)],
        params: FWD_PARAMS,
        values: { T, B, Q, N, R, c0, CB },
        workgroups: grid1d(gpu, T * CB),
      });
    }
  } finally {
    acc?.dispose();
  }
}

// ---------------------------------------------------------------- backward: dw

const DW_PARAMS: ParamSpec = [
  ['T', 'u32'],
  ['B', 'u32'],
  ['Q', 'u32'],
  ['N', 'u32'],
  ['R', 'u32'],
  ['c0', 'u32'],
  ['G', 'u32'], // threads per entry, a power of two
  ['first', 'u32'], // 1 in pass 0: write every entry (0 for rows outside the pass)
];

function dwWgsl(vdt: DType, gdt: DType, E: Unit, nc: number): string {
  const zero = accType(E) + '(0.0)';
  return /* wgsl */ `
alias acc_t = ${accType(E)};
${header([], DW_PARAMS)}
${decoders(E, gdt, vdt)}
@group(0) @binding(1) var<storage, read_write> dw: array<f32>;
${unitDecl(2, 'dout', gdt, E, 'read')}
@group(0) @binding(3) var<storage, read> idx: array<u32>;
${rowLoader(vdt, E, nc, 4)}
var<workgroup> red: array<f32, ${DW_WG}>;
@compute @workgroup_size(${DW_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let t = wid.x + wid.y * nwg.x;
  if (t >= p.T) { return; }  // uniform per workgroup
  let G = p.G;
  let lane = l.x % G;
  let per = ${DW_WG}u / G;  // entries per round
  let db = t * p.Q;
  for (var j0 = 0u; j0 < p.B; j0 += per) {
    let j = j0 + l.x / G;
    var here = false;
    var s = 0.0;
    if (j < p.B) {
      let r = idx[t * p.B + j];
      let cg = r / p.R;
      let c = cg - p.c0;
      here = r < p.N && cg >= p.c0 && c < ${nc}u;
      if (here) {
        let vb = (r - cg * p.R) * p.Q;
        var a = ${zero};
        // 4 units a round, G apart; units past the row read as chunk NONE (zeros)
        for (var u = lane; u < p.Q; u += 4u * G) {
          let k1 = u + G < p.Q;
          let k2 = u + 2u * G < p.Q;
          let k3 = u + 3u * G < p.Q;
          let x0 = ld_row(c, vb + u);
          let x1 = ld_row(select(${NONE}u, c, k1), vb + u + G);
          let x2 = ld_row(select(${NONE}u, c, k2), vb + u + 2u * G);
          let x3 = ld_row(select(${NONE}u, c, k3), vb + u + 3u * G);
          a += ld_dout(db + u) * x0;
          a += select(${zero}, ld_dout(db + u + G), k1) * x1;
          a += select(${zero}, ld_dout(db + u + 2u * G), k2) * x2;
          a += select(${zero}, ld_dout(db + u + 3u * G), k3) * x3;
        }
        s = ${hsum(E)};
      }
    }
    red[l.x] = s;
    workgroupBarrier();
    for (var off = G >> 1u; off > 0u; off >>= 1u) {
      if (lane < off) { red[l.x] += red[l.x + off]; }
      workgroupBarrier();
    }
    // each thread rewrites only its own red slot next round, after every read of this round
    if (lane == 0u && j < p.B && (here || p.first == 1u)) { dw[t * p.B + j] = red[l.x]; }
  }
}`;
}

// ---------------------------------------------------------------- backward: dV

const SEG_PARAMS: ParamSpec = [
  ['n', 'u32'], // sorted entries, T*B
  ['C', 'u32'], // d
  ['B', 'u32'],
  ['R', 'u32'],
  ['c0', 'u32'],
  ['lo', 'u32'], // slots of this pass: [lo, hi)
  ['hi', 'u32'],
  ['chunks', 'u32'], // column chunks of COLS
  ['blocks', 'u32'], // entry blocks of SEG_R
];

/** `add_dv(id, c, s, c1)`: dV[id, c] += s.x and, when c1, dV[id, c+1] += s.y, in id's chunk */
function dvAdder(nc: number): string {
  const cases = Array.from({ length: nc }, (_, c) => `case ${c}u: { dv${c}[q] += s.x; if (c1) { dv${c}[q + 1u] += s.y; } }`).join('\n    ');
  return /* wgsl */ `
fn add_dv(id: u32, c: u32, s: vec2<f32>, c1: bool) {
  let cg = id / p.R;
  let q = (id - cg * p.R) * p.C + c;
  switch cg - p.c0 {
    ${cases}
    default: {}
  }
}`;
}

const dvDecls = (nc: number): BindingDecl[] => Array.from({ length: nc }, (_, c) => ({ name: `dv${c}`, type: 'f32' as const, access: 'read_write' as const }));

/** the workgroup's (block, chunk) and this thread's first column; exits past the last block */
const SEG_PROLOGUE = /* wgsl */ `
  let gi = wid.x + wid.y * nwg.x;
  let blk = gi / p.chunks;
  if (blk >= p.blocks) { return; }  // uniform per workgroup
  let c = (gi - blk * p.chunks) * ${COLS}u + 2u * l.x;`;

function segsumWgsl(gdt: DType, oddPacked: boolean, nc: number): string {
  // a packed dout with odd d has rows starting mid-word: read the two columns one by one
  const ld2 = oddPacked ? 'vec2<f32>(ld_dout(i_), ld_dout(i_ + 1u))' : 'ld2_dout(i_)';
  return /* wgsl */ `
${header(
  [
    { name: 'part', type: 'f32', access: 'read_write' },
    { name: 'keys', type: 'u32', access: 'read' },
    { name: 'pos', type: 'u32', access: 'read' },
    { name: 'dout', type: gdt, access: 'read' },
    { name: 'w', type: 'f32', access: 'read' },
    ...dvDecls(nc),
  ],
  SEG_PARAMS,
)}
${dvAdder(nc)}
fn ld_g(i_: u32) -> vec2<f32> { return ${ld2}; }
var<workgroup> kk: array<u32, ${SEG_R}>;  // sorted slots of the block
var<workgroup> tt: array<u32, ${SEG_R}>;  // their tokens
var<workgroup> ww: array<f32, ${SEG_R}>;  // their weights
@compute @workgroup_size(${SEG_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  ${SEG_PROLOGUE}
  let r0 = blk * ${SEG_R}u;
  let cnt = min(${SEG_R}u, p.n - r0);
  if (l.x < cnt) {
    let e = pos[r0 + l.x];  // flat position t*B + j
    kk[l.x] = keys[r0 + l.x];
    tt[l.x] = e / p.B;
    ww[l.x] = w[e];
  }
  // slots just before and after the block tell whether its first / last run is cut
  var before = 0u;
  let hasBefore = r0 > 0u;
  if (hasBefore) { before = keys[r0 - 1u]; }
  var after = 0u;
  let hasAfter = r0 + cnt < p.n;
  if (hasAfter) { after = keys[r0 + cnt]; }
  workgroupBarrier();
  // keys are sorted: a block without a slot of this pass has nothing to do (no barrier follows)
  if (kk[cnt - 1u] < p.lo || kk[0] >= p.hi || c >= p.C) { return; }
  let c1 = c + 1u < p.C;
  var s = vec2<f32>(0.0);
  var first = true;
  for (var j = 0u; j < cnt; j++) {
    let id = kk[j];
    s += ww[j] * ld_g(tt[j] * p.C + c);
    if (j + 1u == cnt || kk[j + 1u] != id) {
      // end of a run within the block
      let cutBefore = first && hasBefore && before == id;
      let cutAfter = j + 1u == cnt && hasAfter && after == id;
      if (id >= p.lo && id < p.hi) {
        if (cutBefore || cutAfter) {
          // slot 0: the piece of a run that came in from an earlier block; slot 1: one going on
          let q = (blk * 2u + select(1u, 0u, cutBefore)) * p.C + c;
          part[q] = s.x;
          if (c1) { part[q + 1u] = s.y; }
        } else {
          add_dv(id, c, s, c1);
        }
      }
      s = vec2<f32>(0.0);
      first = false;
    }
  }
}`;
}

function segsumJoinWgsl(nc: number): string {
  return /* wgsl */ `
${header(
  [
    { name: 'part', type: 'f32', access: 'read' },
    { name: 'keys', type: 'u32', access: 'read' },
    ...dvDecls(nc),
  ],
  SEG_PARAMS,
)}
${dvAdder(nc)}
@compute @workgroup_size(${SEG_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  ${SEG_PROLOGUE}
  // only the block where a cut run starts joins it: its last entry continues into the next
  // block, and its first entry is not the same run as the previous block's last one
  let e = blk * ${SEG_R}u + ${SEG_R}u;
  if (e >= p.n || c >= p.C) { return; }
  let id = keys[e - 1u];
  if (keys[e] != id || id < p.lo || id >= p.hi) { return; }
  if (blk > 0u && keys[blk * ${SEG_R}u - 1u] == id) { return; }
  let c1 = c + 1u < p.C;
  var s = vec2<f32>(part[(blk * 2u + 1u) * p.C + c], 0.0);
  if (c1) { s.y = part[(blk * 2u + 1u) * p.C + c + 1u]; }
  for (var b = blk + 1u; b < p.blocks; b++) {
    let q = b * 2u * p.C + c;
    s.x += part[q];
    if (c1) { s.y += part[q + 1u]; }
    let eb = b * ${SEG_R}u + ${SEG_R}u;
    if (eb >= p.n || keys[eb] != id) { break; }
  }
  add_dv(id, c, s, c1);
}`;
}

/**
 * dw (T,B) = <dout[t], V[idx[t,j]]> (=, f32) and dvalues (N,d) += the scatter of w[t,j] * dout[t]
 * to rows idx[t,j] (f32 chunks, the same chunking as values); each output optional. idx >= N get
 * dw = 0 and add nothing. Deterministic (sort-and-segment-sum, no atomics).
 */
export async function membagBackward(
  gpu: Gpu,
  o: { dw?: Tensor; dvalues?: ValueChunks },
  i: { values: ValueChunks; idx: Tensor; w: Tensor; dout: Tensor },
): Promise<void> {
  const op = 'membagBackward';
  const vdt = checkChunks(op, 'values', i.values);
  const { T, B } = checkBag(op, i.idx, i.w);
  const { dim: d, rows: N, rowsPerChunk: R } = i.values;
  expectShape(op, 'dout', i.dout, [T, d]);
  const gdt = floatDtype(op, 'dout', i.dout);
  const inputs = [i.idx, i.w, i.dout, ...i.values.chunks];
  if (o.dw) {
    expectShape(op, 'dw', o.dw, [T, B]);
    expectDtype(op, 'dw', o.dw, ['f32']);
    for (const r of inputs) expectDisjoint(op, o.dw, r);
  }
  const dv = o.dvalues;
  if (dv) {
    checkChunks(op, 'dvalues', dv);
    if (dv.rows !== N || dv.rowsPerChunk !== R || dv.dim !== d) {
      throw new ShapeError(
        `${op}: dvalues (${dv.rows} rows of ${dv.dim}, ${dv.rowsPerChunk} per chunk) must match values (${N} rows of ${d}, ${R} per chunk)`,
      );
    }
    dv.chunks.forEach((t, c) => {
      expectDtype(op, `dvalues.chunks[${c}]`, t, ['f32']);
      for (const r of [...inputs, ...(o.dw ? [o.dw] : []), ...dv.chunks.slice(0, c)]) expectDisjoint(op, t, r);
    });
  }
  if (T === 0 || B === 0) return;
  if (o.dw) await dwPasses(gpu, o.dw, i, vdt, gdt);
  if (dv) await dvPasses(gpu, dv, i, gdt);
}

async function dwPasses(gpu: Gpu, dw: Tensor, i: { values: ValueChunks; idx: Tensor; dout: Tensor }, vdt: DType, gdt: DType): Promise<void> {
  const [T, B] = i.idx.shape as [number, number];
  const { dim: d, rows: N, rowsPerChunk: R, chunks } = i.values;
  const E = unitOf(d);
  const Q = d / E;
  // enough threads per entry to give each about 8 units, at most 64
  const G = Math.min(64, 2 ** Math.ceil(Math.log2(Math.max(1, Math.ceil(Q / 8)))));
  for (const [k, [c0, nc]] of chunkGroups('membagBackward', gpu, chunks.length, 3).entries()) {
    await launch(gpu, {
      name: `membag_backward_dw_${vdt}_${gdt}_e${E}_c${nc}`,
      wgsl: dwWgsl(vdt, gdt, E, nc),
      storage: [dw, i.dout, i.idx, ...chunks.slice(c0, c0 + nc)],
      params: DW_PARAMS,
      values: { T, B, Q, N, R, c0, G, first: k === 0 ? 1 : 0 },
      workgroups: grid1d(gpu, T),
    });
  }
}

/**
 * dv (N,d) += w[t,j] * dout[t] at rows idx[t,j] (f32 chunks), sort-and-segment-sum; the value
 * gradient of membagBackward, and with w = 1 the embedding backward (embedding.ts). unchecked:
 * callers validate.
 */
export async function scatterAddRows(gpu: Gpu, dv: ValueChunks, i: { idx: Tensor; w: Tensor; dout: Tensor }): Promise<void> {
  return dvPasses(gpu, dv, i, floatDtype('scatterAddRows', 'dout', i.dout));
}

async function dvPasses(gpu: Gpu, dv: ValueChunks, i: { idx: Tensor; w: Tensor; dout: Tensor }, gdt: DType): Promise<void> {
  const [T, B] = i.idx.shape as [number, number];
  const { dim: C, rows: N, rowsPerChunk: R, chunks } = dv;
  const n = T * B;
  // one more bit than N - 1 needs: idx >= N saturate to 2^keyBits - 1 >= N, past every slot
  const keyBits = Math.min(32, Math.floor(Math.log2(N)) + 1);
  const keys = gpu.scratch.take([n], 'u32', 'membag_sorted_slots');
  const pos = gpu.scratch.take([n], 'u32', 'membag_sorted_pos');
  const blocks = Math.ceil(n / SEG_R);
  const colChunks = Math.ceil(C / COLS);
  const part = gpu.scratch.take([2 * blocks, C], 'f32', 'membag_dv_part');
  const oddPacked = isPacked(gdt) && C % 2 !== 0;
  try {
    await sortPairs(gpu, { keysOut: keys, valuesOut: pos }, { keys: i.idx.reshape([n]) }, { keyBits });
    const grid = grid1d(gpu, blocks * colChunks);
    const w = i.w.reshape([n]);
    for (const [c0, nc] of chunkGroups('membagBackward', gpu, chunks.length, 5)) {
      const mine = chunks.slice(c0, c0 + nc);
      const values = { n, C, B, R, c0, lo: c0 * R, hi: Math.min(N, (c0 + nc) * R), chunks: colChunks, blocks };
      await launch(gpu, {
        name: `membag_backward_segsum_${gdt}${oddPacked ? '_odd' : ''}_c${nc}`,
        wgsl: segsumWgsl(gdt, oddPacked, nc),
        storage: [part, keys, pos, i.dout, w, ...mine],
        params: SEG_PARAMS,
        values,
        workgroups: grid,
      });
      if (blocks > 1) {
        await launch(gpu, { name: `membag_backward_segsum_join_c${nc}`, wgsl: segsumJoinWgsl(nc), storage: [part, keys, ...mine], params: SEG_PARAMS, values, workgroups: grid });
      }
    }
  } finally {
    keys.dispose();
    pos.dispose();
    part.dispose();
  }
}
