// k-means assignment: the nearest centroid of every sub-vector (the assignment step of Lloyd's
// k-means and the encoder of product quantisation, memory3/pq.ts). discrete: no backward.
//
//   codes (N,M) u32 = per vector n and sub-space m, argmin_c sum_d (x[n,m,d] - centroids[m,c,d])^2,
//                     ties -> the lowest c                                                   (=)
//   dist  (N,M) f32 = that minimum                                                           (=)
//   x (N,M,D) f32: N vectors, each split into M sub-vectors of D dims; centroids (M,C,D) f32: C
//   centroids per sub-space.
//
// GPU thread mapping: a workgroup of WG = 64 threads per (block of 64 vectors, sub-space m) (a 2-D
// grid past 65535 workgroups); thread l owns vector n = 64*block + l and holds its D values in
// registers (a private array, D a pipeline constant). the sub-space's centroids go through
// workgroup memory in tiles of TC = floor(2048/D) (at least 1) centroids, one coalesced
// cooperative load per tile (8 KiB of workgroup memory at most); each thread then scans the tile
// in centroid order. threads past N clamp to vector N-1 (they take part in the barriers) and
// write nothing.
// CPU mapping (gpu.cpu, a fixed subgroup size S (cpuLanes()) and D <= 16; pipeline names end in
// _cpu): on a CPU adapter a workgroup's threads are the SIMD lanes of one CPU thread, a barrier is
// a coroutine switch and a load costs about ten multiply-adds (matmul_cpu.ts), so there a
// workgroup is one subgroup of S lanes, no workgroup memory, no barriers, and loads are shared:
// lane l holds V = 2 vectors (n = base + v*S + l) in registers (unrolled over D), and the
// sub-space's centroids go S at a time: lane l loads centroid c0 + l (clamped into range) and
// subgroupShuffle hands each of the S rows to every lane (per lane and centroid: D/S loads and D
// shuffles for 2D multiply-adds). 3-6x faster than a lane per vector reading every
// centroid itself, in a rough timing on lavapipe; V = 4 was at most 1.4x faster again and up to about
// doubled the compile time. larger D (the registers and the compile time grow with it), or no
// fixed subgroup size: the GPU mapping runs.
// numerics: f32 accumulation of (x - c)^2 (fma) over d ascending; the scan keeps a centroid only
// if its distance is strictly below the best so far, so exact ties go to the lowest index. both
// mappings do the same operations in the same order: bitwise the same results. inputs must be
// finite (WGSL may assume no NaN or infinity: the code is then unspecified, but within [0, C)).
// no atomics; every output element has one writer: deterministic.
// limits: N >= 0, M >= 1, 1 <= C <= 65536, 1 <= D <= 256.

import type { Gpu } from '../../gpu/device.ts';
import { ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { cpuLanes, expectDisjoint, expectDtype, expectShape, grid1d, header, launch, type BindingDecl, type ParamSpec } from '../kernel.ts';

/** most centroids per sub-space */
export const KMEANS_MAX_C = 65536;
/** most dims per sub-vector (the private array each thread holds) */
export const KMEANS_MAX_D = 256;

/** vectors (threads) per workgroup of the GPU mapping */
const WG = 64;
/** centroid floats per workgroup-memory tile of the GPU mapping (8 KiB) */
const TILE_FLOATS = 2048;
/** largest D of the CPU mapping (its rows live in unrolled registers) */
const CPU_MAX_D = 16;
/** vectors per lane of the CPU mapping */
const CPU_V = 2;

const PARAMS: ParamSpec = [
  ['N', 'u32'],
  ['M', 'u32'],
  ['C', 'u32'],
  ['NB', 'u32'], // workgroups per sub-space: ceil(N / rows per workgroup)
  ['G', 'u32'], // NB * M workgroups in all
];

const BINDINGS: readonly BindingDecl[] = [
  { name: 'codes', type: 'u32', access: 'read_write' },
  { name: 'dist', type: 'f32', access: 'read_write' },
  { name: 'x', type: 'f32', access: 'read' },
  { name: 'centroids', type: 'f32', access: 'read' },
];

/** centroids per tile of the GPU mapping at D dims */
const tileCentroids = (D: number): number => Math.max(1, Math.floor(TILE_FLOATS / D));

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/** WGSL: keep centroid `c` (distance `s`) if it beats the best so far (strictly: ties keep the lower index) */
const keepBest = (s: string, c: string, best = 'best', bi = 'bi') => `if (${s} < ${best} || ${c} == 0u) { ${best} = ${s}; ${bi} = ${c}; }`;

function gpuWgsl(D: number): string {
  const TC = tileCentroids(D);
  return /* wgsl */ `${header(BINDINGS, PARAMS)}
var<workgroup> tile: array<f32, ${TC * D}>;  // centroids c0 .. c0+TC-1 of sub-space m: [c][d]

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let g = wid.x + wid.y * nwg.x;
  if (g >= p.G) { return; }  // grid padding; uniform per workgroup
  let m = g / p.NB;
  let n = (g % p.NB) * ${WG}u + lid;
  let xb = (min(n, p.N - 1u) * p.M + m) * ${D}u;  // past N: vector N-1, for the barriers
  var xv: array<f32, ${D}>;
  for (var d = 0u; d < ${D}u; d++) { xv[d] = x[xb + d]; }
  let cb = m * p.C * ${D}u;  // centroids of sub-space m
  var best = 0.0;
  var bi = 0u;
  for (var c0 = 0u; c0 < p.C; c0 += ${TC}u) {
    let nc = min(${TC}u, p.C - c0);
    for (var e = lid; e < nc * ${D}u; e += ${WG}u) { tile[e] = centroids[cb + c0 * ${D}u + e]; }
    workgroupBarrier();
    for (var t = 0u; t < nc; t++) {
      var s = 0.0;
      for (var d = 0u; d < ${D}u; d++) {
        let df = xv[d] - tile[t * ${D}u + d];
        s = fma(df, df, s);
      }
      let c = c0 + t;
      ${keepBest('s', 'c')}
    }
    workgroupBarrier();  // the tile is dead
  }
  if (n < p.N) {
    codes[n * p.M + m] = bi;
    dist[n * p.M + m] = best;
  }
}`;
}

function cpuWgsl(D: number, S: number): string {
  const V = range(CPU_V);
  const Ds = range(D);
  return /* wgsl */ `enable subgroups;
${header(BINDINGS, PARAMS)}

@compute @workgroup_size(${S})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  let g = wid.x + wid.y * nwg.x;
  if (g >= p.G) { return; }  // grid padding; uniform per workgroup
  let m = g / p.NB;
  let nb = (g % p.NB) * ${S * CPU_V}u;
  ${V.map(
    (v) => `let n${v} = nb + ${v * S}u + lane;
  let xb${v} = (min(n${v}, p.N - 1u) * p.M + m) * ${D}u;  // past N: vector N-1 (the lanes stay converged)
  ${Ds.map((d) => `let x${v}_${d} = x[xb${v} + ${d}u];`).join(' ')}
  var best${v} = 0.0;
  var bi${v} = 0u;`,
  ).join('\n  ')}
  let cb = m * p.C * ${D}u;  // centroids of sub-space m
  for (var c0 = 0u; c0 < p.C; c0 += ${S}u) {
    let kb = cb + min(c0 + lane, p.C - 1u) * ${D}u;
    ${Ds.map((d) => `let k${d} = centroids[kb + ${d}u];`).join(' ')}
    for (var j = 0u; j < ${S}u; j++) {
      let c = c0 + j;
      if (c >= p.C) { break; }  // uniform
      ${Ds.map((d) => `let y${d} = subgroupShuffle(k${d}, j);`).join(' ')}
      ${V.map(
        (v) => `{
        var s = 0.0;
        ${Ds.map((d) => `s = fma(x${v}_${d} - y${d}, x${v}_${d} - y${d}, s);`).join(' ')}
        ${keepBest('s', 'c', `best${v}`, `bi${v}`)}
      }`,
      ).join('\n      ')}
    }
  }
  ${V.map((v) => `if (n${v} < p.N) { codes[n${v} * p.M + m] = bi${v}; dist[n${v} * p.M + m] = best${v}; }`).join('\n  ')}
}`;
}

interface KmeansDims {
  N: number;
  M: number;
  C: number;
  D: number;
}

function checkShapes(op: string, o: { codes: Tensor; dist: Tensor }, i: { x: Tensor; centroids: Tensor }): KmeansDims {
  const { x, centroids } = i;
  if (x.shape.length !== 3) throw new ShapeError(`${op}: x ${x} should have shape [N,M,D] (N vectors of M sub-vectors of D dims)`);
  const [N, M, D] = x.shape as [number, number, number];
  expectDtype(op, 'x', x, ['f32']);
  if (M < 1) throw new ShapeError(`${op}: x ${x} has M=${M} sub-vectors; need at least 1`);
  if (D < 1 || D > KMEANS_MAX_D) throw new ShapeError(`${op}: x ${x} has sub-vectors of D=${D} dims; D must be in [1, ${KMEANS_MAX_D}]`);
  if (centroids.shape.length !== 3) throw new ShapeError(`${op}: centroids ${centroids} should have shape [M,C,D] = [${M},*,${D}]`);
  expectShape(op, 'centroids', centroids, [M, -1, D]);
  expectDtype(op, 'centroids', centroids, ['f32']);
  const C = centroids.shape[1]!;
  if (C < 1 || C > KMEANS_MAX_C) throw new ShapeError(`${op}: centroids ${centroids} has C=${C} centroids per sub-space; C must be in [1, ${KMEANS_MAX_C}]`);
  expectDtype(op, 'codes', o.codes, ['u32']);
  expectShape(op, 'codes', o.codes, [N, M]);
  expectDtype(op, 'dist', o.dist, ['f32']);
  expectShape(op, 'dist', o.dist, [N, M]);
  expectDisjoint(op, o.codes, o.dist);
  for (const out of [o.codes, o.dist]) for (const t of [x, centroids]) expectDisjoint(op, out, t);
  return { N, M, C, D };
}

/**
 * k-means assignment: per vector n and sub-space m, the index of the nearest of the sub-space's C
 * centroids by squared L2 distance (ties -> the lowest index) into codes, and that distance into
 * dist. x (N,M,D) f32, centroids (M,C,D) f32; see the file header for limits and numerics.
 */
export async function kmeansAssign(gpu: Gpu, o: { codes: Tensor; dist: Tensor }, i: { x: Tensor; centroids: Tensor }): Promise<void> {
  const op = 'kmeansAssign';
  const { N, M, C, D } = checkShapes(op, o, i);
  if (N === 0) return;
  const S = D <= CPU_MAX_D ? cpuLanes(gpu) : null;
  const R = S !== null ? S * CPU_V : WG;
  const NB = Math.ceil(N / R);
  await launch(gpu, {
    name: S !== null ? `kmeans_assign_d${D}_s${S}_v${CPU_V}_cpu` : `kmeans_assign_d${D}_tc${tileCentroids(D)}`,
    wgsl: S !== null ? cpuWgsl(D, S) : gpuWgsl(D),
    storage: [o.codes, o.dist, i.x, i.centroids],
    params: PARAMS,
    values: { N, M, C, NB, G: NB * M },
    workgroups: grid1d(gpu, NB * M),
  });
}
