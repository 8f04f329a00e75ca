// product-key top-k: the k best of the k x k candidates of two half top-k's, and their softmax.
//
//   forward   per (t, h), from the half rows (2h, t) and (2h+1, t) of values/indices [2H, T, k]
//             (topkForward over [2H, T, n] half-scores): candidate (a, b), a, b < k, has score
//             v1[a] + v2[b] (an f32 add) and slot i1[a] * n + i2[b]. the k best (score desc,
//             ties -> lower slot first) give, [T, H, k] (=):
//               slots   u32  i1[a] * n + i2[b]
//               pick    u32  a << 16 | b
//               scores  f32  the selected raw scores, best first
//               weights f32  softmax of scores (max-subtracted, f32)
//   backward  dvalues [2H, T, k] f32 (=) from dweights [T, H, k], the selection held fixed:
//             dS_j = w_j (dw_j - sum_i w_i dw_i); dvalues[(2h,t), a] = sum of dS_j over j with
//             pick_j.a = a; dvalues[(2h+1,t), b] = sum of dS_j over j with pick_j.b = b
//
// with these tie rules and half rows sorted by topkForward (value desc, index asc), the k best
// candidates are the k best of all n^2 slots (Lample's argument: a slot whose half index is
// outside its half's top-k is beaten by k slots that are all candidates). that holds exactly for
// exact sums; in f32 one corner case remains: two half values closer than the rounding of their
// sums (about an ulp of the sum) can give equal rounded sums, and then the slot rule may prefer a
// slot whose half index the half top-k dropped, right at the k-th place. scores must be finite
// for the weights to mean anything (a NaN sum reads as -inf, like topkForward; a head whose
// best score is -inf gets NaN weights).
//
// forward thread mapping: one workgroup per (t, h) (a 2-D grid past 65535). the k*k candidates
// go to workgroup memory as (order key of the f32 sum, pick), padded to P = max(64,
// 2^ceil(log2 k^2)) entries, and selectTopWgsl() (topk.ts) leaves the best K = 2^ceil(log2 k)
// sorted first. comparisons are integer compares of the order keys; on equal keys the slots are
// compared (their half indices read from `indices`, so no extra workgroup memory: 8P bytes,
// 32 KiB at k = 64). thread j < k then writes entry j; the softmax sum is computed by every
// thread over the same k keys in the same order (k <= 64 exps each), so all agree bitwise.
// backward thread mapping: one workgroup of 64 threads per (t, h): w, dw, pick go to workgroup
// memory; every thread forms sum_i w_i dw_i in the same order; thread a sums dS_j over
// j = 0..k-1 in order for both halves. no float atomics; bitwise reproducible.
//
// CPU mapping (gpu.cpu; pipeline names end in _cpu; see topk.ts): a (t, h) per thread, CPU_ROWS
// per workgroup, no workgroup memory, no barriers. forward: the k*k candidates are scanned
// (a outer, b inner) and the best K = nextPow2(k) held sorted in 3K private registers (order
// key, slot, pick; padding = key 0, below every number) by insertChainWgsl, with the sort's
// comparison (key desc, then slot asc: the scan is not in slot order). the same total order
// gives the same selection; the softmax is the same f32 expressions (m = the best score, the
// sum over j = 0..k-1 in order, exp(s - m) / sum), so the outputs are bitwise the same.
// backward: the thread zeroes its two dvalues rows, forms sum_i w_i dw_i in order, then adds
// dS_j for j = 0..k-1 in order into dvalues[(2h,t), a_j] and dvalues[(2h+1,t), b_j]: each
// entry sees the same f32 adds from 0 in the same order as the GPU mapping.

import type { Gpu } from '../../gpu/device.ts';
import { LimitError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDisjoint, expectDtype, expectShape, grid1d, header, launch, type ParamSpec } from '../kernel.ts';
import {
  CPU_ROWS,
  ORDER_KEY_WGSL,
  TOPK_MAX_K,
  TOPK_MAX_N,
  cpuRowStart,
  expectSortFits,
  heldDeclsWgsl,
  insertChainWgsl,
  nextPow2,
  selectDeclsWgsl,
  selectTopWgsl,
  sortSize,
  sortThreads,
  unrollWgsl,
  type HeldField,
} from './topk.ts';

const PARAMS: ParamSpec = [
  ['T', 'u32'],
  ['H', 'u32'],
  ['k', 'u32'],
  ['n', 'u32'],
  ['lK', 'u32'], // log2 of K = nextPow2(k)
];

function forwardWgsl(P: number): string {
  const WG = sortThreads(P);
  return /* wgsl */ `
${header(
  [
    { name: 'slots', type: 'u32', access: 'read_write' },
    { name: 'weights', type: 'f32', access: 'read_write' },
    { name: 'pick', type: 'u32', access: 'read_write' },
    { name: 'scores', type: 'f32', access: 'read_write' },
    { name: 'values', type: 'f32', access: 'read' },
    { name: 'indices', type: 'u32', access: 'read' },
  ],
  PARAMS,
)}
${ORDER_KEY_WGSL}
var<private> r1: u32;  // first element of the half rows (2h, t) and (2h+1, t)
var<private> r2: u32;
fn slot_of(c: u32) -> u32 {
  if (c == 0xffffffffu) { return 0xffffffffu; }  // padding
  return indices[r1 + (c >> 16u)] * p.n + indices[r2 + (c & 0xffffu)];
}
fn better(ka: u32, ca: u32, kb: u32, cb: u32) -> bool {
  if (ka != kb) { return ka > kb; }
  return slot_of(ca) < slot_of(cb);
}
${selectDeclsWgsl(P)}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let g = wid.x + wid.y * nwg.x;  // t * H + h
  if (g >= p.T * p.H) { return; }  // grid padding; uniform per workgroup
  let lid = l.x;
  let t = g / p.H;
  let h = g - t * p.H;
  r1 = (2u * h * p.T + t) * p.k;
  r2 = r1 + p.T * p.k;
  let kk2 = p.k * p.k;
  for (var c = lid; c < ${P}u; c += ${WG}u) {
    if (c < kk2) {
      let a = c / p.k;
      let b = c - a * p.k;
      kk[c] = order_key(bitcast<u32>(values[r1 + a] + values[r2 + b]));
      ii[c] = (a << 16u) | b;
    } else {
      kk[c] = 0u;
      ii[c] = 0xffffffffu;
    }
  }
  workgroupBarrier();
  ${selectTopWgsl(P, 'p.lK')}
  let m = order_value(kk[0]);
  for (var j = lid; j < p.k; j += ${WG}u) {
    var sum = 0.0;
    for (var q = 0u; q < p.k; q++) { sum += exp(order_value(kk[q]) - m); }
    let s = order_value(kk[j]);
    let c = ii[j];
    let o = g * p.k + j;
    slots[o] = slot_of(c);
    pick[o] = c;
    scores[o] = s;
    weights[o] = exp(s - m) / sum;
  }
}`;
}

/** CPU mapping: a (t, h) per thread, the best K = nextPow2(k) candidates held in registers */
function forwardCpuWgsl(K: number): string {
  const fields: HeldField[] = [
    { reg: 'hk', pad: '0u', cand: 'key' },
    { reg: 'hs', pad: '0xffffffffu', cand: 'slot' },
    { reg: 'hp', pad: '0xffffffffu', cand: 'c' },
  ];
  return /* wgsl */ `
${header(
  [
    { name: 'slots', type: 'u32', access: 'read_write' },
    { name: 'weights', type: 'f32', access: 'read_write' },
    { name: 'pick', type: 'u32', access: 'read_write' },
    { name: 'scores', type: 'f32', access: 'read_write' },
    { name: 'values', type: 'f32', access: 'read' },
    { name: 'indices', type: 'u32', access: 'read' },
  ],
  PARAMS,
)}
${ORDER_KEY_WGSL}
${cpuRowStart('p.T * p.H')}
  let g = row;  // t * H + h
  let t = g / p.H;
  let h = g - t * p.H;
  let r1 = (2u * h * p.T + t) * p.k;  // first element of the half rows (2h, t) and (2h+1, t)
  let r2 = r1 + p.T * p.k;
  ${heldDeclsWgsl(K, fields)}
  for (var a = 0u; a < p.k; a++) {
    let va = values[r1 + a];
    let sa = indices[r1 + a] * p.n;
    for (var b = 0u; b < p.k; b++) {
      let key = order_key(bitcast<u32>(va + values[r2 + b]));
      let slot = sa + indices[r2 + b];
      let c = (a << 16u) | b;
      ${insertChainWgsl(K, fields, (j) => `(key > hk${j} || (key == hk${j} && slot < hs${j}))`)}
    }
  }
  let m = order_value(hk0);
  var sum = 0.0;
  ${unrollWgsl(K, 'p.k', (j) => `sum += exp(order_value(hk${j}) - m);`)}
  let o = g * p.k;
  ${unrollWgsl(K, 'p.k', (j) => `let s = order_value(hk${j}); slots[o + ${j}u] = hs${j}; pick[o + ${j}u] = hp${j}; scores[o + ${j}u] = s; weights[o + ${j}u] = exp(s - m) / sum;`)}
}`;
}

const BWD_WG = TOPK_MAX_K;

const BACKWARD_WGSL = /* wgsl */ `
${header(
  [
    { name: 'dvalues', type: 'f32', access: 'read_write' },
    { name: 'weights', type: 'f32', access: 'read' },
    { name: 'pick', type: 'u32', access: 'read' },
    { name: 'dweights', type: 'f32', access: 'read' },
  ],
  PARAMS,
)}
var<workgroup> ws: array<f32, ${TOPK_MAX_K}>;
var<workgroup> dws: array<f32, ${TOPK_MAX_K}>;
var<workgroup> pk: array<u32, ${TOPK_MAX_K}>;
@compute @workgroup_size(${BWD_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let g = wid.x + wid.y * nwg.x;  // t * H + h
  if (g >= p.T * p.H) { return; }  // grid padding; uniform per workgroup
  let lid = l.x;
  if (lid < p.k) {
    ws[lid] = weights[g * p.k + lid];
    dws[lid] = dweights[g * p.k + lid];
    pk[lid] = pick[g * p.k + lid];
  }
  workgroupBarrier();
  if (lid >= p.k) { return; }
  var wdw = 0.0;
  for (var j = 0u; j < p.k; j++) { wdw += ws[j] * dws[j]; }
  var sa = 0.0;
  var sb = 0.0;
  for (var j = 0u; j < p.k; j++) {
    let dS = ws[j] * (dws[j] - wdw);
    let c = pk[j];
    if ((c >> 16u) == lid) { sa += dS; }
    if ((c & 0xffffu) == lid) { sb += dS; }
  }
  let t = g / p.H;
  let h = g - t * p.H;
  let r1 = (2u * h * p.T + t) * p.k;
  dvalues[r1 + lid] = sa;
  dvalues[r1 + p.T * p.k + lid] = sb;
}`;

/** CPU mapping: a (t, h) per thread; its dvalues rows are zeroed, then dS_j added in order j */
const BACKWARD_CPU_WGSL = /* wgsl */ `
${header(
  [
    { name: 'dvalues', type: 'f32', access: 'read_write' },
    { name: 'weights', type: 'f32', access: 'read' },
    { name: 'pick', type: 'u32', access: 'read' },
    { name: 'dweights', type: 'f32', access: 'read' },
  ],
  PARAMS,
)}
${cpuRowStart('p.T * p.H')}
  let g = row;  // t * H + h
  let t = g / p.H;
  let h = g - t * p.H;
  let r1 = (2u * h * p.T + t) * p.k;
  let r2 = r1 + p.T * p.k;
  let o = g * p.k;
  for (var a = 0u; a < p.k; a++) {
    dvalues[r1 + a] = 0.0;
    dvalues[r2 + a] = 0.0;
  }
  var wdw = 0.0;
  for (var j = 0u; j < p.k; j++) { wdw += weights[o + j] * dweights[o + j]; }
  for (var j = 0u; j < p.k; j++) {
    let dS = weights[o + j] * (dweights[o + j] - wdw);
    let c = pick[o + j];
    if ((c >> 16u) < p.k) { dvalues[r1 + (c >> 16u)] += dS; }
    if ((c & 0xffffu) < p.k) { dvalues[r2 + (c & 0xffffu)] += dS; }
  }
}`;

/** G = 2H, T, k of half top-k tensors [2H, T, k]; checks the limits */
function halfShape(op: string, what: string, t: Tensor): { H: number; T: number; k: number } {
  expectShape(op, what, t, [-1, -1, -1]);
  const [G, T, k] = t.shape as [number, number, number];
  if (G % 2 !== 0 || G === 0) throw new ShapeError(`${op}: ${what} ${t} should have shape [2H,T,k]: its first dimension ${G} must be even and > 0 (2 halves per head)`);
  if (k > TOPK_MAX_K) throw new LimitError(`${op}: ${what} ${t} has k = ${k}; the limit is k <= ${TOPK_MAX_K} (k*k candidates per head)`);
  if (k < 1) throw new ShapeError(`${op}: ${what} ${t} has k = 0; k must be >= 1`);
  return { H: G / 2, T, k };
}

/** halves: values/indices [2H, T, k] from topkForward over [2H, T, n] scores.
 *  outputs [T, H, k]: slots u32 (i1[a]*n + i2[b]), weights f32 (softmax of the k best candidate scores),
 *  pick u32 (a << 16 | b, which candidate), scores f32 (the raw selected scores, before softmax). */
export async function productTopkForward(gpu: Gpu, o: { slots: Tensor; weights: Tensor; pick: Tensor; scores: Tensor }, i: { values: Tensor; indices: Tensor }, n: number): Promise<void> {
  const op = 'productTopkForward';
  expectDtype(op, 'values', i.values, ['f32']);
  expectDtype(op, 'indices', i.indices, ['u32']);
  const { H, T, k } = halfShape(op, 'values', i.values);
  expectShape(op, 'indices', i.indices, i.values.shape);
  if (!Number.isInteger(n) || n > TOPK_MAX_N) throw new LimitError(`${op}: n = ${n} sub-keys per half; the limit is an integer n <= ${TOPK_MAX_N}`);
  if (n < k) throw new ShapeError(`${op}: n = ${n} sub-keys per half is less than k = ${k} (values ${i.values})`);
  const outs: [Tensor, string, 'f32' | 'u32'][] = [
    [o.slots, 'slots', 'u32'],
    [o.weights, 'weights', 'f32'],
    [o.pick, 'pick', 'u32'],
    [o.scores, 'scores', 'f32'],
  ];
  for (const [t, name, dtype] of outs) {
    expectDtype(op, name, t, [dtype]);
    expectShape(op, name, t, [T, H, k]);
    for (const r of [i.values, i.indices]) expectDisjoint(op, t, r);
  }
  const P = sortSize(k * k);
  expectSortFits(gpu, op, P, `k*k = ${k * k} candidates`);
  if (T === 0) return;
  const K = nextPow2(k);
  await launch(gpu, {
    name: gpu.cpu ? `product_topk_forward_k${K}_cpu` : `product_topk_forward_${P}`,
    wgsl: gpu.cpu ? forwardCpuWgsl(K) : forwardWgsl(P),
    storage: [o.slots, o.weights, o.pick, o.scores, i.values, i.indices],
    params: PARAMS,
    values: { T, H, k, n, lK: Math.log2(K) },
    workgroups: grid1d(gpu, gpu.cpu ? Math.ceil((T * H) / CPU_ROWS) : T * H),
  });
}

/** dweights [T, H, k] (grad of the softmax weights) -> dvalues [2H, T, k] (grad of the half top-k values, =):
 *  dS = w * (dw - sum_j w_j dw_j) per (t, h); dvalues[(2h, t), a] = sum of dS_j over selected j with pick.a == a; dvalues[(2h+1, t), b] likewise with pick.b == b. */
export async function productTopkBackward(gpu: Gpu, o: { dvalues: Tensor }, i: { weights: Tensor; pick: Tensor; dweights: Tensor }): Promise<void> {
  const op = 'productTopkBackward';
  expectDtype(op, 'dvalues', o.dvalues, ['f32']);
  expectDtype(op, 'weights', i.weights, ['f32']);
  expectDtype(op, 'pick', i.pick, ['u32']);
  expectDtype(op, 'dweights', i.dweights, ['f32']);
  const { H, T, k } = halfShape(op, 'dvalues', o.dvalues);
  expectShape(op, 'weights', i.weights, [T, H, k]);
  expectShape(op, 'pick', i.pick, [T, H, k]);
  expectShape(op, 'dweights', i.dweights, [T, H, k]);
  for (const r of [i.weights, i.pick, i.dweights]) expectDisjoint(op, o.dvalues, r);
  if (T === 0) return;
  await launch(gpu, {
    name: gpu.cpu ? 'product_topk_backward_cpu' : 'product_topk_backward',
    wgsl: gpu.cpu ? BACKWARD_CPU_WGSL : BACKWARD_WGSL,
    storage: [o.dvalues, i.weights, i.pick, i.dweights],
    params: PARAMS,
    values: { T, H, k, n: 0, lK: 0 },
    workgroups: grid1d(gpu, gpu.cpu ? Math.ceil((T * H) / CPU_ROWS) : T * H),
  });
}
