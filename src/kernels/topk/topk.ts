// top-k of every row (the half-score selection of the product-key memory layer).
//
//   forward   values (..., k) f32, indices (..., k) u32 = the k largest of each row of
//             scores (..., n) f32, descending; ties -> lower index first           (=)
//   backward  dscores (..., n) f32 = dvalues (..., k) scattered to indices, 0 elsewhere
//             (=, overwrites every element; a repeated index sums its entries)
//
// limits: 1 <= k <= min(n, 64), n <= 4096 (a row is sorted in one workgroup's memory).
// NaN: a NaN score reads as -inf: it ranks below every number (among -infs by index) and its
// value comes out as -inf. -0 and +0 are equal (tie by index); values are the scores' own bits.
//
// forward thread mapping: one workgroup per row (a 2-D grid past 65535 rows). the row is loaded
// into workgroup memory, padded to P = max(64, 2^ceil(log2 n)) entries, as an order key (a u32
// whose unsigned order is the float order; padding = 0, below every number) and a tie key (the
// index; 0xffffffff for padding). selectTopWgsl() then leaves the best K = 2^ceil(log2 k)
// entries sorted in slots [0, K): it sorts every block of K entries with a bitonic network (all
// comparators descending), then folds the blocks pairwise, log2(P/K) rounds: block A takes
// best(A[i], B[K-1-i]) (a bitonic sequence holding the best K of A and B) and is re-sorted by
// log2(K) half-cleaner stages. every stage is a loop of compare-exchanges over the threads and
// a workgroupBarrier. with k << n this does about half the work of a full bitonic sort. the
// comparisons are integer compares of (order key desc, tie key asc): no float arithmetic, so
// ties are exact and the result is deterministic. workgroup memory: 8P bytes (32 KiB at n = 4096).
// backward thread mapping: one workgroup per row: the row is zeroed in workgroup memory, thread 0
// adds the k entries in order (deterministic even with repeated indices; an index >= n is
// dropped), and the row is written out coalesced. no float atomics anywhere.

import type { Gpu } from '../../gpu/device.ts';
import { LimitError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDisjoint, expectDtype, expectShape, grid1d, header, launch, type ParamSpec } from '../kernel.ts';

/** the longest row one workgroup sorts */
export const TOPK_MAX_N = 4096;
/** the largest k (the product top-k sorts k*k candidates in one workgroup) */
export const TOPK_MAX_K = 64;
/** fewest padded entries: tiny rows share one pipeline */
const MIN_P = 64;

export const nextPow2 = (x: number): number => 2 ** Math.ceil(Math.log2(Math.max(1, x)));
/** padded entries of a workgroup sort of m entries */
export const sortSize = (m: number): number => Math.max(MIN_P, nextPow2(m));
/** threads of a workgroup sorting P entries: one compare-exchange each per stage, up to 256 */
export const sortThreads = (P: number): number => Math.min(256, P / 2);

/** Throws a LimitError unless the workgroup memory of a P-entry sort fits the device. */
export function expectSortFits(gpu: Gpu, op: string, P: number, what: string): void {
  const limit = gpu.limits['maxComputeWorkgroupStorageSize'] ?? 16384;
  if (8 * P > limit) {
    throw new LimitError(`${op}: ${what} pads to ${P} entries, whose sort needs ${8 * P} bytes of workgroup memory; this device allows ${limit}`);
  }
}

/** WGSL: order key of f32 bits (unsigned order = float order; NaN as -inf, -0 as +0; > 0) */
export const ORDER_KEY_WGSL = /* wgsl */ `
fn order_key(bits: u32) -> u32 {
  var b = bits;
  if ((b & 0x7fffffffu) > 0x7f800000u) { b = 0xff800000u; }  // NaN -> -inf
  if (b == 0x80000000u) { b = 0u; }                         // -0 -> +0
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}
fn order_value(key: u32) -> f32 {
  return bitcast<f32>(select(~key, key & 0x7fffffffu, (key & 0x80000000u) != 0u));
}`;

/**
 * WGSL declarations for selectTopWgsl: the arrays kk (order keys) and ii (tie keys, the
 * payload) of P entries and the compare-exchange. `better(ka, ia, kb, ib) -> bool` (a ranks
 * before b) must be defined by the kernel.
 */
export function selectDeclsWgsl(P: number): string {
  return /* wgsl */ `
var<workgroup> kk: array<u32, ${P}>;
var<workgroup> ii: array<u32, ${P}>;
fn cx(lo: u32, hi: u32) {
  let kl = kk[lo];
  let il = ii[lo];
  let kh = kk[hi];
  let ih = ii[hi];
  if (better(kh, ih, kl, il)) {
    kk[lo] = kh;
    ii[lo] = ih;
    kk[hi] = kl;
    ii[hi] = il;
  }
}`;
}

/**
 * WGSL statements (inside main, after kk/ii are filled and a barrier): leave the best K = 2^lK
 * entries of kk/ii sorted best first in [0, K). `lid` is the local index; `lK` a uniform u32.
 */
export function selectTopWgsl(P: number, lK: string): string {
  const WG = sortThreads(P);
  const LP = Math.log2(P);
  const half = P / 2;
  return /* wgsl */ `
  let K = 1u << ${lK};
  // 1. sort every K-block, best first (bitonic, flip form: every comparator points one way)
  for (var ls = 1u; ls <= ${lK}; ls++) {
    let hs = 1u << (ls - 1u);
    for (var w = lid; w < ${half}u; w += ${WG}u) {
      let base = (w >> (ls - 1u)) << ls;
      let q = w & (hs - 1u);
      cx(base + q, base + 2u * hs - 1u - q);
    }
    workgroupBarrier();
    for (var d = ls - 1u; d > 0u; d--) {
      let lj = d - 1u;
      for (var w = lid; w < ${half}u; w += ${WG}u) {
        let lo = ((w >> lj) << (lj + 1u)) | (w & ((1u << lj) - 1u));
        cx(lo, lo + (1u << lj));
      }
      workgroupBarrier();
    }
  }
  // 2. fold: in round r the blocks at multiples of 2^r keep the best K of themselves and the
  // block 2^(r-1) after them, then re-sort (best(A[i], B[K-1-i]) is bitonic)
  for (var r = 1u; r + ${lK} <= ${LP}u; r++) {
    let live = ${P}u >> r;
    for (var w = lid; w < live; w += ${WG}u) {
      let i = w & (K - 1u);
      let a = ((w >> ${lK}) << (r + ${lK})) | i;
      let b = a - i + (1u << (r - 1u + ${lK})) + K - 1u - i;
      let ka = kk[a];
      let kb = kk[b];
      let ib = ii[b];
      if (better(kb, ib, ka, ii[a])) {
        kk[a] = kb;
        ii[a] = ib;
      }
    }
    workgroupBarrier();
    for (var d = ${lK}; d > 0u; d--) {
      let lj = d - 1u;
      for (var w = lid; w < (live >> 1u); w += ${WG}u) {
        let q = w & ((K >> 1u) - 1u);
        let lo = ((w >> (${lK} - 1u)) << (r + ${lK})) + (((q >> lj) << (lj + 1u)) | (q & ((1u << lj) - 1u)));
        cx(lo, lo + (1u << lj));
      }
      workgroupBarrier();
    }
  }`;
}

// ---------------------------------------------------------------- forward

const FWD_PARAMS: ParamSpec = [
  ['rows', 'u32'],
  ['n', 'u32'],
  ['k', 'u32'],
  ['lK', 'u32'], // log2 of K = nextPow2(k)
];

function forwardWgsl(P: number): string {
  const WG = sortThreads(P);
  // scores and values are read and written as raw bits: no float operation touches them
  return /* wgsl */ `
${header(
  [
    { name: 'values', type: 'u32', access: 'read_write' },
    { name: 'indices', type: 'u32', access: 'read_write' },
    { name: 'scores', type: 'u32', access: 'read' },
  ],
  FWD_PARAMS,
)}
${ORDER_KEY_WGSL}
fn better(ka: u32, ia: u32, kb: u32, ib: u32) -> bool { return ka > kb || (ka == kb && ia < ib); }
${selectDeclsWgsl(P)}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= p.rows) { return; }  // grid padding; uniform per workgroup
  let lid = l.x;
  let base = row * p.n;
  for (var e = lid; e < ${P}u; e += ${WG}u) {
    if (e < p.n) {
      kk[e] = order_key(scores[base + e]);
      ii[e] = e;
    } else {
      kk[e] = 0u;
      ii[e] = 0xffffffffu;
    }
  }
  workgroupBarrier();
  ${selectTopWgsl(P, 'p.lK')}
  for (var j = lid; j < p.k; j += ${WG}u) {
    let idx = ii[j];
    let bits = scores[base + idx];
    values[row * p.k + j] = select(bits, 0xff800000u, (bits & 0x7fffffffu) > 0x7f800000u);
    indices[row * p.k + j] = idx;
  }
}`;
}

/** rows and row length of a (..., n) tensor whose partner is (..., k); checks the limits */
function rowsOf(op: string, wide: Tensor, narrow: Tensor, wideName: string, narrowName: string): { rows: number; n: number; k: number } {
  if (wide.shape.length < 1) throw new ShapeError(`${op}: ${wideName} ${wide} must have at least one dimension (..., n)`);
  const n = wide.shape[wide.shape.length - 1]!;
  const lead = wide.shape.slice(0, -1);
  expectShape(op, narrowName, narrow, [...lead, -1]);
  const k = narrow.shape[narrow.shape.length - 1]!;
  if (n > TOPK_MAX_N) throw new LimitError(`${op}: ${wideName} ${wide} has rows of n = ${n}; the limit is n <= ${TOPK_MAX_N}`);
  if (k > TOPK_MAX_K) throw new LimitError(`${op}: ${narrowName} ${narrow} asks for k = ${k}; the limit is k <= ${TOPK_MAX_K}`);
  if (k < 1 || k > n) throw new ShapeError(`${op}: k = ${k} (${narrowName} ${narrow}) must be in 1..n = ${n} (${wideName} ${wide})`);
  return { rows: narrow.size / k, n, k };
}

/** per row of scores (..., n) f32: the k largest, descending, ties -> lower index first. values/indices (..., k) */
export async function topkForward(gpu: Gpu, o: { values: Tensor; indices: Tensor }, i: { scores: Tensor }): Promise<void> {
  const op = 'topkForward';
  expectDtype(op, 'scores', i.scores, ['f32']);
  expectDtype(op, 'values', o.values, ['f32']);
  expectDtype(op, 'indices', o.indices, ['u32']);
  const { rows, n, k } = rowsOf(op, i.scores, o.values, 'scores', 'values');
  expectShape(op, 'indices', o.indices, o.values.shape);
  for (const out of [o.values, o.indices]) expectDisjoint(op, out, i.scores);
  expectDisjoint(op, o.values, o.indices);
  const P = sortSize(n);
  expectSortFits(gpu, op, P, `scores ${i.scores} (n = ${n})`);
  if (rows === 0) return;
  await launch(gpu, {
    name: `topk_forward_${P}`,
    wgsl: forwardWgsl(P),
    storage: [o.values, o.indices, i.scores],
    params: FWD_PARAMS,
    values: { rows, n, k, lK: Math.log2(nextPow2(k)) },
    workgroups: grid1d(gpu, rows),
  });
}

// ---------------------------------------------------------------- backward

const BWD_PARAMS: ParamSpec = [
  ['rows', 'u32'],
  ['n', 'u32'],
  ['k', 'u32'],
];

function backwardWgsl(P: number): string {
  const WG = Math.min(256, P);
  return /* wgsl */ `
${header(
  [
    { name: 'dscores', type: 'f32', access: 'read_write' },
    { name: 'indices', type: 'u32', access: 'read' },
    { name: 'dvalues', type: 'f32', access: 'read' },
  ],
  BWD_PARAMS,
)}
var<workgroup> acc: array<f32, ${P}>;
var<workgroup> ix: array<u32, ${TOPK_MAX_K}>;
var<workgroup> dv: array<f32, ${TOPK_MAX_K}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= p.rows) { return; }  // grid padding; uniform per workgroup
  let lid = l.x;
  for (var e = lid; e < p.n; e += ${WG}u) { acc[e] = 0.0; }
  for (var j = lid; j < p.k; j += ${WG}u) {
    ix[j] = indices[row * p.k + j];
    dv[j] = dvalues[row * p.k + j];
  }
  workgroupBarrier();
  // one thread, in order: repeated indices (not from topkForward) still sum deterministically
  if (lid == 0u) {
    for (var j = 0u; j < p.k; j++) {
      if (ix[j] < p.n) { acc[ix[j]] += dv[j]; }
    }
  }
  workgroupBarrier();
  for (var e = lid; e < p.n; e += ${WG}u) { dscores[row * p.n + e] = acc[e]; }
}`;
}

/** dense gradient of the scores: dscores (..., n) f32 = dvalues scattered to indices, 0 elsewhere (=, overwrites every element) */
export async function topkBackward(gpu: Gpu, o: { dscores: Tensor }, i: { indices: Tensor; dvalues: Tensor }): Promise<void> {
  const op = 'topkBackward';
  expectDtype(op, 'dscores', o.dscores, ['f32']);
  expectDtype(op, 'indices', i.indices, ['u32']);
  expectDtype(op, 'dvalues', i.dvalues, ['f32']);
  const { rows, n, k } = rowsOf(op, o.dscores, i.dvalues, 'dscores', 'dvalues');
  expectShape(op, 'indices', i.indices, i.dvalues.shape);
  for (const r of [i.indices, i.dvalues]) expectDisjoint(op, o.dscores, r);
  if (rows === 0) return;
  const P = sortSize(n);
  await launch(gpu, {
    name: `topk_backward_${P}`,
    wgsl: backwardWgsl(P),
    storage: [o.dscores, i.indices, i.dvalues],
    params: BWD_PARAMS,
    values: { rows, n, k },
    workgroups: grid1d(gpu, rows),
  });
}
