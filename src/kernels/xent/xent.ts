// softmax cross-entropy over the vocabulary, fused with the softmax, forward and backward.
//
//   forward   lse    (N)   = log sum_v exp(logits[n,v])                            saved, f32
//             losses (N)   = lse[n] - logits[n, t[n]]        0 on ignored rows      f32
//             loss   (1)   = sum_n losses[n] / count         count = non-ignored rows; 0 if none
//   backward  dlogits (N,V) = (softmax(logits[n]) - onehot(t[n])) * dloss / count   (=, activation grad)
//
// logits (N,V) may have any leading shape (B,T,V): N is their product. targets (N) are a 'u32'
// tensor. a target of IGNORE_INDEX (0xFFFFFFFF) ignores its row (padding, masked prompt tokens):
// loss 0, gradient 0, not counted, lse 0, and its logits are not read (the forward skips the row,
// the backward only writes zeros). any other target >= V is a caller bug: its loss and gradient
// are NaN, so it shows.
//
// thread mapping: the forward runs one workgroup of WG threads per row, one pass over the row
// with an online max/sum: each thread keeps (m, s = sum exp(x - m)) over a strided walk whose
// UNROLL loads per iteration are independent (coalesced, several in flight), f16/bf16 read a
// whole word (two elements) per load; the workgroup then merges the (m, s) pairs in a tree.
// the mean is a second, one-workgroup pass over losses (fixed order: deterministic, no atomics).
// the backward needs no reduction (lse is saved): a 2-D grid of (row, chunk) workgroups, each
// thread loading K units (elements for f32, words for f16/bf16) before computing any, then
// writing whole words. a packed row of odd V starts or ends mid-word; each word belongs to the
// row of its low element, whose workgroup computes the high element with the next row's lse and
// target, so every word has exactly one writer. dloss/count comes from a one-workgroup pass over
// targets into a scratch scalar.
// in place: pass dlogits === logits (the same tensor, or a view of the same bytes) to overwrite
// the logits with their gradient and save N*V storage; each word is read and written by one thread.
// numerics: f32 throughout; large logits (1e4) are safe since every exp has a non-positive
// argument. loss = (m - x_t) + log s keeps the loss exact-ish even when m ~ 1e4; the gradient
// uses the saved f32 lse, whose absolute error at |lse| ~ 1e4 is ~5e-4 (the same relative error
// the f32 logits themselves carry at that magnitude).

import type { Gpu } from '../../gpu/device.ts';
import type { DType } from '../../gpu/dtype.ts';
import { ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDisjoint, expectDtype, expectShape, floatDtype, grid1d, header, launch, type BindingDecl, type ParamSpec, wgslOnce } from '../kernel.ts';

/** a target equal to this ignores its row (padding): loss 0, gradient 0, not counted in the mean */
export const IGNORE_INDEX = 0xffffffff;

const WG = 256;
const UNROLL = 4; // forward: independent loads per thread per iteration
const K = 8; // backward: units per thread
const NAN_BITS = 0x7fc00000;

// ---------------------------------------------------------------- helpers

/** the workgroup tree reduction, shared by the passes over targets */
const treeWgsl = (vars: readonly [string, string][], combine: string) => /* wgsl */ `
${vars.map(([n, t]) => `var<workgroup> ${n}: array<${t}, ${WG}>;`).join('\n')}
fn tree(lid: u32) {
  workgroupBarrier();
  for (var k = ${WG / 2}u; k > 0u; k >>= 1u) {
    if (lid < k) { ${combine} }
    workgroupBarrier();
  }
}`;

/** two f32 values of one packed word */
const unpack = (dtype: DType, w: string) =>
  dtype === 'f16' ? `unpack2x16float(${w})` : `vec2<f32>(bf16_lo(${w}), bf16_hi(${w}))`;

// ---------------------------------------------------------------- forward

const FWD_PARAMS: ParamSpec = [
  ['N', 'u32'],
  ['V', 'u32'],
  ['nan', 'u32'],
];

function forwardWgsl(dtype: DType): string {
  const packed = dtype !== 'f32';
  const ks = [...Array(UNROLL).keys()];
  // one loop iteration: UNROLL clamped loads first, then masking and the online update
  const body = packed
    ? /* wgsl */ `
  let w0 = a >> 1u;
  let w1 = (b + 1u) >> 1u;  // words touching [a, b)
  for (var w = w0 + lid; w < w1; w += ${UNROLL * WG}u) {
    ${ks.map((k) => `let d${k} = logits[min(w + ${k * WG}u, w1 - 1u)];`).join('\n    ')}
    var lo: vec4<f32>;
    var hi: vec4<f32>;
    ${ks
      .map(
        (k) => `{
      let wk = w + ${k * WG}u;
      let x = ${unpack(dtype, `d${k}`)};
      lo[${k}] = select(NEG, x.x, wk < w1 && 2u * wk >= a);  // the low half may belong to row n-1
      hi[${k}] = select(NEG, x.y, wk < w1 && 2u * wk + 1u < b); // the high half to row n+1
    }`,
      )
      .join('\n    ')}
    absorb(lo);
    absorb(hi);
  }`
    : /* wgsl */ `
  for (var e = a + lid; e < b; e += ${UNROLL * WG}u) {
    ${ks.map((k) => `let d${k} = logits[min(e + ${k * WG}u, b - 1u)];`).join('\n    ')}
    absorb(vec4<f32>(${ks.map((k) => `select(NEG, d${k}, e + ${k * WG}u < b)`).join(', ')}));
  }`;
  return /* wgsl */ `
${header(
  [
    { name: 'losses', type: 'f32', access: 'read_write' },
    { name: 'lse', type: 'f32', access: 'read_write' },
    { name: 'logits', type: dtype, access: 'read' },
    { name: 'targets', type: 'u32', access: 'read' },
  ],
  FWD_PARAMS,
)}
const NEG = -3.4028234e38;  // finite: exp(NEG - m) = 0 and max(m, NEG) = m, never inf - inf
var<private> m: f32;        // running max of this thread's elements
var<private> s: f32;        // sum of exp(x - m) over them
var<workgroup> red_m: array<f32, ${WG}>;
var<workgroup> red_s: array<f32, ${WG}>;
var<workgroup> t_sh: u32;

// folds four values into (m, s): one rescale of s, four exps with non-positive arguments
fn absorb(x: vec4<f32>) {
  let mn = max(m, max(max(x.x, x.y), max(x.z, x.w)));
  let e = exp(x - vec4<f32>(mn));
  s = s * exp(m - mn) + ((e.x + e.y) + (e.z + e.w));
  m = mn;
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let n = wid.x + wid.y * nwg.x;
  if (n >= p.N) { return; }  // uniform per workgroup: barriers stay safe
  let lid = l.x;
  // an ignored row reads no logits: loss 0, lse 0 (uniform load: the branch is workgroup-wide)
  if (lid == 0u) { t_sh = targets[n]; }
  let t = workgroupUniformLoad(&t_sh);
  if (t == ${IGNORE_INDEX}u) {
    if (lid == 0u) { losses[n] = 0.0; lse[n] = 0.0; }
    return;
  }
  let a = n * p.V;
  let b = a + p.V;
  m = NEG;
  s = 0.0;
  ${body}
  // merge (m, s) pairs: (m1, s1) + (m2, s2) = (M, s1 e^(m1-M) + s2 e^(m2-M)), M = max(m1, m2)
  red_m[lid] = m;
  red_s[lid] = s;
  workgroupBarrier();
  for (var k = ${WG / 2}u; k > 0u; k >>= 1u) {
    if (lid < k) {
      let m1 = red_m[lid];
      let m2 = red_m[lid + k];
      let mn = max(m1, m2);
      red_s[lid] = red_s[lid] * exp(m1 - mn) + red_s[lid + k] * exp(m2 - mn);
      red_m[lid] = mn;
    }
    workgroupBarrier();
  }
  if (lid == 0u) {
    let mx = red_m[0];
    let ls = log(red_s[0]);
    lse[n] = mx + ls;
    // (m - x_t) first: both are logits, so the difference is exact-ish even at 1e4
    losses[n] = select(bitcast<f32>(p.nan), (mx - ld_logits(a + min(t, p.V - 1u))) + ls, t < p.V);
  }
}`;
}

/** one workgroup over the targets: the mean of losses (forward) or dloss / count (backward) */
function countWgsl(mean: boolean): string {
  return /* wgsl */ `
${header(
  [
    { name: 'out', type: 'f32', access: 'read_write' },
    { name: 'targets', type: 'u32', access: 'read' },
    ...(mean ? [{ name: 'losses', type: 'f32' as const, access: 'read' as const }] : []),
  ],
  [
    ['N', 'u32'],
    ['dloss', 'f32'],
  ],
)}
${treeWgsl(
  [
    ['rs', 'f32'],
    ['rc', 'u32'],
  ],
  'rs[lid] += rs[lid + k]; rc[lid] += rc[lid + k];',
)}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) l: vec3<u32>) {
  let lid = l.x;
  var s = 0.0;
  var c = 0u;
  // fixed strided order, then a fixed tree: the same bits every run
  for (var n = lid; n < p.N; n += ${WG}u) {
    if (targets[n] != ${IGNORE_INDEX}u) {
      ${mean ? 's += losses[n];' : ''}
      c += 1u;
    }
  }
  rs[lid] = s;
  rc[lid] = c;
  tree(lid);
  if (lid == 0u) {
    ${mean ? 'out[0] = select(0.0, rs[0] / f32(rc[0]), rc[0] > 0u);' : 'out[0] = p.dloss / f32(max(rc[0], 1u));'}
  }
}`;
}

// ---------------------------------------------------------------- backward

const BWD_PARAMS: ParamSpec = [
  ['N', 'u32'],
  ['V', 'u32'],
  ['C', 'u32'],
  ['nan', 'u32'],
];

function backwardWgsl(dtype: DType, inPlace: boolean): string {
  const packed = dtype !== 'f32';
  const src = inPlace ? 'dlogits' : 'logits';
  const reads: BindingDecl[] = [
    ...(inPlace ? [] : [{ name: 'logits', type: dtype, access: 'read' } as const]),
    { name: 'targets', type: 'u32', access: 'read' },
    { name: 'lse', type: 'f32', access: 'read' },
    { name: 'coef', type: 'f32', access: 'read' },
  ];
  // ignored rows (rc = 0) load nothing, except a word they share with the next row
  const body = packed
    ? /* wgsl */ `
  // words owned by row n: those whose low element is in [a, b)
  let ws = (a + 1u) >> 1u;
  let we = (b + 1u) >> 1u;
  let w_base = ws + chunk * ${K * WG}u + lid.x;
  // odd V: the last word's high element is column 0 of row n+1 (or padding after the last row)
  let last = n + 1u >= p.N;
  let t1 = targets[min(n + 1u, p.N - 1u)];
  let l1 = lse[min(n + 1u, p.N - 1u)];
  let rc1 = row_coef(t1);
  var d: array<u32, ${K}>;
  for (var k = 0u; k < ${K}u; k++) {
    let w = min(w_base + k * ${WG}u, we - 1u);
    if (rc != 0.0 || w + 1u == we) { d[k] = ${src}[w]; }
  }
  for (var k = 0u; k < ${K}u; k++) {
    let w = w_base + k * ${WG}u;
    if (w < we) {
      let x = ${unpack(dtype, 'd[k]')};
      let e = 2u * w;
      let c = e - a;
      let g0 = grad(x.x, l, c == t, rc);
      var g1 = 0.0;
      if (e + 1u < b) { g1 = grad(x.y, l, c + 1u == t, rc); }
      else if (!last) { g1 = grad(x.y, l1, t1 == 0u, rc1); }
      st2_dlogits(e, g0, g1);
    }
  }`
    : /* wgsl */ `
  let c_base = chunk * ${K * WG}u + lid.x;
  var d: array<f32, ${K}>;
  if (rc != 0.0) {
    for (var k = 0u; k < ${K}u; k++) { d[k] = ${src}[a + min(c_base + k * ${WG}u, p.V - 1u)]; }
  }
  for (var k = 0u; k < ${K}u; k++) {
    let c = c_base + k * ${WG}u;
    if (c < p.V) { dlogits[a + c] = grad(d[k], l, c == t, rc); }
  }`;
  return /* wgsl */ `
${header([{ name: 'dlogits', type: dtype, access: 'read_write' }, ...reads], BWD_PARAMS)}
// dloss/count for a counted row, 0 for an ignored one, NaN for an out-of-range target
fn row_coef(t: u32) -> f32 {
  return select(select(coef[0], bitcast<f32>(p.nan), t >= p.V), 0.0, t == ${IGNORE_INDEX}u);
}
// an ignored row's lse is 0 and its logits may be unread: select, not multiply (inf * 0 = NaN)
fn grad(x: f32, l: f32, is_t: bool, rc: f32) -> f32 {
  return select((exp(x - l) - select(0.0, 1.0, is_t)) * rc, 0.0, rc == 0.0);
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let g = wid.x + wid.y * nwg.x;
  let n = g / p.C;  // row; chunk of the row below
  if (n >= p.N) { return; }
  let chunk = g - n * p.C;
  let a = n * p.V;
  let b = a + p.V;
  let t = targets[n];
  let l = lse[n];
  let rc = row_coef(t);
  ${body}
}`;
}

// ---------------------------------------------------------------- launchers

function dims(op: string, logits: Tensor, targets: Tensor): { N: number; V: number; lead: readonly number[]; dtype: DType } {
  if (logits.shape.length < 2) throw new ShapeError(`${op}: logits ${logits} should have shape [N,V] (or [B,T,V])`);
  const V = logits.shape.at(-1)!;
  if (V < 1) throw new ShapeError(`${op}: logits ${logits} has an empty vocabulary`);
  const lead = logits.shape.slice(0, -1);
  const dtype = floatDtype(op, 'logits', logits);
  expectShape(op, 'targets', targets, lead);
  expectDtype(op, 'targets', targets, ['u32']);
  return { N: logits.size / V, V, lead, dtype };
}

/**
 * losses[n] = logsumexp(logits[n]) - logits[n, targets[n]] (0 for IGNORE_INDEX rows); loss[0] =
 * their mean over non-ignored rows (0 if every row is ignored). Saves lse (N) for the backward.
 */
export async function xentForward(
  gpu: Gpu,
  o: { losses: Tensor; loss: Tensor; lse: Tensor },
  i: { logits: Tensor; targets: Tensor },
): Promise<void> {
  const op = 'xentForward';
  const { N, V, lead, dtype } = dims(op, i.logits, i.targets);
  expectShape(op, 'losses', o.losses, lead);
  expectShape(op, 'lse', o.lse, lead);
  expectShape(op, 'loss', o.loss, [1]);
  for (const [what, t] of [['losses', o.losses], ['lse', o.lse], ['loss', o.loss]] as const) expectDtype(op, what, t, ['f32']);
  // no output may overlap another tensor (launch() binds arena neighbours read_write)
  const outs = [o.losses, o.lse, o.loss];
  for (const [j, w] of outs.entries()) for (const t of [...outs.slice(j + 1), i.logits, i.targets]) expectDisjoint(op, w, t);
  const name = `xent_forward_${dtype}`;
  await launch(gpu, {
    name,
    wgsl: wgslOnce(name, () => forwardWgsl(dtype)),
    storage: [o.losses, o.lse, i.logits, i.targets],
    params: FWD_PARAMS,
    values: { N, V, nan: NAN_BITS },
    workgroups: grid1d(gpu, N),
  });
  await launch(gpu, {
    name: 'xent_mean',
    wgsl: wgslOnce('xent_mean', () => countWgsl(true)),
    storage: [o.loss, i.targets, o.losses],
    params: [
      ['N', 'u32'],
      ['dloss', 'f32'],
    ],
    values: { N, dloss: 0 },
    workgroups: [1],
  });
}

export interface XentBackwardOptions {
  /** gradient of the final loss with respect to the mean loss (default 1) */
  dloss?: number;
}

/**
 * dlogits = (softmax(logits) - onehot(targets)) * dloss / count, 0 on ignored rows (overwritten).
 * dlogits has the logits' shape and dtype; dlogits === logits computes the gradient in place.
 */
export async function xentBackward(
  gpu: Gpu,
  o: { dlogits: Tensor },
  i: { logits: Tensor; targets: Tensor; lse: Tensor },
  opts: XentBackwardOptions = {},
): Promise<void> {
  const op = 'xentBackward';
  const { N, V, lead, dtype } = dims(op, i.logits, i.targets);
  const { dloss = 1 } = opts;
  expectShape(op, 'dlogits', o.dlogits, i.logits.shape);
  expectDtype(op, 'dlogits', o.dlogits, [i.logits.dtype]);
  expectShape(op, 'lse', i.lse, lead);
  expectDtype(op, 'lse', i.lse, ['f32']);
  if (!Number.isFinite(dloss)) throw new ShapeError(`${op}: dloss must be finite, got ${dloss}`);
  const inPlace = o.dlogits.buffer === i.logits.buffer && o.dlogits.offset === i.logits.offset;
  // overlap checks before anything is recorded (coef is scratch: its own buffer); in place,
  // the logits are read through dlogits, bound once
  const reads = inPlace ? [i.targets, i.lse] : [i.logits, i.targets, i.lse];
  for (const r of reads) expectDisjoint(op, o.dlogits, r);
  const coef = gpu.scratch.take([1], 'f32', 'xent_coef');
  try {
    await launch(gpu, {
      name: 'xent_backward_coef',
      wgsl: wgslOnce('xent_backward_coef', () => countWgsl(false)),
      storage: [coef, i.targets],
      params: [
        ['N', 'u32'],
        ['dloss', 'f32'],
      ],
      values: { N, dloss },
      workgroups: [1],
    });
    // units per row: elements (f32) or owned words (f16/bf16); a chunk is K * WG units
    const units = dtype === 'f32' ? V : Math.ceil(V / 2);
    const C = Math.ceil(units / (K * WG));
    const name = `xent_backward_${dtype}${inPlace ? '_inplace' : ''}`;
    await launch(gpu, {
      name,
      wgsl: wgslOnce(name, () => backwardWgsl(dtype, inPlace)),
      storage: [o.dlogits, ...reads, coef],
      params: BWD_PARAMS,
      values: { N, V, C, nan: NAN_BITS },
      workgroups: grid1d(gpu, N * C),
    });
  } finally {
    coef.dispose();
  }
}
