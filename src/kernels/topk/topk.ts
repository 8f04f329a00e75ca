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
//
// CPU mapping (gpu.cpu; pipeline names end in _cpu): on a CPU adapter a workgroup's threads are
// the SIMD lanes of one CPU thread and every barrier is a coroutine switch, so the sort above
// costs far more than its comparisons. there each thread owns a row, CPU_ROWS rows per
// workgroup, no workgroup memory, no barriers. forward: the best K = nextPow2(k) entries are
// held sorted (best first) in 2K private registers (order key, index; padding = key 0, index
// 0xffffffff, below every number) while the row is scanned once in index order; an element is
// inserted only if its key beats the K-th held key, by an unrolled chain of selects
// (insertChainWgsl; constant register names, which llvmpipe keeps in registers). since the
// scan goes in index order, an element beats a held entry iff its key is strictly greater:
// the same (key desc, index asc) order as the sort, so the result is bitwise the same. the
// first k held entries are written out (values re-read as the scores' own bits, NaN -> -inf).
// backward: the thread zeroes its dscores row, then adds the k entries in order into it
// (f32 adds from 0 in the same order as the GPU mapping: bitwise the same).

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
/** rows (threads) per workgroup of the CPU mappings: one SIMD group of lavapipe's */
export const CPU_ROWS = 8;

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

// ---------------------------------------------------------------- CPU mapping helpers

/** a field of the held entries of a CPU mapping: registers `${reg}0..${reg}{K-1}`, their padding value, the candidate's value */
export interface HeldField {
  reg: string;
  pad: string;
  cand: string;
}

/** WGSL: the registers of K held entries, initialised to padding */
export function heldDeclsWgsl(K: number, fields: readonly HeldField[]): string {
  const out: string[] = [];
  for (let j = 0; j < K; j++) for (const f of fields) out.push(`var ${f.reg}${j} = ${f.pad};`);
  return out.join('\n  ');
}

/**
 * WGSL statements: insert the candidate into the K held entries (sorted best first), dropping
 * the K-th, if it beats it. `beats(j)` is a WGSL bool: the candidate ranks before held entry j.
 * branch-free below the guard: entry j takes entry j-1 when the candidate beats j-1, else the
 * candidate when it beats j, else stays; the beats are evaluated on old values (j descending).
 */
export function insertChainWgsl(K: number, fields: readonly HeldField[], beats: (j: number) => string): string {
  const set = (j: number, pick: (f: HeldField) => string) => fields.map((f) => `${f.reg}${j} = ${pick(f)};`).join(' ');
  const lines: string[] = [];
  for (let j = K - 1; j >= 1; j--) {
    lines.push(`let c${j - 1} = ${beats(j - 1)};`);
    // c{K-1} is the guard: true here
    const keep = (f: HeldField) => (j === K - 1 ? f.cand : `select(${f.reg}${j}, ${f.cand}, c${j})`);
    lines.push(set(j, (f) => `select(${keep(f)}, ${f.reg}${j - 1}, c${j - 1})`));
  }
  lines.push(set(0, (f) => (K === 1 ? f.cand : `select(${f.reg}0, ${f.cand}, c0)`)));
  return `if (${beats(K - 1)}) {\n      ${lines.join('\n      ')}\n    }`;
}

/** WGSL for j < K: `body(j)`, guarded by j < k (a uniform) where j > 0 (k >= 1) */
export function unrollWgsl(K: number, k: string, body: (j: number) => string): string {
  const out: string[] = [];
  for (let j = 0; j < K; j++) out.push(j === 0 ? `{ ${body(j)} }` : `if (${j}u < ${k}) { ${body(j)} }`);
  return out.join('\n  ');
}

/** WGSL: the first lines of a CPU mapping's entry point: `row`, this thread's row (returning past `count`) */
export const cpuRowStart = (count: string) => /* wgsl */ `
@compute @workgroup_size(${CPU_ROWS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let row = (wid.x + wid.y * nwg.x) * ${CPU_ROWS}u + l.x;
  if (row >= ${count}) { return; }  // no barriers: an early return is safe`;

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

/** CPU mapping: a row per thread, the best K = nextPow2(k) held in registers during one scan */
function forwardCpuWgsl(K: number): string {
  const fields: HeldField[] = [
    { reg: 'hk', pad: '0u', cand: 'key' },
    { reg: 'hi', pad: '0xffffffffu', cand: 'e' },
  ];
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
${cpuRowStart('p.rows')}
  let base = row * p.n;
  ${heldDeclsWgsl(K, fields)}
  for (var e = 0u; e < p.n; e++) {
    let key = order_key(scores[base + e]);
    // e is above every held index: on equal keys the held entry stays first
    ${insertChainWgsl(K, fields, (j) => `key > hk${j}`)}
  }
  let o = row * p.k;
  ${unrollWgsl(K, 'p.k', (j) => `let bits = scores[base + hi${j}]; values[o + ${j}u] = select(bits, 0xff800000u, (bits & 0x7fffffffu) > 0x7f800000u); indices[o + ${j}u] = hi${j};`)}
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
  const K = nextPow2(k);
  await launch(gpu, {
    name: gpu.cpu ? `topk_forward_k${K}_cpu` : `topk_forward_${P}`,
    wgsl: gpu.cpu ? forwardCpuWgsl(K) : forwardWgsl(P),
    storage: [o.values, o.indices, i.scores],
    params: FWD_PARAMS,
    values: { rows, n, k, lK: Math.log2(K) },
    workgroups: grid1d(gpu, gpu.cpu ? Math.ceil(rows / CPU_ROWS) : rows),
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

/** CPU mapping: a row per thread; the row is zeroed, then the k entries added in order */
const BACKWARD_CPU_WGSL = /* wgsl */ `
${header(
  [
    { name: 'dscores', type: 'f32', access: 'read_write' },
    { name: 'indices', type: 'u32', access: 'read' },
    { name: 'dvalues', type: 'f32', access: 'read' },
  ],
  BWD_PARAMS,
)}
${cpuRowStart('p.rows')}
  let base = row * p.n;
  for (var e = 0u; e < p.n; e++) { dscores[base + e] = 0.0; }
  for (var j = 0u; j < p.k; j++) {
    let ix = indices[row * p.k + j];
    if (ix < p.n) { dscores[base + ix] += dvalues[row * p.k + j]; }
  }
}`;

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
    name: gpu.cpu ? 'topk_backward_cpu' : `topk_backward_${P}`,
    wgsl: gpu.cpu ? BACKWARD_CPU_WGSL : backwardWgsl(P),
    storage: [o.dscores, i.indices, i.dvalues],
    params: BWD_PARAMS,
    values: { rows, n, k },
    workgroups: grid1d(gpu, gpu.cpu ? Math.ceil(rows / CPU_ROWS) : rows),
  });
}
