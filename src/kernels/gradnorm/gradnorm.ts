// global gradient norm, clip coefficient, and explicit clipping.
//
//   gradNorm   norm  (1) = sqrt(sum over all grads and elements of g^2)
//              scale (1) = min(1, maxNorm / (norm + 1e-6))     (torch.nn.utils.clip_grad_norm_)
//   clipGrads  g *= scale, in place, for every tensor (scale a number or a [1] f32 tensor)
//
// gradNorm is a deterministic two-stage reduction: each tensor gets one dispatch of G workgroups
// (G from its size alone: at least CHUNK elements each, at most MAX_G), each writing its sum of
// squares to its own slot of a scratch array; then one workgroup adds all slots, strided and
// then in a fixed tree, takes the sqrt and writes norm and scale. no atomics, and the slot
// layout depends only on the tensor sizes, so the result is bitwise reproducible.
// scale is meant for adamwStep's gradScale (a tensor): clipping then costs no readback and no
// extra pass over the gradients. clipGrads is for callers that want the gradients themselves
// scaled. a non-finite gradient gives a non-finite norm, and a scale of 0 or NaN: a trainer that
// wants to skip such steps reads norm back and checks it.
// grads are normally f32 (parameter gradients); f16/bf16 are accepted too (read two elements per
// word; clipGrads writes whole words and leaves the padding half of an odd tail as it was).
// numerics: f32 sums of squares (each thread over a strided run, then a tree), f32 sqrt.

import type { Gpu } from '../../gpu/device.ts';
import type { DType } from '../../gpu/dtype.ts';
import { EngramError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDisjoint, expectDtype, expectShape, floatDtype, grid1d, header, launch, wgslOnce } from '../kernel.ts';

const WG = 256;
const UNROLL = 4; // pairs loaded per thread per iteration
const CHUNK = 8 * 2 * WG; // elements per partial workgroup, at least
const MAX_G = 1024; // partial workgroups per tensor, at most
const FLT_MAX = 3.4028234e38; // "no maxNorm": the scale is then 1

/** the pair (j, j+1) of g as a vec2 (j even), the second 0 past the end (an odd tail's padding half too) */
const loadPair = (j: string) =>
  // clamped: the load is always in bounds, the mask does the rest
  `select(vec2<f32>(0.0), ld2_g(min(${j}, p.n - 1u)), vec2<bool>(${j} < p.n, ${j} + 1u < p.n))`;

const REDUCE = /* wgsl */ `
var<workgroup> red: array<f32, ${WG}>;
fn tree(lid: u32, v: f32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var k = ${WG / 2}u; k > 0u; k >>= 1u) {
    if (lid < k) { red[lid] += red[lid + k]; }
    workgroupBarrier();
  }
  return red[0];
}`;

function partialWgsl(dtype: DType): string {
  return /* wgsl */ `
${header(
  [
    { name: 'part', type: 'f32', access: 'read_write' },
    { name: 'g', type: dtype, access: 'read' },
  ],
  [
    ['n', 'u32'],
    ['base', 'u32'], // this tensor's first slot
    ['G', 'u32'], // its workgroups
  ],
)}
${REDUCE}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  var s = 0.0;
  // grid-stride over pairs, UNROLL independent loads per iteration (several in flight per
  // thread); coalesced, f16/bf16 one word per pair
  let S = ${2 * WG}u * p.G;
  for (var i = 2u * (wid.x * ${WG}u + l.x); i < p.n; i += ${UNROLL}u * S) {
    ${[...Array(UNROLL).keys()].map((k) => `let x${k} = ${loadPair(k ? `i + ${k}u * S` : 'i')};`).join('\n    ')}
    s += (dot(x0, x0) + dot(x1, x1)) + (dot(x2, x2) + dot(x3, x3));
  }
  let total = tree(l.x, s);
  if (l.x == 0u) { part[p.base + wid.x] = total; }
}`;
}

function finalWgsl(withScale: boolean): string {
  return /* wgsl */ `
${header(
  [
    { name: 'norm', type: 'f32', access: 'read_write' },
    ...(withScale ? [{ name: 'scale', type: 'f32' as const, access: 'read_write' as const }] : []),
    { name: 'part', type: 'f32', access: 'read' },
  ],
  [
    ['P', 'u32'],
    ['max_norm', 'f32'],
  ],
)}
${REDUCE}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) l: vec3<u32>) {
  var s = 0.0;
  for (var j = l.x; j < p.P; j += ${WG}u) { s += part[j]; }
  let nrm = sqrt(tree(l.x, s));
  if (l.x == 0u) {
    norm[0] = nrm;
    ${withScale ? 'scale[0] = min(1.0, p.max_norm / (nrm + 1e-6));' : ''}
  }
}`;
}

function clipWgsl(dtype: DType, gpuScale: boolean): string {
  const packed = dtype !== 'f32';
  return /* wgsl */ `
${header(
  [
    { name: 'g', type: dtype, access: 'read_write' },
    ...(gpuScale ? [{ name: 'sc', type: 'f32' as const, access: 'read' as const }] : []),
  ],
  [
    ['n', 'u32'],
    ['row', 'u32'],
    ['scale', 'f32'],
  ],
)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = 2u * (gid.x + gid.y * p.row);
  if (i >= p.n) { return; }
  let k = p.scale${gpuScale ? ' * sc[0]' : ''};
  ${
    packed
      ? `// whole words; an odd tail's padding half keeps its bits
  let x = ld2_g(i);
  st2_g(i, x.x * k, select(x.y, x.y * k, i + 1u < p.n));`
      : `g[i] *= k;
  if (i + 1u < p.n) { g[i + 1u] *= k; }`
  }
}`;
}

/** the grads' dtypes; a ShapeError naming the op for a non-float one */
const gradDtypes = (op: string, grads: readonly Tensor[]): DType[] => grads.map((g, j) => floatDtype(op, `grads[${j}]`, g));

export interface GradNormOptions {
  /** clip threshold for `scale`; without it scale is 1 */
  maxNorm?: number;
}

/**
 * norm[0] = global L2 norm of all grads; scale[0] (if given) = min(1, maxNorm / (norm + 1e-6)),
 * the clip coefficient adamwStep can take as gradScale.
 */
export async function gradNorm(gpu: Gpu, o: { norm: Tensor; scale?: Tensor }, grads: readonly Tensor[], opts: GradNormOptions = {}): Promise<void> {
  const op = 'gradNorm';
  const { maxNorm = FLT_MAX } = opts;
  if (!(maxNorm > 0 && Number.isFinite(maxNorm))) throw new EngramError(`${op}: maxNorm must be positive and finite, got ${maxNorm}`);
  expectShape(op, 'norm', o.norm, [1]);
  expectDtype(op, 'norm', o.norm, ['f32']);
  if (o.scale) {
    expectShape(op, 'scale', o.scale, [1]);
    expectDtype(op, 'scale', o.scale, ['f32']);
  }
  const dtypes = gradDtypes(op, grads);
  const outs = o.scale ? [o.norm, o.scale] : [o.norm];
  for (const [j, w] of outs.entries()) for (const t of [...outs.slice(j + 1), ...grads]) expectDisjoint(op, w, t);
  // slots: G per tensor, from its size alone
  const Gs = grads.map((g) => Math.min(MAX_G, Math.ceil(g.size / CHUNK)));
  const P = Gs.reduce((a, b) => a + b, 0);
  const part = gpu.scratch.take([Math.max(P, 1)], 'f32', 'gradnorm_partial');
  try {
    let base = 0;
    for (const [j, g] of grads.entries()) {
      const G = Gs[j]!;
      if (G === 0) continue;
      const name = `gradnorm_partial_${dtypes[j]!}`;
      await launch(gpu, {
        name,
        wgsl: wgslOnce(name, () => partialWgsl(dtypes[j]!)),
        storage: [part, g],
        params: [
          ['n', 'u32'],
          ['base', 'u32'],
          ['G', 'u32'],
        ],
        values: { n: g.size, base, G },
        workgroups: [G],
      });
      base += G;
    }
    const name = `gradnorm_final${o.scale ? '_scale' : ''}`;
    await launch(gpu, {
      name,
      wgsl: wgslOnce(name, () => finalWgsl(!!o.scale)),
      storage: [...outs, part],
      params: [
        ['P', 'u32'],
        ['max_norm', 'f32'],
      ],
      values: { P, max_norm: maxNorm },
      workgroups: [1],
    });
  } finally {
    part.dispose();
  }
}

/** grads[j] *= scale for every tensor, in place; scale is a number or a [1] f32 tensor (e.g. gradNorm's). */
export async function clipGrads(gpu: Gpu, grads: readonly Tensor[], scale: number | Tensor): Promise<void> {
  const op = 'clipGrads';
  const dtypes = gradDtypes(op, grads);
  const gpuScale = typeof scale !== 'number';
  if (gpuScale) {
    expectShape(op, 'scale', scale, [1]);
    expectDtype(op, 'scale', scale, ['f32']);
    for (const g of grads) expectDisjoint(op, g, scale);
  } else if (!Number.isFinite(scale)) {
    throw new EngramError(`${op}: scale must be finite, got ${scale}`);
  }
  for (const [j, g] of grads.entries()) {
    if (g.size === 0) continue;
    const [x, y] = grid1d(gpu, Math.ceil(g.size / 2 / WG));
    const name = `clip_grads_${dtypes[j]!}${gpuScale ? '_gpuscale' : ''}`;
    await launch(gpu, {
      name,
      wgsl: wgslOnce(name, () => clipWgsl(dtypes[j]!, gpuScale)),
      storage: gpuScale ? [g, scale] : [g],
      params: [
        ['n', 'u32'],
        ['row', 'u32'],
        ['scale', 'f32'],
      ],
      values: { n: g.size, row: x * WG, scale: gpuScale ? 1 : scale },
      workgroups: [x, y],
    });
  }
}
