// matmul on tensor cores through WGSL subgroup matrices (Dawn's chromium-experimental-subgroup-matrix).
//
//   out (B,M,N) = a (B,M,K) @ b (B,K,N) [+ bias (N)]        (=, or += with accumulate)
//   transA: a is stored (B,K,M); transB: b is stored (B,N,K); b may drop the batch dim (shared).
//   a and b are f16 (packed two per u32 word); out is f32 or f16; bias any float dtype.
//
// thread mapping: one workgroup of WM*WN subgroups computes a BM x BN block of out. each
// subgroup owns a (BM/WM) x (BN/WN) sub-block held as TM x TN subgroup_matrix_result<f32> tiles
// across the whole K loop. per K step of BK, all threads copy the a and b tiles from storage
// into workgroup memory with 16-byte loads and stores (8 f16 each, staged as vec4<u32> rows
// padded by 8 f16 against bank conflicts). the next step's loads are issued into registers
// before the current step's matrix products and written to workgroup memory after them: into
// the other buffer with stages=2 (one barrier a step), into the same one after a barrier with
// stages=1. transposed operands are staged in their stored layout and read with col_major
// subgroup-matrix loads (no transpose pass).
// epilogue: f32 output without bias on a grid that covers out exactly stores the tiles straight
// to storage (accumulate preloads them from out); otherwise (see SubgroupTile.epilogue) each tile
// goes through a small per-subgroup f32 workgroup array and the lanes add bias / old values,
// guard edges and write pairs, or the tiles go to a padded f32 buffer finished by a second pass.
//
// numerics: f16 products, f32 accumulation in the tensor cores (order of the k sum is fixed by
// the tile loop, so results are deterministic for a given tile config). no atomics.
//
// speed: the kernels suite times every tile at 4096^3 against cuBLAS (its H100 file,
// bench/results/kernels-nvidia-h100-80gb-hbm3-20261122.json, notes matmul_f16_4096); bench/probe_subgroup_matrix.ts
// compares tiles, layouts and epilogues.
//
// wgsl facts this relies on (Dawn in webgpu 0.6.2; tint resolver tests, gpuweb proposal
// subgroup-matrix.md and gpuweb PR #6275):
//  - `enable chromium_experimental_subgroup_matrix;` plus `enable f16;` for f16 components.
//  - types are subgroup_matrix_left<T, K, M> (M rows x K cols), subgroup_matrix_right<T, N, K>
//    (K x N) and subgroup_matrix_result<T, N, M> (M x N): template order is columns, rows.
//  - current builtins take the majorness as a template enumerant:
//    subgroupMatrixLoad<TYPE, row_major|col_major>(ptr, offset, stride) and
//    subgroupMatrixStore<row_major|col_major>(ptr, offset, value, stride). the older forms with
//    a `col_major: bool` argument, subgroupMatrixLoad<TYPE>(ptr, offset, col_major, stride) and
//    subgroupMatrixStore(ptr, offset, value, col_major, stride), warn "use of deprecated builtin".
//  - ptr may point into storage or workgroup arrays; offset and stride count array elements;
//    row-major element [r][c] is at offset + r*stride + c, col-major at offset + c*stride + r.
//    the array's element type may differ from the matrix's: f16 matrices load from array<u32>
//    and array<vec4<u32>> (offset and stride then in u32 / 16-byte units) and f32 matrices
//    store into array<vec4<u32>>, bits preserved (checked on the H100 by the probe).
//  - matrix values live only in function scope (no workgroup/private matrices); calls must be
//    in subgroup-uniform control flow with subgroup-uniform ptr/offset/stride: offsets derived
//    from @builtin(subgroup_id) pass, ones from local_invocation_index / 32 are a compile error
//    unless `diagnostic(off, chromium.subgroup_matrix_uniformity);`. the workgroup's x size
//    must be a multiple of the adapter's maximum subgroup size (a pipeline-creation error).
//  - subgroupMatrixMultiplyAccumulate(left, right, acc) -> acc + left * right.

import type { Gpu, SubgroupMatrixConfig } from '../../gpu/device.ts';
import type { DType } from '../../gpu/dtype.ts';
import { EngramError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDtype, expectPackable, floatDtype, grid1d, header, launch, type ParamSpec, wgslOnce } from '../kernel.ts';

const OP = 'matmulSubgroup';
const FEATURE = 'chromium-experimental-subgroup-matrix';

/** A workgroup tile configuration (the benchmark times several). */
export interface SubgroupTile {
  /** rows and columns of out per workgroup */
  BM: number;
  BN: number;
  /** k per staged step */
  BK: number;
  /** subgroups along M and N (WM*WN subgroups per workgroup) */
  WM: number;
  WN: number;
  /** 2: register prefetch + double-buffered workgroup memory; 1: single buffer, two barriers */
  stages: 1 | 2;
  /** f16 elements of padding per staged row (a multiple of 8; breaks bank conflicts) */
  pad: number;
  /**
   * how staged tiles are declared: 'vec4' (array<vec4<u32>>, written 16 bytes at a time; f16
   * matrices load from it with offset and stride in 16-byte elements), the default, or 'f16'
   * (array<f16>, written one element at a time: several times slower on the H100).
   */
  smem?: 'vec4' | 'f16';
  /** launch order: groups of this many block rows sweep the columns together (L2 reuse); 0: row by row */
  group?: number;
  /**
   * how out is finished when the f32 tiles cannot simply be stored into it (f16 out, bias, M or
   * N not multiples of the tile). 'scratch' (default): in the kernel, one tile per subgroup at a
   * time goes through a small f32 workgroup array, and the lanes add bias and old values,
   * convert and guard the edges. 'reuse': the same through the idle vec4 staging arrays, several
   * tiles per barrier. 'buffer': tiles are always stored straight from the subgroup matrices,
   * into out (after a bias pre-pass) or into a padded f32 scratch buffer that an elementwise
   * pass finishes into out. which wins depends on the tile (bench/probe_subgroup_matrix.ts
   * times them): 'scratch' won with the default tile, storing direct with two-stage ones.
   */
  epilogue?: 'scratch' | 'reuse' | 'buffer';
}

/**
 * Tile configurations, fastest first at 4096^3 (f16 in, f32 out) on an H100 through Dawn/Vulkan
 * (the kernels suite's notes, matmul_f16_4096, list each one's TFLOP/s).
 */
export const SUBGROUP_TILES: readonly SubgroupTile[] = [
  { BM: 128, BN: 128, BK: 64, WM: 4, WN: 2, stages: 1, pad: 8 },
  { BM: 128, BN: 256, BK: 32, WM: 2, WN: 4, stages: 1, pad: 8 },
  { BM: 128, BN: 256, BK: 32, WM: 4, WN: 4, stages: 1, pad: 8 },
  { BM: 256, BN: 128, BK: 32, WM: 4, WN: 2, stages: 1, pad: 8 },
  { BM: 128, BN: 128, BK: 32, WM: 2, WN: 4, stages: 2, pad: 8 },
  { BM: 64, BN: 64, BK: 32, WM: 2, WN: 2, stages: 2, pad: 8 },
];

export const DEFAULT_SUBGROUP_TILE: SubgroupTile = SUBGROUP_TILES[0]!;

export interface SubgroupMatmulOptions {
  transA?: boolean;
  transB?: boolean;
  /** out += a @ b (+ bias) instead of out = ... */
  accumulate?: boolean;
  /** tile configuration; default: DEFAULT_SUBGROUP_TILE, or a 64x64 tile for small outputs */
  tile?: SubgroupTile;
}

export interface SubgroupMatmulQuery {
  M: number;
  N: number;
  K: number;
  dtypes: { a: DType; b: DType; out: DType };
  transA?: boolean;
  transB?: boolean;
  /** product of the batch dimensions (picks the default tile) */
  batch?: number;
  tile?: SubgroupTile;
}

/** The f16 x f16 -> f32 subgroup-matrix shape this adapter offers (16x16x16 preferred), or null. */
export function subgroupMatrixShape(gpu: Gpu): SubgroupMatrixConfig | null {
  const ok = gpu.features.subgroupMatrix.filter((c) => c.componentType === 'f16' && c.resultComponentType === 'f32');
  return ok.find((c) => c.M === 16 && c.N === 16 && c.K === 16) ?? ok[0] ?? null;
}


/** f16 elements of one stage of the staged a and b tiles (rows x (cols + pad), stored layout) */
const stageHalves = (t: SubgroupTile, ta: boolean, tb: boolean): [number, number] => [
  ta ? t.BK * (t.BM + t.pad) : t.BM * (t.BK + t.pad),
  tb ? t.BN * (t.BK + t.pad) : t.BK * (t.BN + t.pad),
];

/** result tiles per subgroup that fit in the idle staged a and b arrays ('reuse' epilogue), or [0, 0] */
function reuseSlots(t: SubgroupTile, ta: boolean, tb: boolean, sm: SubgroupMatrixConfig): [number, number] {
  if (t.epilogue !== 'reuse' || t.smem === 'f16' || sm.N % 4) return [0, 0];
  const [a, b] = stageHalves(t, ta, tb);
  const perSg = (halves: number) => Math.floor((t.stages * halves) / 2 / (t.WM * t.WN * sm.M * sm.N));
  const slots: [number, number] = [perSg(a), perSg(b)];
  return slots[0] + slots[1] > 0 ? slots : [0, 0];
}

const smemBytes = (t: SubgroupTile, ta: boolean, tb: boolean, sm: SubgroupMatrixConfig, scratch: boolean): number => {
  const [a, b] = stageHalves(t, ta, tb);
  const [ra, rb] = reuseSlots(t, ta, tb, sm);
  return 2 * t.stages * (a + b) + (scratch && ra + rb === 0 ? 4 * t.WM * t.WN * sm.M * sm.N : 0);
};

/** Why the tile cannot run with this matrix shape and subgroup size (null if it can). */
function tileProblem(gpu: Gpu, t: SubgroupTile, sm: SubgroupMatrixConfig, sg: number, ta: boolean, tb: boolean, scratch: boolean): string | null {
  const threads = t.WM * t.WN * sg;
  if (t.BM % (t.WM * sm.M) || t.BN % (t.WN * sm.N) || t.BK % sm.K) {
    return `tile ${fmtTile(t)} is not a multiple of the ${sm.M}x${sm.N}x${sm.K} subgroup matrix per subgroup`;
  }
  if (t.pad % 8 || t.BK % 8 || t.BM % 8 || t.BN % 8) return `tile ${fmtTile(t)}: BM, BN, BK and pad must be multiples of 8`;
  if ((t.BM * t.BK) % (8 * threads) || (t.BK * t.BN) % (8 * threads)) {
    return `tile ${fmtTile(t)}: the staged a and b tiles must split evenly into 8-element loads over ${threads} threads`;
  }
  if (threads > (gpu.limits['maxComputeInvocationsPerWorkgroup'] ?? 256)) return `tile ${fmtTile(t)} needs ${threads} invocations per workgroup`;
  const bytes = smemBytes(t, ta, tb, sm, scratch);
  const max = gpu.limits['maxComputeWorkgroupStorageSize'] ?? 16384;
  if (bytes > max) return `tile ${fmtTile(t)} needs ${bytes} bytes of workgroup memory, over this adapter's ${max}`;
  return null;
}

export const fmtTile = (t: SubgroupTile): string =>
  `${t.BM}x${t.BN}x${t.BK}_${t.WM}x${t.WN}_s${t.stages}_p${t.pad}${t.smem === 'f16' ? '_h' : ''}${t.group ? `_g${t.group}` : ''}` +
  `${t.epilogue === 'reuse' ? '_er' : t.epilogue === 'buffer' ? '_eb' : ''}`;

/** Small outputs get a smaller tile so that the grid still fills the GPU. */
function pickTile(M: number, N: number, batch: number): SubgroupTile {
  const big = DEFAULT_SUBGROUP_TILE;
  const blocks = Math.ceil(M / big.BM) * Math.ceil(N / big.BN) * batch;
  return blocks >= 256 ? big : SUBGROUP_TILES[SUBGROUP_TILES.length - 1]!;
}

/** Why this call cannot take the subgroup-matrix path, or null if it can. */
export function subgroupMatmulUnsupported(gpu: Gpu, q: SubgroupMatmulQuery): string | null {
  if (gpu.features.subgroupMatrix.length === 0) {
    return `adapter '${gpu.adapterName}' lacks the '${FEATURE}' feature (Dawn exposes it with the toggle enable-dawn-features=allow_unsafe_apis on adapters with cooperative matrices)`;
  }
  const sm = subgroupMatrixShape(gpu);
  if (!sm) return `adapter '${gpu.adapterName}' has '${FEATURE}' but no f16 x f16 -> f32 configuration`;
  if (!gpu.features.f16) return `adapter '${gpu.adapterName}' lacks the 'shader-f16' feature`;
  if (!gpu.features.subgroups) return `adapter '${gpu.adapterName}' lacks the 'subgroups' feature`;
  const sg = gpu.subgroupSize;
  if (sg === null) return `adapter '${gpu.adapterName}' has a varying subgroup size`;
  const { M, N, K, dtypes, transA = false, transB = false } = q;
  if (dtypes.a !== 'f16' || dtypes.b !== 'f16') return `inputs must be f16 (got a ${dtypes.a}, b ${dtypes.b})`;
  if (dtypes.out !== 'f32' && dtypes.out !== 'f16') return `out must be f32 or f16 (got ${dtypes.out})`;
  if (!(M > 0 && N > 0 && K > 0)) return `empty product M=${M} N=${N} K=${K}`;
  // 16-byte loads of 8 f16: the contiguous dimension of each operand must be a multiple of 8
  const innerA = transA ? M : K;
  const innerB = transB ? K : N;
  if (innerA % 8) return `a's contiguous dimension (${transA ? 'M' : 'K'}=${innerA}) must be a multiple of 8`;
  if (innerB % 8) return `b's contiguous dimension (${transB ? 'K' : 'N'}=${innerB}) must be a multiple of 8`;
  if (dtypes.out === 'f16' && N % 2) return `f16 out needs an even N (got ${N})`;
  const tile = q.tile ?? pickTile(M, N, q.batch ?? 1);
  return tileProblem(gpu, tile, sm, sg, transA, transB, (tile.epilogue ?? 'scratch') !== 'buffer');
}

/** Whether matmulSubgroup can compute this product on this adapter. */
export function subgroupMatmulSupported(gpu: Gpu, q: SubgroupMatmulQuery): boolean {
  return subgroupMatmulUnsupported(gpu, q) === null;
}

// ---------------------------------------------------------------- wgsl

/** Everything that specializes the kernel's WGSL. */
export interface SubgroupMatmulSpec {
  t: SubgroupTile;
  sm: SubgroupMatrixConfig;
  sg: number;
  /**
   * how tiles leave: 'direct' stores them into the f32 target `out` (row stride p.ldo), loading
   * them from it first when `accumulate`; 'scratch' and 'reuse' go through workgroup memory and
   * add bias and old values, convert to `out`'s dtype and guard the edges
   */
  store: 'direct' | 'scratch' | 'reuse';
  /** dtype of the target binding (f32 for 'direct') */
  out: DType;
  /** bias dtype ('scratch' and 'reuse' only) */
  bias: DType | null;
  transA: boolean;
  transB: boolean;
  accumulate: boolean;
  /** the grid does not divide M, N or K: guard the operand loads */
  edge: boolean;
}

const PARAMS: ParamSpec = [
  ['M', 'u32'],
  ['N', 'u32'],
  ['K', 'u32'],
  ['sA', 'u32'], // a's batch stride in 8-element units
  ['sB', 'u32'], // b's batch stride in 8-element units (0: shared b)
  ['sO', 'u32'], // out's batch stride in elements
  ['ldo', 'u32'], // out's row stride in elements
];

/** lines `f(i)` for i in [0, n) */
const rep = (n: number, f: (i: number) => string): string => Array.from({ length: n }, (_, i) => f(i)).join('\n');

/** The kernel's WGSL for a specialization (exported for the probe and for debugging). */
export function subgroupMatmulWgsl(s: SubgroupMatmulSpec): string {
  const { t, sm, sg, transA, transB, edge } = s;
  const threads = t.WM * t.WN * sg;
  const TM = t.BM / t.WM / sm.M; // result tiles per subgroup along m
  const TN = t.BN / t.WN / sm.N; // and along n
  // staged layouts follow the stored layouts: rows x (cols + pad), cols contiguous
  const aRows = transA ? t.BK : t.BM;
  const aCols = transA ? t.BM : t.BK;
  const bRows = transB ? t.BN : t.BK;
  const bCols = transB ? t.BK : t.BN;
  const aStride = aCols + t.pad;
  const bStride = bCols + t.pad;
  const [aStage, bStage] = stageHalves(t, transA, transB);
  const aLoads = (aRows * aCols) / 8 / threads; // 16-byte loads per thread per step
  const bLoads = (bRows * bCols) / 8 / threads;
  const direct = s.store === 'direct';
  const vec4 = t.smem !== 'f16';
  const [capA, capB] = s.store === 'reuse' ? reuseSlots({ ...t, epilogue: 'reuse' }, transA, transB, sm) : [0, 0];
  const reuse = !direct && capA + capB > 0;
  const left = `subgroup_matrix_left<f16, ${sm.K}, ${sm.M}>`;
  const right = `subgroup_matrix_right<f16, ${sm.N}, ${sm.K}>`;
  const result = `subgroup_matrix_result<f32, ${sm.N}, ${sm.M}>`;

  // one 16-byte chunk of a staged tile: chunk c = lid + i*threads of a rows x cols tile
  const fetch = (op: 'a' | 'b', i: number): string => {
    const cols = op === 'a' ? aCols : bCols;
    const per = cols / 8;
    // global row/col origin of the tile and the operand's bounds (rows, cols) and row length
    const [r0, c0, R, C] =
      op === 'a'
        ? transA
          ? ['k0', 'm0', 'p.K', 'p.M']
          : ['m0', 'k0', 'p.M', 'p.K']
        : transB
          ? ['n0', 'k0', 'p.N', 'p.K']
          : ['k0', 'n0', 'p.K', 'p.N'];
    const base = op === 'a' ? 'baseA' : 'baseB';
    const load = `${op}[${base} + (${r0} + r) * (${C} / 8u) + ${c0} / 8u + c8]`;
    return `  {
    let c = lid + ${i * threads}u;
    let r = c / ${per}u;
    let c8 = c % ${per}u;
    ${edge ? `if (${r0} + r < ${R} && ${c0} + c8 * 8u < ${C}) { r${op}${i} = ${load}; } else { r${op}${i} = vec4<u32>(); }` : `r${op}${i} = ${load};`}
  }`;
  };
  // write register chunk i of operand op into stage `st` of its staged tile
  const stash = (op: 'a' | 'b', i: number): string => {
    const per = (op === 'a' ? aCols : bCols) / 8;
    const stride = op === 'a' ? aStride : bStride;
    const stage = op === 'a' ? aStage : bStage;
    const arr = op === 'a' ? 'sa' : 'sb';
    if (vec4) {
      return `  {
    let c = lid + ${i * threads}u;
    ${arr}[st * ${stage / 8}u + (c / ${per}u) * ${stride / 8}u + c % ${per}u] = r${op}${i};
  }`;
    }
    return `  {
    let c = lid + ${i * threads}u;
    let o = st * ${stage}u + (c / ${per}u) * ${stride}u + (c % ${per}u) * 8u;
    let v = r${op}${i};
${rep(4, (w) => `    let h${w} = bitcast<vec2<f16>>(v[${w}]); ${arr}[o + ${2 * w}u] = h${w}.x; ${arr}[o + ${2 * w + 1}u] = h${w}.y;`)}
  }`;
  };
  // matrix operands of k step kk (a multiple of sm.K) from stage `cur`
  // offsets and strides count staged array elements: f16, or vec4<u32> (8 f16, all offsets
  // here are multiples of 8 f16)
  const U = vec4 ? 8 : 1;
  const unit = (e: string) => (vec4 ? `(${e}) / 8u` : e);
  const leftLoad = (i: number, kk: number): string => {
    const m = `sm0 + ${i * sm.M}u`;
    return transA
      ? `subgroupMatrixLoad<${left}, col_major>(&sa, cur * ${aStage / U}u + ${(kk * aStride) / U}u + ${unit(m)}, ${aStride / U}u)`
      : `subgroupMatrixLoad<${left}, row_major>(&sa, cur * ${aStage / U}u + (${m}) * ${aStride / U}u + ${kk / U}u, ${aStride / U}u)`;
  };
  const rightLoad = (j: number, kk: number): string => {
    const n = `sn0 + ${j * sm.N}u`;
    return transB
      ? `subgroupMatrixLoad<${right}, col_major>(&sb, cur * ${bStage / U}u + (${n}) * ${bStride / U}u + ${kk / U}u, ${bStride / U}u)`
      : `subgroupMatrixLoad<${right}, row_major>(&sb, cur * ${bStage / U}u + ${(kk * bStride) / U}u + ${unit(n)}, ${bStride / U}u)`;
  };
  const tiles: [number, number][] = [];
  for (let i = 0; i < TM; i++) for (let j = 0; j < TN; j++) tiles.push([i, j]);
  const compute = rep(t.BK / sm.K, (q) => {
    const kk = q * sm.K;
    return [
      '    {',
      rep(TM, (i) => `      let l${i} = ${leftLoad(i, kk)};`),
      rep(TN, (j) => `      let q${j} = ${rightLoad(j, kk)};`),
      tiles.map(([i, j]) => `      c${i}_${j} = subgroupMatrixMultiplyAccumulate(l${i}, q${j}, c${i}_${j});`).join('\n'),
      '    }',
    ].join('\n');
  });
  // out offset of tile (i, j)'s first element
  const tileOrigin = (i: number, j: number) => `baseO + (m0 + sm0 + ${i * sm.M}u) * p.ldo + n0 + sn0 + ${j * sm.N}u`;
  const init = tiles
    .map(([i, j]) =>
      direct && s.accumulate
        ? `  var c${i}_${j} = subgroupMatrixLoad<${result}, row_major>(&out, ${tileOrigin(i, j)}, p.ldo);`
        : `  var c${i}_${j} = ${result}();`,
    )
    .join('\n');

  const epilogueDirect = tiles.map(([i, j]) => `  subgroupMatrixStore<row_major>(&out, ${tileOrigin(i, j)}, c${i}_${j}, p.ldo);`).join('\n');
  // through scratch: lanes take element pairs (e, e+1) of the tile, in one row since sm.N is even
  const old = (idx: string) => (s.accumulate ? ` + ld_out(${idx})` : '');
  const bias = (col: string) => (s.bias ? ` + ld_bias(${col})` : '');
  const pairStore =
    s.out === 'f32'
      ? `if (gn + 1u < p.N) { st2_out(o, v0${old('o')}${bias('gn')}, v1${old('o + 1u')}${bias('gn + 1u')}); } else { st_out(o, v0${old('o')}${bias('gn')}); }`
      : `st2_out(o, v0${old('o')}${bias('gn')}, v1${old('o + 1u')}${bias('gn + 1u')});`;
  const epilogueScratch = tiles
    .map(
      ([i, j]) => `  subgroupMatrixStore<row_major>(&cs, sgid * ${sm.M * sm.N}u, c${i}_${j}, ${sm.N}u);
  workgroupBarrier();
  for (var e = lane * 2u; e < ${sm.M * sm.N}u; e += ${2 * sg}u) {
    let gm = m0 + sm0 + ${i * sm.M}u + e / ${sm.N}u;
    let gn = n0 + sn0 + ${j * sm.N}u + e % ${sm.N}u;
    if (gm < p.M && gn < p.N) {
      let o = baseO + gm * p.N + gn;
      let v0 = cs[sgid * ${sm.M * sm.N}u + e];
      let v1 = cs[sgid * ${sm.M * sm.N}u + e + 1u];
      ${pairStore}
    }
  }
  workgroupBarrier();`,
    )
    .join('\n');

  // reuse: batches of capA + capB tiles per subgroup through the staged arrays, 4 floats a lane
  const tileF = sm.M * sm.N;
  const quad = (q: number) => `v[${q}]${old(`o + ${q}u`)}${bias(`gn + ${q}u`)}`;
  const quadStore =
    s.out === 'f32'
      ? rep(4, (q) => `      if (gn + ${q}u < p.N) { st_out(o + ${q}u, ${quad(q)}); }`)
      : `      if (gn < p.N) { st2_out(o, ${quad(0)}, ${quad(1)}); }\n      if (gn + 2u < p.N) { st2_out(o + 2u, ${quad(2)}, ${quad(3)}); }`;
  const slot = (k: number): [string, string] =>
    k < capA ? ['sa', `(sgid * ${capA}u + ${k}u) * ${tileF / 4}u`] : ['sb', `(sgid * ${capB}u + ${k - capA}u) * ${tileF / 4}u`];
  const batches: [number, number][][] = [];
  for (let q = 0; reuse && q < tiles.length; q += capA + capB) batches.push(tiles.slice(q, q + capA + capB));
  const epilogueReuse = batches
    .map((batch) =>
      [
        ...batch.map(([i, j], k) => `  subgroupMatrixStore<row_major>(&${slot(k)[0]}, ${slot(k)[1]}, c${i}_${j}, ${sm.N / 4}u);`),
        '  workgroupBarrier();',
        ...batch.map(
          ([i, j], k) => `  for (var e = lane; e < ${tileF / 4}u; e += ${sg}u) {
    let gm = m0 + sm0 + ${i * sm.M}u + (e * 4u) / ${sm.N}u;
    let gn = n0 + sn0 + ${j * sm.N}u + (e * 4u) % ${sm.N}u;
    if (gm < p.M) {
      let o = baseO + gm * p.N + gn;
      let v = bitcast<vec4<f32>>(${slot(k)[0]}[${slot(k)[1]} + e]);
${quadStore}
    }
  }`,
        ),
        '  workgroupBarrier();',
      ].join('\n'),
    )
    .join('\n');

  const outDecl = header(
    [
      { name: 'out', type: s.out, access: 'read_write' },
      ...(s.bias ? [{ name: 'bias', type: s.bias, access: 'read' as const }] : []),
    ],
    PARAMS,
  );
  // the operands are bound after out (and bias) as arrays of 16-byte words
  const nb = s.bias ? 3 : 2;
  return /* wgsl */ `
enable f16;
enable subgroups;
enable chromium_experimental_subgroup_matrix;
${outDecl}
@group(0) @binding(${nb}) var<storage, read> a: array<vec4<u32>>;
@group(0) @binding(${nb + 1}) var<storage, read> b: array<vec4<u32>>;

// staged operand tiles (${t.stages} stage(s)): a ${aRows}x${aCols}, b ${bRows}x${bCols}, padded rows
var<workgroup> sa: array<${vec4 ? 'vec4<u32>' : 'f16'}, ${(t.stages * aStage) / (vec4 ? 8 : 1)}>;
var<workgroup> sb: array<${vec4 ? 'vec4<u32>' : 'f16'}, ${(t.stages * bStage) / (vec4 ? 8 : 1)}>;
${direct || reuse ? '' : `// one result tile per subgroup on its way out\nvar<workgroup> cs: array<f32, ${t.WM * t.WN * sm.M * sm.N}>;`}

@compute @workgroup_size(${threads})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32,
        @builtin(subgroup_id) sgid: u32, @builtin(subgroup_invocation_id) lane: u32) {
${
  t.group
    ? `  // grouped launch order: ${t.group} block rows at a time sweep the block columns
  let nbm = (p.M + ${t.BM - 1}u) / ${t.BM}u;
  let nbn = (p.N + ${t.BN - 1}u) / ${t.BN}u;
  let pid = wid.y * nbn + wid.x;
  let gm0 = (pid / (${t.group}u * nbn)) * ${t.group}u;
  let gh = min(nbm - gm0, ${t.group}u);
  let m0 = (gm0 + (pid % (${t.group}u * nbn)) % gh) * ${t.BM}u;
  let n0 = ((pid % (${t.group}u * nbn)) / gh) * ${t.BN}u;`
    : `  let m0 = wid.y * ${t.BM}u;
  let n0 = wid.x * ${t.BN}u;`
}
  let baseA = wid.z * p.sA;
  let baseB = wid.z * p.sB;
  let baseO = wid.z * p.sO;
  // this subgroup's sub-block of the workgroup tile
  let sm0 = (sgid / ${t.WN}u) * ${t.BM / t.WM}u;
  let sn0 = (sgid % ${t.WN}u) * ${t.BN / t.WN}u;
${init}
${rep(aLoads, (i) => `  var ra${i}: vec4<u32>;`)}
${rep(bLoads, (i) => `  var rb${i}: vec4<u32>;`)}
  let nk = (p.K + ${t.BK - 1}u) / ${t.BK}u;
  var k0 = 0u;
  var st = 0u;
${rep(aLoads, (i) => fetch('a', i))}
${rep(bLoads, (i) => fetch('b', i))}
${rep(aLoads, (i) => stash('a', i))}
${rep(bLoads, (i) => stash('b', i))}
  workgroupBarrier();
  for (var kt = 0u; kt < nk; kt++) {
    let cur = ${t.stages === 2 ? 'kt & 1u' : '0u'};
    let more = kt + 1u < nk;
    if (more) {
      // next step's operands into registers while this step computes
      k0 = (kt + 1u) * ${t.BK}u;
${rep(aLoads, (i) => fetch('a', i))}
${rep(bLoads, (i) => fetch('b', i))}
    }
${compute}
${t.stages === 1 ? '    workgroupBarrier();' : ''}
    if (more) {
      st = ${t.stages === 2 ? 'cur ^ 1u' : '0u'};
${rep(aLoads, (i) => stash('a', i))}
${rep(bLoads, (i) => stash('b', i))}
    }
    workgroupBarrier();
  }
${direct ? epilogueDirect : reuse ? epilogueReuse : epilogueScratch}
}`;
}

// ---------------------------------------------------------------- launcher

function dims(a: Tensor, b: Tensor, out: Tensor, transA: boolean, transB: boolean) {
  const fail = (why: string): never => {
    throw new ShapeError(`${OP}: ${why} (a ${a}, b ${b}, out ${out}${transA ? ', transA' : ''}${transB ? ', transB' : ''})`);
  };
  if (a.shape.length < 2 || b.shape.length < 2 || out.shape.length < 2) fail('a, b and out must have at least 2 dimensions');
  const ra = a.shape.length;
  const rb = b.shape.length;
  const [M, K] = transA ? [a.shape[ra - 1]!, a.shape[ra - 2]!] : [a.shape[ra - 2]!, a.shape[ra - 1]!];
  const [Kb, N] = transB ? [b.shape[rb - 1]!, b.shape[rb - 2]!] : [b.shape[rb - 2]!, b.shape[rb - 1]!];
  if (K !== Kb) fail(`inner dimensions differ (${K} vs ${Kb})`);
  const lead = a.shape.slice(0, -2);
  const batch = lead.reduce((x, y) => x * y, 1);
  const leadB = b.shape.slice(0, -2);
  if (leadB.length > 0 && (leadB.length !== lead.length || leadB.some((d, i) => d !== lead[i]))) {
    fail('b must have the batch dimensions of a, or none');
  }
  const want = [...lead, M, N];
  if (out.shape.length !== want.length || out.shape.some((d, i) => d !== want[i])) fail(`out should have shape [${want.join(',')}]`);
  return { M, N, K, batch, sharedB: leadB.length === 0 };
}

// elementwise passes around the main kernel ('buffer' epilogue): the bias pre-pass for f32 out
// whose tiles are stored in place, and the finish pass from the padded f32 scratch buffer
const EW = 256;

const biasWgsl = (bias: DType, accumulate: boolean) => /* wgsl */ `
${header(
  [
    { name: 'out', type: 'f32', access: 'read_write' },
    { name: 'bias', type: bias, access: 'read' },
  ],
  [
    ['n', 'u32'],
    ['N', 'u32'],
    ['gx', 'u32'],
  ],
)}
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * p.gx;
  if (i >= p.n) { return; }
  out[i] = ${accumulate ? 'out[i] + ' : ''}ld_bias(i % p.N);
}`;

const FINISH_PARAMS: ParamSpec = [
  ['M', 'u32'],
  ['N', 'u32'],
  ['Mp', 'u32'], // rows and row stride of the padded scratch buffer
  ['Np', 'u32'],
  ['rows', 'u32'], // batch * M
  ['ppr', 'u32'], // element pairs per row: ceil(N / 2)
  ['gx', 'u32'],
];

// one thread per element pair (n, n+1) of a row: f16/bf16 out is written a word at a time
const finishWgsl = (out: DType, bias: DType | null, accumulate: boolean) => {
  const add = (idx: string, col: string) => `${accumulate ? ` + ld_out(${idx})` : ''}${bias ? ` + ld_bias(${col})` : ''}`;
  return /* wgsl */ `
${header(
  [
    { name: 'out', type: out, access: 'read_write' },
    { name: 'tmp', type: 'f32', access: 'read' },
    ...(bias ? [{ name: 'bias', type: bias, access: 'read' as const }] : []),
  ],
  FINISH_PARAMS,
)}
@compute @workgroup_size(${EW})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * p.gx;
  let row = i / p.ppr;
  if (row >= p.rows) { return; }
  let c = (i % p.ppr) * 2u;
  let src = ((row / p.M) * p.Mp + row % p.M) * p.Np + c;
  let o = row * p.N + c;
  let v0 = tmp[src]${add('o', 'c')};
  ${
    out === 'f32'
      ? `if (c + 1u < p.N) { st2_out(o, v0, tmp[src + 1u]${add('o + 1u', 'c + 1u')}); } else { st_out(o, v0); }`
      : `st2_out(o, v0, tmp[src + 1u]${add('o + 1u', 'c + 1u')});  // N is even for packed out`
  }
}`;
};

/**
 * out = a @ b (+ bias), or out += ... with accumulate, on tensor cores. f16 a and b, f32 or f16
 * out. Throws unless subgroupMatmulSupported() holds for the call.
 */
export async function matmulSubgroup(
  gpu: Gpu,
  o: { out: Tensor },
  i: { a: Tensor; b: Tensor; bias?: Tensor },
  opts: SubgroupMatmulOptions = {},
): Promise<void> {
  const { transA = false, transB = false, accumulate = false } = opts;
  const { out } = o;
  const { a, b, bias } = i;
  expectDtype(OP, 'out', out, ['f32', 'f16']);
  expectPackable(OP, 'out', out);
  const { M, N, K, batch, sharedB } = dims(a, b, out, transA, transB);
  if (bias) {
    expectDtype(OP, 'bias', bias, ['f32', 'f16', 'bf16']);
    if (bias.shape.length !== 1 || bias.shape[0] !== N) throw new ShapeError(`${OP}: bias ${bias} should have shape [${N}]`);
  }
  const tile = opts.tile ?? pickTile(M, N, batch);
  const dtypes = { a: floatDtype(OP, 'a', a), b: floatDtype(OP, 'b', b), out: out.dtype };
  const why = subgroupMatmulUnsupported(gpu, { M, N, K, dtypes, transA, transB, batch, tile });
  if (why) throw new (why.startsWith('adapter') ? EngramError : ShapeError)(`${OP}: ${why}`);
  const maxWg = gpu.device.limits.maxComputeWorkgroupsPerDimension;
  if (batch > maxWg) throw new ShapeError(`${OP}: batch ${batch} exceeds ${maxWg} workgroups in z; fold it into M`);
  const sm = subgroupMatrixShape(gpu)!;
  const sg = gpu.subgroupSize!;
  const alignedMN = M % tile.BM === 0 && N % tile.BN === 0;
  const edge = !alignedMN || K % tile.BK !== 0;
  const epilogue = tile.epilogue ?? 'scratch';
  // tiles go straight into out when it is f32 and the grid covers it exactly
  const inPlace = out.dtype === 'f32' && alignedMN && (epilogue === 'buffer' || !bias);
  const store = inPlace ? 'direct' : epilogue === 'buffer' ? 'direct' : epilogue;
  const Mp = Math.ceil(M / tile.BM) * tile.BM;
  const Np = Math.ceil(N / tile.BN) * tile.BN;
  const viaBuffer = store === 'direct' && !inPlace;
  const target = viaBuffer ? gpu.scratch.take([batch, Mp, Np], 'f32', 'matmul_subgroup_tiles') : out;
  try {
    if (inPlace && bias) {
      // out = bias (+ out), then the tiles accumulate onto it
      const [x, y] = grid1d(gpu, Math.ceil(out.size / EW));
      const name = `matmul_subgroup_bias_${bias.dtype}${accumulate ? '_acc' : ''}`;
      await launch(gpu, {
        name,
        wgsl: wgslOnce(name, () => biasWgsl(bias.dtype, accumulate)),
        storage: [out, bias],
        params: [
          ['n', 'u32'],
          ['N', 'u32'],
          ['gx', 'u32'],
        ],
        values: { n: out.size, N, gx: x * EW },
        workgroups: [x, y],
      });
    }
    const spec: SubgroupMatmulSpec = {
      t: tile,
      sm,
      sg,
      store,
      out: floatDtype(OP, 'out', target),
      bias: store === 'direct' ? null : (bias?.dtype ?? null),
      transA,
      transB,
      accumulate: inPlace ? accumulate || !!bias : !viaBuffer && accumulate,
      edge,
    };
    const ld = viaBuffer ? Np : N;
    const name =
      `matmul_subgroup_${spec.store}_${spec.out}_f16_f16${spec.bias ? `_bias_${spec.bias}` : ''}${transA ? '_ta' : ''}${transB ? '_tb' : ''}` +
      `${spec.accumulate ? '_acc' : ''}${edge ? '_edge' : ''}_${fmtTile(tile)}_mma${sm.M}x${sm.N}x${sm.K}`;
    await launch(gpu, {
      name,
      wgsl: wgslOnce(`matmul_subgroup ${JSON.stringify(spec)}`, () => subgroupMatmulWgsl(spec)),
      storage: spec.bias && bias ? [target, bias, a, b] : [target, a, b],
      params: PARAMS,
      values: { M, N, K, sA: (M * K) / 8, sB: sharedB ? 0 : (K * N) / 8, sO: viaBuffer ? Mp * Np : M * N, ldo: ld },
      workgroups: [Math.ceil(N / tile.BN), Math.ceil(M / tile.BM), batch],
    });
    if (viaBuffer) {
      const ppr = Math.ceil(N / 2);
      const [x, y] = grid1d(gpu, Math.ceil((batch * M * ppr) / EW));
      const name = `matmul_subgroup_finish_${out.dtype}${bias ? `_bias_${bias.dtype}` : ''}${accumulate ? '_acc' : ''}`;
      await launch(gpu, {
        name,
        wgsl: wgslOnce(name, () => finishWgsl(out.dtype, bias?.dtype ?? null, accumulate)),
        storage: bias ? [out, target, bias] : [out, target],
        params: FINISH_PARAMS,
        values: { M, N, Mp, Np, rows: batch * M, ppr, gx: x * EW },
        workgroups: [x, y],
      });
    }
  } finally {
    if (viaBuffer) target.dispose();
  }
}
