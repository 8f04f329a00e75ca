// Matrix products: a batched, tiled GEMM with f32 accumulation, and nn.Linear forward/backward.
//
//   matmul        out (Bt,M,N) = alpha * op(a) (Bt,M,K) . op(b) (Bt,K,N) + bias (N)
//                 (or out += ..., with accumulate: weight gradients)
//                 op(a) = a (Bt,M,K), or a^T when transA (a stored (Bt,K,M));
//                 op(b) = b (Bt,K,N), or b^T when transB (b stored (Bt,N,K)).
//                 any of a, b may be 2-D and is then broadcast over the batch; out is 3-D when
//                 either input is, else 2-D. all row-major.
//   linearForward y (M,N) = x (M,K) . w^T + b          w (N,K): PyTorch nn.Linear (out x in)
//   linearBackward dx (M,K)  = dout (M,N) . w (N,K)                         (=, activation grad)
//                  dw (N,K) += dout^T (N,M) . x (M,K)                          (+=, param grad)
//                  db (N)   += sum_m dout (M,N)                                (+=, param grad)
//   layout: w is (out features, in features) as in PyTorch, so checkpoints load without a
//   transpose and each output feature's weights are one contiguous row; the forward reads it
//   through transB, dw is written in the same layout through transA. leading dims of x, y,
//   dout and dx are flattened into M.
//
// thread mapping (the tiled path): one workgroup of TY x TX = (BM/TM) x (BN/TN) threads per
// BM x BN output tile; each thread keeps TM x TN results in registers (vec4s of 4 of its
// columns). K is walked BK at a time through workgroup memory, double-buffered: iteration t
// fetches slab t from global memory into registers, multiplies slab t-1, then stores slab t
// (one barrier per slab; the fetch latency hides behind the math). every global load and stage
// store is a vec4 of 4 elements adjacent in memory (vec4 loads of 4 f32, or of 4 packed 16-bit
// values as vec2<u32>, when the contiguous dimension is a multiple of 4; else 4 guarded scalar
// loads); an operand is staged in vec4s along the dimension it is stored along.
// stages are indexed [stage][slot][thread], or [stage][thread][slot] for a stored along k:
// the thread coordinate is ty for a, tx for b, and the slots are that thread's fragment of
// the slab (its TM rows or TN columns by BK k, in vec4s). with the slab fully unrolled
// (U = BK) every read in the inner loop is S[stage][constant][thread] (or [thread][constant]):
// robust WGSL (Dawn clamps run-time indices) clamps the two run-time indices once per slab and
// the constant offsets fold into the load instructions: with Dawn's robustness toggled off the
// kernel runs at the same speed (matmul_f32_probe_norobust against matmul_f32_probe in
// bench/results). staging a along m through transposing stores ran slower; not kept.
// thread rows are 4 adjacent rows repeated every TY*4 (a warp's reads of a broadcast); thread
// columns are 4 adjacent repeated every TX*4 for b stored along n, or tx + c*TX (pairs when out
// is packed) for b stored along k, so that the 16 tx of a warp read 16 consecutive vec4s. a
// warp's stage stores are conflict-free but for b stored along k (4-way).
// tiles are visited in groups of G tile rows (as Triton's GROUP_M) for L2 reuse; the tile index
// spans the grid's x and y (grid1d), the batch index is z (at most 65535 on most devices).
// measured: MATMUL_CONFIGS.
// bounds: loads are guarded (out-of-range elements read as 0, so a partial K slab adds nothing)
// and stores are guarded per element; in the interior this is a couple of compares per slab.
// split K: a product whose output fills too few tiles to occupy the GPU (a decode step: 32 rows)
// runs z over slices of K instead of over the batch (kSplit: the slice length; the bases carry
// each slice's start); the slices' partial products (slices, M, N) are then summed in slice
// order (reduce.ts columnSums). f32 outputs without bias or accumulate, unbatched: chooseSplitK.
// numerics: f32 accumulation in a fixed order (bitwise reproducible); a, b, bias, out may be
// stored in f32/f16/bf16. f16/bf16 outputs are written in pairs (N must be even); accumulate
// into them is a read-modify-write of whole pairs (each pair belongs to one thread), but
// gradients are normally f32. db is a deterministic two-stage column sum (no atomics).
//
// paths: matmul() asks choosePath() which implementation to run: 'tiled' (this file), 'subgroup'
// (tensor cores through subgroup matrices, matmul_subgroup.ts) or 'cpu' (subgroup broadcasts
// without workgroup memory, for CPU adapters such as lavapipe: matmul_cpu.ts).

import type { Gpu } from '../../gpu/device.ts';
import type { DType } from '../../gpu/dtype.ts';
import { LimitError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { cpuLanes, expectDtype, expectPackable, expectShape, floatDtype, grid1d, header, launch, type ParamSpec, wgslOnce } from '../kernel.ts';
import { addColumnSums, columnSums } from '../reduce/reduce.ts';
import { matmulCpu } from './matmul_cpu.ts';
import { matmulSubgroup, subgroupMatmulSupported } from './matmul_subgroup.ts';
import { transpose } from '../transpose/transpose.ts';

// ---------------------------------------------------------------- configuration

/** Tile configuration of the tiled kernel (a parameter of its WGSL generator). */
export interface MatmulConfig {
  /** output rows per workgroup */
  BM: number;
  /** output columns per workgroup */
  BN: number;
  /** k depth of one workgroup-memory slab (a multiple of 8) */
  BK: number;
  /** results per thread along M: 4 or 8 */
  TM: number;
  /** results per thread along N: 4 or 8 */
  TN: number;
  /** k steps unrolled per inner-loop iteration (a multiple of 4 dividing BK; BK = fully unrolled) */
  U: number;
  /** tile rows per swizzle group (1 = plain row-major tile order) */
  G: number;
}

/**
 * Candidate configurations, largest tile first (benchmarks time each; see chooseConfig).
 * bench/probe_matmul_f32.ts times them at 4096^3 in every layout, with and without the
 * pretranspose (choosePretranspose); its H100 file is bench/results/matmul_f32_probe-*.json.
 * workgroup memory: 2 (BM + BN) BK 4 bytes, 32 KiB for the first.
 */
export const MATMUL_CONFIGS: readonly MatmulConfig[] = [
  { BM: 128, BN: 128, BK: 16, TM: 8, TN: 8, U: 16, G: 8 },
  { BM: 128, BN: 128, BK: 8, TM: 8, TN: 8, U: 8, G: 8 },
  { BM: 128, BN: 64, BK: 16, TM: 8, TN: 4, U: 16, G: 8 },
  { BM: 64, BN: 128, BK: 16, TM: 4, TN: 8, U: 16, G: 8 },
  { BM: 64, BN: 64, BK: 16, TM: 4, TN: 4, U: 16, G: 8 },
  { BM: 32, BN: 32, BK: 8, TM: 4, TN: 4, U: 8, G: 1 },
];

/**
 * Workgroups a launch should have before a larger tile is preferred: about two per SM of a
 * 132-SM H100, where a 1024^3 product ran faster in 64-wide tiles (64-256 workgroups) than
 * in 128x128 ones (64 workgroups), and 2048^3 (256 workgroups of 128x128) fastest in 128x128
 * tiles. smaller GPUs are full with fewer.
 */
const MIN_WORKGROUPS = 256;

/** "m128n128k16t8x8u8g8": a config's name in kernel names and benchmark tables. */
export function configName(c: MatmulConfig): string {
  return `m${c.BM}n${c.BN}k${c.BK}t${c.TM}x${c.TN}u${c.U}g${c.G}`;
}

export const threadsOf = (c: MatmulConfig): number => (c.BM / c.TM) * (c.BN / c.TN);

/** Bytes of workgroup memory a config takes: two stages of each operand's slab, any layout. */
export function workgroupBytes(c: MatmulConfig): number {
  return 2 * (c.BM + c.BN) * c.BK * 4;
}

function checkConfig(c: MatmulConfig): void {
  const ok =
    (c.TM === 4 || c.TM === 8) &&
    (c.TN === 4 || c.TN === 8) &&
    c.BM % c.TM === 0 &&
    c.BN % c.TN === 0 &&
    c.BK % 8 === 0 &&
    c.BK > 0 &&
    c.U % 4 === 0 &&
    c.U > 0 &&
    c.BK % c.U === 0 &&
    c.G >= 1 &&
    Number.isInteger(c.G);
  if (!ok) throw new LimitError(`matmul: bad tile config ${JSON.stringify(c)} (TM, TN in {4, 8}; BM % TM = BN % TN = BK % 8 = BK % U = U % 4 = 0)`);
}

/** Whether `c` fits this device's workgroup memory and invocation limits. */
export function configFits(gpu: Gpu, c: MatmulConfig): boolean {
  const smem = gpu.limits['maxComputeWorkgroupStorageSize'] ?? 16384;
  const inv = gpu.limits['maxComputeInvocationsPerWorkgroup'] ?? 256;
  return workgroupBytes(c) <= smem && threadsOf(c) <= inv;
}

/**
 * The default config: the first of MATMUL_CONFIGS (largest tile first) that fits the device
 * and still gives at least MIN_WORKGROUPS workgroups; failing that (small problems), the
 * smallest tile that fits. On a CPU adapter, the tile with the least padded work per efficiency.
 */
export function chooseConfig(gpu: Gpu, d: { M: number; N: number; batch: number; transA: boolean; transB: boolean }): MatmulConfig {
  const fits = MATMUL_CONFIGS.filter((c) => configFits(gpu, c));
  if (fits.length === 0) throw new LimitError(`matmul: no tile config fits this device's workgroup limits`);
  const groups = (c: MatmulConfig) => Math.ceil(d.M / c.BM) * Math.ceil(d.N / c.BN) * d.batch;
  if (gpu.cpu) {
    // a CPU adapter is busy with a handful of workgroups: the padded work over the tile's
    // efficiency decides, efficiency ~ (BM BN)^0.3 (on lavapipe the 128 x 128 tile did about
    // twice the work per second of the 32 x 32 tile the GPU rule picks for such sizes)
    const cost = (c: MatmulConfig) => (Math.ceil(d.M / c.BM) * c.BM * Math.ceil(d.N / c.BN) * c.BN) / (c.BM * c.BN) ** 0.3;
    return fits.reduce((best, c) => (cost(c) < cost(best) ? c : best));
  }
  const big = fits.find((c) => groups(c) >= MIN_WORKGROUPS);
  if (big) return big;
  // every config under-fills the GPU: the smallest tile wastes least on ragged edges and
  // spreads the work over the most workgroups
  return fits[fits.length - 1]!;
}

// ---------------------------------------------------------------- WGSL generator

interface Operand {
  /** binding name: 'a' or 'b' */
  name: 'a' | 'b';
  /** stored contiguous along the output dimension (m for a, n for b), else along k */
  direct: boolean;
  /** vec4 global loads (the contiguous dimension is a multiple of 4) */
  vec: boolean;
  /** threads along the operand's output dimension (TY for a, TX for b) */
  T: number;
  /** stage indexed [stage][thread][slot] (a stored along k); else [stage][slot][thread] */
  threadMajor: boolean;
  /** the thread's results along that dimension (TM or TN) */
  F: number;
  /** b staged [n][k] with a packed output: a thread's columns come in pairs (see colOf) */
  pairs: boolean;
}

/** Everything that specializes a tiled kernel. */
export interface TiledSpec {
  config: MatmulConfig;
  transA: boolean;
  transB: boolean;
  out: DType;
  a: DType;
  b: DType;
  /** dtype of the bias, or null for none */
  bias: DType | null;
  accumulate: boolean;
  /** vec4 global loads of a / b (their contiguous dimension is a multiple of 4) */
  vecA: boolean;
  vecB: boolean;
}

const PARAMS: ParamSpec = [
  ['M', 'u32'],
  ['N', 'u32'],
  ['K', 'u32'],
  ['sA', 'u32'], // batch stride of a in elements (0: broadcast)
  ['sB', 'u32'],
  ['tilesM', 'u32'],
  ['tilesN', 'u32'],
  ['alpha', 'f32'],
  ['kSplit', 'u32'], // 0: z is the batch; else z is a slice of K this long (splitK: partial sums)
];

/** a storage binding for an input operand, with ld_x(i) (scalar) or ld4_x(v) (elements 4v..4v+3) */
function inputDecl(binding: number, name: string, dtype: DType, vec: boolean): string {
  const at = `@group(0) @binding(${binding})`;
  if (vec) {
    if (dtype === 'f32') {
      return `${at} var<storage, read> ${name}: array<vec4<f32>>;\nfn ld4_${name}(v: u32) -> vec4<f32> { return ${name}[v]; }`;
    }
    const unpack =
      dtype === 'f16'
        ? 'vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y))'
        : 'vec4<f32>(bf16_lo(w.x), bf16_hi(w.x), bf16_lo(w.y), bf16_hi(w.y))';
    return `${at} var<storage, read> ${name}: array<vec2<u32>>;\nfn ld4_${name}(v: u32) -> vec4<f32> { let w = ${name}[v]; return ${unpack}; }`;
  }
  if (dtype === 'f32') return `${at} var<storage, read> ${name}: array<f32>;\nfn ld_${name}(i: u32) -> f32 { return ${name}[i]; }`;
  const ld =
    dtype === 'f16'
      ? `unpack2x16float(${name}[i >> 1u])[i & 1u]`
      : `select(bf16_lo(${name}[i >> 1u]), bf16_hi(${name}[i >> 1u]), (i & 1u) == 1u)`;
  return `${at} var<storage, read> ${name}: array<u32>;\nfn ld_${name}(i: u32) -> f32 { return ${ld}; }`;
}

/**
 * One unit of an operand's slab: 4 elements adjacent in memory (4 x at one k for an operand
 * stored along x, its output dimension m or n; else 4 k at one x), loaded from global memory
 * into register r (st null) or stored into stage st. unit u of the slab (u < BX BK / 4) is,
 * stored along x, x = 4 (u % (BX/4)), k = u / (BX/4); else k = 4 (u % (BK/4)), x = u / (BK/4):
 * consecutive units are adjacent in memory, so a warp's loads cover whole sectors. its place in
 * the stage is the slot of the thread that reads it (see the header).
 */
function unitCode(o: Operand, c: MatmulConfig, u: string, r: string, st: string | null): string {
  const isA = o.name === 'a';
  const BX = isA ? c.BM : c.BN;
  const D = isA ? 'p.M' : 'p.N';
  const x0 = isA ? 'm0' : 'n0';
  const T = o.T;
  const l: string[] = [];
  if (o.direct) l.push(`let ${r}x = (${u} % ${BX / 4}u) * 4u; let ${r}k = ${u} / ${BX / 4}u;`);
  else l.push(`let ${r}k = (${u} % ${c.BK / 4}u) * 4u; let ${r}x = ${u} / ${c.BK / 4}u;`);
  if (st === null) {
    // element (k, x) as a global element index
    const at = (k: string, x: string) => (o.direct ? `base${o.name} + (${k}) * ${D} + ${x}` : `base${o.name} + (${x}) * p.K + ${k}`);
    const gk = `k0 + ${r}k`;
    const gx = `${x0} + ${r}x`;
    if (o.vec) {
      // the contiguous dimension is a multiple of 4: a vec4 is wholly in range or out
      l.push(`${r} = vec4<f32>(); if (${gk} < kEnd && ${gx} < ${D}) { ${r} = ld4_${o.name}((${at(gk, gx)}) >> 2u); }`);
    } else {
      for (let j = 0; j < 4; j++) {
        const [kj, xj] = o.direct ? [gk, `${gx} + ${j}u`] : [`${gk} + ${j}u`, gx];
        l.push(`${r}[${j}] = 0.0; if (${kj} < kEnd && ${xj} < ${D}) { ${r}[${j}] = ld_${o.name}(${at(kj, xj)}); }`);
      }
    }
    return l.join('\n        ');
  }
  // the unit's place: a vec4 along x at one k goes to the thread holding its 4 x; a vec4
  // along k at one x to the thread holding that x (a: rowOf, b: colOf)
  if (o.direct) {
    l.push(`S${o.name}[${st}][${r}k * ${o.F / 4}u + (${r}x >> 2u) / ${T}u][(${r}x >> 2u) % ${T}u] = ${r};`);
  } else {
    const [t, j] = isA
      ? [`(${r}x >> 2u) % ${T}u`, `(${r}x / ${4 * T}u) * 4u + (${r}x & 3u)`]
      : o.pairs
        ? [`(${r}x >> 1u) % ${T}u`, `(${r}x / ${2 * T}u) * 2u + (${r}x & 1u)`]
        : [`${r}x % ${T}u`, `${r}x / ${T}u`];
    const i = `(${j}) * ${c.BK / 4}u + (${r}k >> 2u)`;
    l.push(o.threadMajor ? `S${o.name}[${st}][${t}][${i}] = ${r};` : `S${o.name}[${st}][${i}][${t}] = ${r};`);
  }
  return l.join('\n        ');
}

/**
 * The slab loads of both operands, dealt over the threads as quads of 4 units of one
 * operand: quads 0 .. QA-1 are a's, QA .. QA+QB-1 b's (Q = BX BK / 16), quad q being units
 * q + j Q, j < 4. thread lid takes quads lid, lid + threads, ...: it holds one quad (16
 * registers) per round, and with 128 x 128 x 16 tiles and 256 threads each thread loads
 * exactly one quad per slab, a's in warps 0-3 and b's in warps 4-7 (on an H100 the tn layout
 * ran faster than with every thread loading 2 units of each operand). returns the
 * register declarations, the fetch of slab k0 and the store into stage st.
 */
function loadPlan(opA: Operand, opB: Operand, c: MatmulConfig, threads: number): { decl: string; fetch: string; store: (st: string) => string } {
  const QA = (c.BM * c.BK) / 16;
  const QB = (c.BN * c.BK) / 16;
  const rounds = Math.ceil((QA + QB) / threads);
  const decl: string[] = [];
  const fetch: string[] = [];
  const stores: ((st: string) => string)[] = [];
  for (let i = 0; i < rounds; i++) {
    const g = `(lid + ${i * threads}u)`;
    const regs = [0, 1, 2, 3].map((j) => `rq${i}_${j}`);
    decl.push(`var ${regs.join(': vec4<f32>; var ')}: vec4<f32>;`);
    const quad = (o: Operand, q: string, Q: number, st: string | null) =>
      regs.map((r, j) => `{ ${unitCode(o, c, `(${q} + ${j * Q}u)`, r, st)} }`).join('\n        ');
    const branch = (st: string | null) =>
      `if (${g} < ${QA}u) {\n        ${quad(opA, g, QA, st)}\n      } else if (${g} < ${QA + QB}u) {\n        ${quad(opB, `(${g} - ${QA}u)`, QB, st)}\n      }`;
    fetch.push(branch(null));
    stores.push((st) => branch(st));
  }
  const ind = '\n      ';
  return { decl: decl.join('\n  '), fetch: fetch.join(ind), store: (st) => stores.map((f) => f(st)).join(ind) };
}

/** The tiled kernel's WGSL for one specialization. */
export function tiledWgsl(s: TiledSpec): string {
  const c = s.config;
  checkConfig(c);
  const TX = c.BN / c.TN; // threads along n
  const TY = c.BM / c.TM; // threads along m
  const threads = TX * TY;
  const packedOut = s.out !== 'f32';
  const opA: Operand = { name: 'a', direct: s.transA, vec: s.vecA, T: TY, threadMajor: !s.transA, F: c.TM, pairs: false };
  const opB: Operand = { name: 'b', direct: !s.transB, vec: s.vecB, T: TX, threadMajor: false, F: c.TN, pairs: packedOut };
  const loads = loadPlan(opA, opB, c, threads);
  const xa = opA.direct; // a's slots hold vec4s along m (4 rows at one k); else along k
  const xb = opB.direct; // b's slots hold vec4s along n (4 columns at one k); else along k
  const gn = c.TN / 4; // accumulator vec4s per row
  const comp = (i: number) => 'xyzw'[i & 3]!;

  // thread rows: 4 adjacent rows, repeated every TY*4 (a warp's reads of a stage broadcast).
  // thread columns: with b staged [k][n], 4 adjacent columns repeated every TX*4; with b
  // staged [n][k], adjacent threads take adjacent columns (rows of the stage: no bank
  // conflicts), in pairs when the output is packed so that a thread owns whole words.
  const rowOf = (r: number) => (r >> 2) * TY * 4 + (r & 3); // + ty * 4
  const colOf = (j: number): { k: number; m: number } =>
    xb ? { k: (j >> 2) * TX * 4 + (j & 3), m: 4 } : packedOut ? { k: (j >> 1) * TX * 2 + (j & 1), m: 2 } : { k: j * TX, m: 1 }; // + tx * m
  const colStep = colOf(0).m;

  // accumulators: acc_<row>_<q>, the thread's columns 4q..4q+3 of one row
  const accDecl: string[] = [];
  for (let r = 0; r < c.TM; r++) for (let q = 0; q < gn; q++) accDecl.push(`var acc_${r}_${q} = vec4<f32>();`);

  // the product of one group of 4 k: fragment loads, then TM * TN / 4 vec4 fmas per k.
  // slot(kq, off): slot kq * per + off of the thread's stage row; a constant when the k loop is
  // fully unrolled (U = BK), so robustness clamps nothing and the offsets fold into the loads
  const unrolled = c.U === c.BK;
  const slot = (g: number, per: number, off: number) => (unrolled ? `${g * per + off}u` : `(kq + ${g}u) * ${per}u + ${off}u`);
  const group = (g: number): string => {
    const l: string[] = [];
    if (xa) for (let kk = 0; kk < 4; kk++) for (let h = 0; h < c.TM / 4; h++) l.push(`let a${kk}_${h} = Sa[st][${slot(g, c.TM, kk * (c.TM / 4) + h)}][ty];`);
    else for (let r = 0; r < c.TM; r++) l.push(`let a${r} = Sa[st][ty][${slot(g, 1, r * (c.BK / 4))}];`);
    if (xb) for (let kk = 0; kk < 4; kk++) for (let q = 0; q < gn; q++) l.push(`let b${kk}_${q} = Sb[st][${slot(g, c.TN, kk * gn + q)}][tx];`);
    else for (let j = 0; j < c.TN; j++) l.push(`let b${j} = Sb[st][${slot(g, 1, j * (c.BK / 4))}][tx];`);
    for (let kk = 0; kk < 4; kk++) {
      for (let q = 0; q < gn; q++) {
        if (!xb) l.push(`let b${kk}_${q} = vec4<f32>(${[0, 1, 2, 3].map((j) => `b${4 * q + j}.${comp(kk)}`).join(', ')});`);
      }
      for (let r = 0; r < c.TM; r++) {
        const a = xa ? `a${kk}_${r >> 2}.${comp(r)}` : `a${r}.${comp(kk)}`;
        for (let q = 0; q < gn; q++) l.push(`acc_${r}_${q} = fma(vec4<f32>(${a}), b${kk}_${q}, acc_${r}_${q});`);
      }
    }
    return `{\n        ${l.join('\n        ')}\n      }`;
  };
  const groups = Array.from({ length: c.U / 4 }, (_, g) => group(g)).join('\n      ');
  const innerCode = unrolled
    ? groups
    : `for (var kq = 0u; kq < ${c.BK / 4}u; kq += ${c.U / 4}u) {
      ${groups}
    }`;

  // epilogue: scale, bias, store (or accumulate) with per-element guards
  const epi: string[] = [];
  for (let j = 0; j < c.TN; j++) epi.push(`let col${j} = n0 + ${colOf(j).k}u + tx * ${colStep}u;`);
  if (s.bias) {
    for (let q = 0; q < gn; q++) {
      const bv = [0, 1, 2, 3].map((j) => `select(0.0, ld_bias(min(col${4 * q + j}, p.N - 1u)), col${4 * q + j} < p.N)`);
      epi.push(`let bias${q} = vec4<f32>(${bv.join(', ')});`);
    }
  }
  for (let r = 0; r < c.TM; r++) {
    const lines: string[] = [];
    for (let q = 0; q < gn; q++) {
      lines.push(`{ let v = acc_${r}_${q} * p.alpha${s.bias ? ` + bias${q}` : ''};`);
      for (let j = 0; j < 4; j += packedOut ? 2 : 1) {
        const col = `col${4 * q + j}`;
        if (packedOut) {
          // N is even and col is: col < N implies col + 1 < N, the pair is whole
          const val = s.accumulate ? `ld_out(orow + ${col}) + v[${j}], ld_out(orow + ${col} + 1u) + v[${j + 1}]` : `v[${j}], v[${j + 1}]`;
          lines.push(`  if (${col} < p.N) { st2_out(orow + ${col}, ${val}); }`);
        } else {
          const val = s.accumulate ? `out[orow + ${col}] + v[${j}]` : `v[${j}]`;
          lines.push(`  if (${col} < p.N) { out[orow + ${col}] = ${val}; }`);
        }
      }
      lines.push('}');
    }
    epi.push(`{ let row = m0 + ${rowOf(r)}u + ty * 4u;\n    if (row < p.M) {\n      let orow = obase + row * p.N;\n      ${lines.join('\n      ')}\n    } }`);
  }

  const decls = [
    header([{ name: 'out', type: s.out, access: 'read_write' }], PARAMS),
    inputDecl(2, 'a', s.a, s.vecA),
    inputDecl(3, 'b', s.b, s.vecB),
    s.bias ? inputDecl(4, 'bias', s.bias, false) : '',
  ];

  return /* wgsl */ `
${decls.join('\n')}

// two stages of each operand: a [stage]${xa ? '[slot][ty]' : '[ty][slot]'}, slots of vec4s along ${xa ? 'm' : 'k'}; b [stage][slot][tx], along ${xb ? 'n' : 'k'}
var<workgroup> Sa: array<${xa ? `array<array<vec4<f32>, ${TY}>, ${(c.TM * c.BK) / 4}>` : `array<array<vec4<f32>, ${(c.TM * c.BK) / 4}>, ${TY}>`}, 2>;
var<workgroup> Sb: array<array<array<vec4<f32>, ${TX}>, ${(c.TN * c.BK) / 4}>, 2>;

@compute @workgroup_size(${threads})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  // tile id -> (tile row, tile col), walking ${c.G} tile rows at a time down before across
  let pid = wid.x + wid.y * nwg.x;
  if (pid >= p.tilesM * p.tilesN) { return; }  // uniform per workgroup: barriers stay safe
  let per_group = ${c.G}u * p.tilesN;
  let first = (pid / per_group) * ${c.G}u;
  let rows = min(p.tilesM - first, ${c.G}u);
  let tm = first + (pid % per_group) % rows;
  let tn = (pid % per_group) / rows;
  let m0 = tm * ${c.BM}u;
  let n0 = tn * ${c.BN}u;
  let batch = wid.z;
  // the k range this workgroup sums: all of K, or (splitK) its slice, whose start the bases carry
  let kEnd = select(p.K, min(p.kSplit, p.K - batch * p.kSplit), p.kSplit > 0u);
  let basea = batch * p.sA;
  let baseb = batch * p.sB;
  let obase = batch * p.M * p.N;
  let tx = lid % ${TX}u;
  let ty = lid / ${TX}u;

  ${accDecl.join('\n  ')}
  ${loads.decl}

  // software pipeline over the K slabs: iteration t fetches slab t into registers, multiplies
  // slab t-1 (already in workgroup memory), then stores slab t to the other stage. the fetch's
  // latency hides behind the math; one barrier per slab. a stage is overwritten two iterations
  // after it was filled, so every read of it finished before the barrier in between.
  let slabs = (kEnd + ${c.BK - 1}u) / ${c.BK}u;
  for (var t = 0u; t <= slabs; t++) {
    let fill = t < slabs;
    if (fill) {
      let k0 = t * ${c.BK}u;
      ${loads.fetch}
    }
    if (t > 0u) {
      let st = (t - 1u) & 1u;
      ${innerCode.replaceAll('\n', '\n  ')}
    }
    if (fill) {
      ${loads.store('(t & 1u)')}
    }
    workgroupBarrier();
  }

  ${epi.join('\n  ')}
}`;
}

// ---------------------------------------------------------------- dispatcher

/** Implementations matmul() can run: CUDA-core style tiles, tensor cores through subgroup matrices, or the CPU adapters' kernel. */
export type MatmulPath = 'tiled' | 'subgroup' | 'cpu';

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
  /** out += result instead of out = result (weight gradients) */
  accumulate?: boolean;
  /** result = alpha * op(a) . op(b) (+ bias); default 1 */
  alpha?: number;
  /** force a tile config of the tiled path (benchmarks, tests); default chooseConfig() */
  config?: MatmulConfig;
  /** force a path (tests, benchmarks); default choosePath() */
  path?: MatmulPath;
  /** tiled path: sum K in this many slices (tests, benchmarks; 1: none); default chooseSplitK() */
  splitK?: number;
  /** tiled path: transpose operands stored along k first (true: every f32 one; default
   * choosePretranspose) */
  pretranspose?: boolean;
}

/** Problem dimensions after validation. */
export interface MatmulDims {
  batch: number;
  M: number;
  N: number;
  K: number;
  /** batch strides in elements (0 = broadcast 2-D operand) */
  sA: number;
  sB: number;
}

/**
 * Picks the implementation for a problem: the tensor-core path (matmul_subgroup.ts) whenever the
 * adapter has subgroup matrices and the call fits it (f16 a and b, f32/f16 out, alpha 1, a
 * batched unless b is too, contiguous dimensions multiples of 8: subgroupMatmulSupported()
 * says); on a CPU adapter with fixed-size subgroups, the cpu kernel for f32 outputs; else the
 * tiled kernel. a forced tile config means the tiled path.
 */
export function choosePath(gpu: Gpu, d: MatmulDims, dtypes: { a: DType; b: DType; out: DType }, opts: MatmulOptions): MatmulPath {
  if (opts.path) return opts.path;
  if (opts.config) return 'tiled';
  if (dtypes.out === 'f32' && cpuLanes(gpu) !== null) return 'cpu';
  if ((opts.alpha ?? 1) !== 1) return 'tiled';
  if (d.batch > 1 && d.sA === 0) return 'tiled'; // the subgroup kernel broadcasts b only
  const q = { M: d.M, N: d.N, K: d.K, dtypes, transA: opts.transA ?? false, transB: opts.transB ?? false, batch: d.batch };
  return subgroupMatmulSupported(gpu, q) ? 'subgroup' : 'tiled';
}

/** 2 M N K per batch: the flop count benchmarks divide by (multiply-adds count twice). */
export function matmulFlops(M: number, N: number, K: number, batch = 1): number {
  return 2 * M * N * K * batch;
}

const FLOAT: readonly DType[] = ['f32', 'f16', 'bf16'];

function matmulDims(op: string, out: Tensor, a: Tensor, b: Tensor, bias: Tensor | undefined, transA: boolean, transB: boolean): MatmulDims {
  for (const [what, t] of [
    ['a', a],
    ['b', b],
    ['out', out],
  ] as const) {
    if (t.shape.length !== 2 && t.shape.length !== 3) throw new ShapeError(`${op}: ${what} ${t} must be 2-D or 3-D`);
    expectDtype(op, what, t, FLOAT);
  }
  const [ar, ac] = a.shape.slice(-2) as [number, number];
  const [br, bc] = b.shape.slice(-2) as [number, number];
  const [M, K] = transA ? [ac, ar] : [ar, ac];
  const [K2, N] = transB ? [bc, br] : [br, bc];
  if (K !== K2) {
    throw new ShapeError(
      `${op}: inner dimensions differ: op(a) of ${a}${transA ? ' (transA)' : ''} is [${M},${K}], ` +
        `op(b) of ${b}${transB ? ' (transB)' : ''} is [${K2},${N}]`,
    );
  }
  const ba = a.shape.length === 3 ? a.shape[0]! : null;
  const bb = b.shape.length === 3 ? b.shape[0]! : null;
  if (ba !== null && bb !== null && ba !== bb) throw new ShapeError(`${op}: batch sizes differ: ${a} and ${b}`);
  const batch = ba ?? bb;
  expectShape(op, 'out', out, batch === null ? [M, N] : [batch, M, N]);
  if (bias) {
    expectShape(op, 'bias', bias, [N]);
    expectDtype(op, 'bias', bias, FLOAT);
  }
  expectPackable(op, 'out', out);
  return { batch: batch ?? 1, M, N, K, sA: ba === null ? 0 : M * K, sB: bb === null ? 0 : K * N };
}

/**
 * out = alpha * op(a) . op(b) + bias, per batch index (or out += ..., with accumulate).
 * shapes: see the file header. f32 accumulation whatever the storage dtypes.
 */
export async function matmul(
  gpu: Gpu,
  o: { out: Tensor },
  i: { a: Tensor; b: Tensor; bias?: Tensor },
  opts: MatmulOptions = {},
): Promise<void> {
  const op = 'matmul';
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const d = matmulDims(op, o.out, i.a, i.b, i.bias, transA, transB);
  if (d.M === 0 || d.N === 0 || d.batch === 0) return;
  const dtypes = { a: floatDtype(op, 'a', i.a), b: floatDtype(op, 'b', i.b), out: floatDtype(op, 'out', o.out) };
  const path = choosePath(gpu, d, dtypes, opts);
  switch (path) {
    case 'tiled':
      return matmulTiled(gpu, o.out, i.a, i.b, i.bias, d, transA, transB, opts);
    case 'subgroup': {
      const inputs = i.bias ? { a: i.a, b: i.b, bias: i.bias } : { a: i.a, b: i.b };
      return matmulSubgroup(gpu, { out: o.out }, inputs, { transA, transB, accumulate: opts.accumulate ?? false });
    }
    case 'cpu': {
      const bias = i.bias ? floatDtype(op, 'bias', i.bias) : null;
      return matmulCpu(gpu, o.out, i, d, { transA, transB, accumulate: opts.accumulate ?? false, alpha: opts.alpha ?? 1, dtypes: { a: dtypes.a, b: dtypes.b, bias } });
    }
  }
}

/**
 * Which operands the tiled path transposes first, into scratch, so that its kernel reads both
 * along the output dimensions (the tn layout), where it runs fastest (the `_nopre` lines of
 * bench/results/matmul_f32_probe-*.json against the tn line); a transpose
 * moves 8 bytes per element of the operand, which at ~3 TB/s is ~55/N of the product's time
 * for a (M x K, the product's other dimension N) and ~55/M for b: worth it from about 1024.
 * f32 operands only (16-bit ones are packed in pairs along their contiguous dimension).
 */
export function choosePretranspose(d: MatmulDims, transA: boolean, transB: boolean, dtypes: { a: DType; b: DType }, force?: boolean): { a: boolean; b: boolean } {
  if (force === false) return { a: false, b: false };
  return {
    a: !transA && dtypes.a === 'f32' && (force === true || d.N >= 1024),
    b: transB && dtypes.b === 'f32' && (force === true || d.M >= 1024),
  };
}

async function matmulTiled(
  gpu: Gpu,
  out: Tensor,
  a: Tensor,
  b: Tensor,
  bias: Tensor | undefined,
  d: MatmulDims,
  transA: boolean,
  transB: boolean,
  opts: MatmulOptions,
): Promise<void> {
  const pre = choosePretranspose(d, transA, transB, { a: floatDtype('matmul', 'a', a), b: floatDtype('matmul', 'b', b) }, opts.pretranspose);
  if (pre.a || pre.b) {
    const t = (x: Tensor, label: string) => gpu.scratch.take([...x.shape.slice(0, -2), x.shape.at(-1)!, x.shape.at(-2)!], 'f32', label);
    const aT = pre.a ? t(a, 'matmul_aT') : null;
    const bT = pre.b ? t(b, 'matmul_bT') : null;
    try {
      if (aT) await transpose(gpu, { out: aT }, { x: a });
      if (bT) await transpose(gpu, { out: bT }, { x: b });
      await matmulTiled(gpu, out, aT ?? a, bT ?? b, bias, d, transA || pre.a, transB && !pre.b, { ...opts, pretranspose: false });
    } finally {
      for (const x of [aT, bT]) if (x) gpu.scratch.release(x);
    }
    return;
  }
  const config = opts.config ?? chooseConfig(gpu, { M: d.M, N: d.N, batch: d.batch, transA, transB });
  checkConfig(config);
  if (!configFits(gpu, config)) {
    throw new LimitError(
      `matmul: tile config ${configName(config)} needs ${workgroupBytes(config)} bytes of workgroup memory and ` +
        `${threadsOf(config)} threads; this device allows ${gpu.limits['maxComputeWorkgroupStorageSize']} and ${gpu.limits['maxComputeInvocationsPerWorkgroup']}`,
    );
  }
  // vec4 loads along an operand's contiguous dimension need that dimension to be a multiple of 4
  const spec: TiledSpec = {
    config,
    transA,
    transB,
    out: floatDtype('matmul', 'out', out),
    a: floatDtype('matmul', 'a', a),
    b: floatDtype('matmul', 'b', b),
    bias: bias ? floatDtype('matmul', 'bias', bias) : null,
    accumulate: opts.accumulate ?? false,
    vecA: (transA ? d.M : d.K) % 4 === 0,
    vecB: (transB ? d.K : d.N) % 4 === 0,
  };
  const tilesM = Math.ceil(d.M / config.BM);
  const tilesN = Math.ceil(d.N / config.BN);
  const [x, y] = grid1d(gpu, tilesM * tilesN);
  const name =
    `matmul_${configName(config)}_${transA ? 't' : 'n'}${transB ? 't' : 'n'}_v${spec.vecA ? 4 : 1}${spec.vecB ? 4 : 1}` +
    `_${out.dtype}_${a.dtype}_${b.dtype}${bias ? `_bias_${bias.dtype}` : ''}${spec.accumulate ? '_acc' : ''}`;
  // the name spells out every field of spec, so it keys the source
  const wgsl = wgslOnce(name, () => tiledWgsl(spec));
  // into `target`, z workgroups deep (the batch, or the slices of K), with these strides
  const tiled = (target: Tensor, values: { sA: number; sB: number; kSplit: number }, z: number) =>
    launch(gpu, {
      name,
      wgsl,
      storage: bias ? [target, a, b, bias] : [target, a, b],
      params: PARAMS,
      values: { M: d.M, N: d.N, K: d.K, tilesM, tilesN, alpha: opts.alpha ?? 1, ...values },
      workgroups: [x, y, z],
    });
  const S = opts.splitK ?? chooseSplitK(gpu, d, tilesM * tilesN, threadsOf(config));
  const slice = Math.ceil(Math.ceil(d.K / Math.max(S, 1)) / config.BK) * config.BK;
  const slices = Math.ceil(d.K / slice);
  if (slices < 2 || d.batch !== 1 || bias || spec.accumulate || spec.out !== 'f32') {
    if (opts.splitK !== undefined && opts.splitK > 1 && slices >= 2) throw new LimitError(`matmul: splitK needs one product with an f32 output and no bias or accumulate`);
    await tiled(out, { sA: d.sA, sB: d.sB, kSplit: 0 }, d.batch);
    return;
  }
  // split K: each slice's partial product (slices, M, N), then their sums in slice order. a
  // slice starts `slice` elements along k: further along a row (stored along k) or down rows
  const part = gpu.scratch.take([slices, d.M * d.N], 'f32', 'matmul_splitk');
  try {
    await tiled(part, { sA: transA ? slice * d.M : slice, sB: transB ? slice : slice * d.N, kSplit: slice }, slices);
    await columnSums(gpu, out.reshape([d.M * d.N]), part);
  } finally {
    part.dispose();
  }
}

/**
 * Slices of K for a product whose output has `tiles` workgroups of `threads`: a decode step's
 * products (32 rows, a few thousand columns) fill a few dozen 32 x 32 tiles of 64 threads and
 * leave most of a large GPU idle while each walks all of K (a paper-shape decode step's
 * products read their weights at about 100 GB/s: BENCHMARKS.md `explicit`). Slices of at least
 * 256 along K bring the threads to MIN_WORKGROUPS workgroups of 256. 1 (no split) on CPU
 * adapters and for products that fill the GPU already. On an H100, 32 x 3,200 x 3,200 reads its
 * weights at 652 GB/s split against 157 unsplit (BENCHMARKS.md `explicit`).
 */
export function chooseSplitK(gpu: Gpu, d: MatmulDims, tiles: number, threads: number): number {
  const target = (MIN_WORKGROUPS * 256) / threads;
  if (gpu.cpu || d.batch !== 1 || tiles * 2 > target) return 1;
  return Math.max(1, Math.min(Math.ceil(target / tiles), Math.floor(d.K / 256), 32));
}

// ---------------------------------------------------------------- nn.Linear

const WG = 256;
const ROWS = 64; // rows of dout per db partial chunk

/** part (P,N): column sums of dout over chunks of ROWS rows */
function dbPartialWgsl(dout: DType): string {
  return /* wgsl */ `
${header(
  [
    { name: 'part', type: 'f32', access: 'read_write' },
    { name: 'dout', type: dout, access: 'read' },
  ],
  [
    ['M', 'u32'],
    ['N', 'u32'],
  ],
)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let c = g.x;
  if (c >= p.N) { return; }
  let chunk = wid.y;
  let m1 = min(p.M, (chunk + 1u) * ${ROWS}u);
  var s = 0.0;
  for (var m = chunk * ${ROWS}u; m < m1; m++) { s += ld_dout(m * p.N + c); }
  part[chunk * p.N + c] = s;
}`;
}

/** x (...,K) viewed as (M,K) */
function rows2d(op: string, what: string, t: Tensor, inner: number): Tensor {
  const last = t.shape[t.shape.length - 1];
  if (t.shape.length < 1 || last !== inner) {
    throw new ShapeError(`${op}: ${what} ${t} should have shape [...,${inner}]`);
  }
  return t.reshape([t.size / Math.max(inner, 1), inner]);
}

function linearDims(op: string, x: Tensor, w: Tensor): { N: number; K: number } {
  if (w.shape.length !== 2) throw new ShapeError(`${op}: w ${w} must be [out features, in features]`);
  const [N, K] = w.shape as [number, number];
  rows2d(op, 'x', x, K);
  return { N, K };
}

/** y (...,N) = x (...,K) . w^T + b, with w (N,K) in nn.Linear layout. */
export async function linearForward(gpu: Gpu, o: { y: Tensor }, i: { x: Tensor; w: Tensor; b?: Tensor }): Promise<void> {
  const op = 'linearForward';
  const { N, K } = linearDims(op, i.x, i.w);
  const x = rows2d(op, 'x', i.x, K);
  expectShape(op, 'y', o.y, [...i.x.shape.slice(0, -1), N]);
  const y = o.y.reshape([x.shape[0]!, N]);
  await matmul(gpu, { out: y }, i.b ? { a: x, b: i.w, bias: i.b } : { a: x, b: i.w }, { transB: true });
}

/** dx = dout . w (overwritten); dw += dout^T . x; db += column sums of dout. */
export async function linearBackward(
  gpu: Gpu,
  o: { dx: Tensor; dw: Tensor; db?: Tensor },
  i: { dout: Tensor; x: Tensor; w: Tensor },
): Promise<void> {
  const op = 'linearBackward';
  const { N, K } = linearDims(op, i.x, i.w);
  const x = rows2d(op, 'x', i.x, K);
  const M = x.shape[0]!;
  expectShape(op, 'dout', i.dout, [...i.x.shape.slice(0, -1), N]);
  expectShape(op, 'dx', o.dx, i.x.shape);
  expectShape(op, 'dw', o.dw, [N, K]);
  expectDtype(op, 'dw', o.dw, ['f32']);
  if (o.db) {
    expectShape(op, 'db', o.db, [N]);
    expectDtype(op, 'db', o.db, ['f32']);
  }
  const dout = i.dout.reshape([M, N]);
  await matmul(gpu, { out: o.dx.reshape([M, K]) }, { a: dout, b: i.w });
  await matmul(gpu, { out: o.dw }, { a: dout, b: x }, { transA: true, accumulate: true });
  if (!o.db || M === 0 || N === 0) return;
  const P = Math.ceil(M / ROWS);
  const part = gpu.scratch.take([P, N], 'f32', 'linear_db_partial');
  try {
    const name = `linear_backward_db_partial_${dout.dtype}`;
    await launch(gpu, {
      name,
      wgsl: wgslOnce(name, () => dbPartialWgsl(floatDtype(op, 'dout', dout))),
      storage: [part, dout],
      params: [
        ['M', 'u32'],
        ['N', 'u32'],
      ],
      values: { M, N },
      workgroups: [Math.ceil(N / WG), P],
    });
    await addColumnSums(gpu, o.db, part);
  } finally {
    part.dispose();
  }
}
