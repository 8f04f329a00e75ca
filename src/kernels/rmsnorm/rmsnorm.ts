// RMSNorm over the last dimension, forward and backward.
//
//   forward   out (N,C) = x (N,C) * rstd (N) * w (C)       rstd = 1/sqrt(mean(x^2) + eps), saved
//   backward  dx  (N,C) = rstd w g - x rstd^3/C * sum(g w x)                  (=, activation grad)
//             dw  (C)  += sum_n g x rstd                                        (+=, parameter grad)
//
// thread mapping: forward and dx use one workgroup of WG threads per row; each thread walks the
// row two elements at a time (so f16/bf16 outputs are written a whole word at a time) and the
// row's sum is reduced in workgroup memory. on a CPU adapter (gpu.cpu) each thread owns a whole
// row instead, CPU_ROWS rows per workgroup: there a workgroup's threads are the SIMD lanes of one
// CPU thread, a barrier costs a coroutine switch per group of lanes and idle threads still cost
// (a 128-wide row took 37 ms per 1024 rows on lavapipe with 256 threads per row). dw is a deterministic two-stage column reduction:
// a (C/WG, ceil(N/ROWS)) grid writes per-chunk partial sums to scratch, then addColumnSums
// (reduce/reduce.ts) adds the chunks in order. no atomics, so results are bitwise reproducible.
// numerics: f32 accumulation; x, w, out, dout and dx may be stored in f32/f16/bf16; rstd and
// dw are f32.

import type { Gpu } from '../../gpu/device.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDtype, expectPackable, expectShape, grid1d, header, launch, type ParamSpec, wgslOnce } from '../kernel.ts';
import { addColumnSums } from '../reduce/reduce.ts';

const WG = 256;
const ROWS = 64; // rows per dw partial chunk
const CPU_ROWS = 8; // rows per workgroup on a CPU adapter, one per thread

/** threads per row T and rows per workgroup R: WG x 1 on a GPU, 1 x CPU_ROWS on a CPU adapter */
const layout = (cpu: boolean) => (cpu ? { T: 1, R: CPU_ROWS } : { T: WG, R: 1 });

const PARAMS: ParamSpec = [
  ['N', 'u32'],
  ['C', 'u32'],
  ['eps', 'f32'],
];

/** the row-sum reduction over the workgroup, shared by forward and backward (T threads per row) */
const rowReduce = (T: number) =>
  T === 1
    ? 'fn row_sum(lid: u32, v: f32) -> f32 { return v; }'
    : /* wgsl */ `
var<workgroup> red: array<f32, ${WG}>;
fn row_sum(lid: u32, v: f32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}`;

/** the entry point's first lines: the row n this thread works on (returning past the end) and its lane lid in the row */
const rowStart = (T: number, R: number) => /* wgsl */ `
@compute @workgroup_size(${T * R})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let n = (wid.x + wid.y * nwg.x) * ${R}u + ${T === 1 ? 'l.x' : '0u'};
  if (n >= p.N) { return; }  // uniform per workgroup when T > 1: barriers stay safe
  let lid = ${T === 1 ? '0u' : 'l.x'};`;

/** stores a pair (c, c+1) of row `base`, or the lone last element of an odd f32 row */
const storePair = (name: string, packed: boolean, a: string, b: string) =>
  packed
    ? `st2_${name}(base + c, ${a}, ${b});`
    : `if (c + 1u < p.C) { st2_${name}(base + c, ${a}, ${b}); } else { st_${name}(base + c, ${a}); }`;

function forwardWgsl(out: Tensor, x: Tensor, w: Tensor, cpu: boolean): string {
  const { T, R } = layout(cpu);
  return /* wgsl */ `
${header(
  [
    { name: 'out', type: out.dtype, access: 'read_write' },
    { name: 'rstd', type: 'f32', access: 'read_write' },
    { name: 'x', type: x.dtype, access: 'read' },
    { name: 'w', type: w.dtype, access: 'read' },
  ],
  PARAMS,
)}
${rowReduce(T)}
${rowStart(T, R)}
  let base = n * p.C;
  var ss = 0.0;
  for (var c = 2u * lid; c < p.C; c += ${2 * T}u) {
    let a = ld_x(base + c);
    ss += a * a;
    if (c + 1u < p.C) { let b = ld_x(base + c + 1u); ss += b * b; }
  }
  let r = inverseSqrt(row_sum(lid, ss) / f32(p.C) + p.eps);
  if (lid == 0u) { rstd[n] = r; }
  for (var c = 2u * lid; c < p.C; c += ${2 * T}u) {
    let c1 = min(c + 1u, p.C - 1u);
    let a = ld_x(base + c) * r * ld_w(c);
    let b = ld_x(base + c1) * r * ld_w(c1);
    ${storePair('out', out.dtype !== 'f32', 'a', 'b')}
  }
}`;
}

function backwardDxWgsl(dx: Tensor, dout: Tensor, x: Tensor, w: Tensor, cpu: boolean): string {
  const { T, R } = layout(cpu);
  return /* wgsl */ `
${header(
  [
    { name: 'dx', type: dx.dtype, access: 'read_write' },
    { name: 'dout', type: dout.dtype, access: 'read' },
    { name: 'x', type: x.dtype, access: 'read' },
    { name: 'w', type: w.dtype, access: 'read' },
    { name: 'rstd', type: 'f32', access: 'read' },
  ],
  PARAMS,
)}
${rowReduce(T)}
${rowStart(T, R)}
  let base = n * p.C;
  var s = 0.0;
  for (var c = lid; c < p.C; c += ${T}u) { s += ld_dout(base + c) * ld_w(c) * ld_x(base + c); }
  let r = rstd[n];
  let k = row_sum(lid, s) * r * r * r / f32(p.C);
  for (var c = 2u * lid; c < p.C; c += ${2 * T}u) {
    let c1 = min(c + 1u, p.C - 1u);
    let a = r * ld_w(c) * ld_dout(base + c) - ld_x(base + c) * k;
    let b = r * ld_w(c1) * ld_dout(base + c1) - ld_x(base + c1) * k;
    ${storePair('dx', dx.dtype !== 'f32', 'a', 'b')}
  }
}`;
}

function backwardDwPartialWgsl(dout: Tensor, x: Tensor): string {
  return /* wgsl */ `
${header(
  [
    { name: 'part', type: 'f32', access: 'read_write' },
    { name: 'dout', type: dout.dtype, access: 'read' },
    { name: 'x', type: x.dtype, access: 'read' },
    { name: 'rstd', type: 'f32', access: 'read' },
  ],
  PARAMS,
)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let c = g.x;
  if (c >= p.C) { return; }
  let chunk = wid.y;
  let n1 = min(p.N, (chunk + 1u) * ${ROWS}u);
  var s = 0.0;
  for (var n = chunk * ${ROWS}u; n < n1; n++) { s += ld_dout(n * p.C + c) * ld_x(n * p.C + c) * rstd[n]; }
  part[chunk * p.C + c] = s;
}`;
}

function dims(op: string, x: Tensor, w: Tensor): { N: number; C: number } {
  const C = x.shape[x.shape.length - 1] ?? 0;
  const N = x.size / Math.max(C, 1);
  expectShape(op, 'w', w, [C]);
  return { N, C };
}

/** out = rmsnorm(x) * w over the last dimension; saves rstd (N) for the backward pass. */
export async function rmsnormForward(gpu: Gpu, o: { out: Tensor; rstd: Tensor }, i: { x: Tensor; w: Tensor }, eps = 1e-5): Promise<void> {
  const op = 'rmsnormForward';
  const { N, C } = dims(op, i.x, i.w);
  expectShape(op, 'out', o.out, i.x.shape);
  expectShape(op, 'rstd', o.rstd, [N]);
  expectDtype(op, 'rstd', o.rstd, ['f32']);
  expectPackable(op, 'out', o.out);
  const name = `rmsnorm_forward_${o.out.dtype}_${i.x.dtype}_${i.w.dtype}${gpu.cpu ? '_cpu' : ''}`;
  await launch(gpu, {
    name,
    wgsl: wgslOnce(name, () => forwardWgsl(o.out, i.x, i.w, gpu.cpu)),
    storage: [o.out, o.rstd, i.x, i.w],
    params: PARAMS,
    values: { N, C, eps },
    workgroups: grid1d(gpu, Math.ceil(N / layout(gpu.cpu).R)),
  });
}

/** dx = d rmsnorm / dx (overwritten); dw += d / dw. */
export async function rmsnormBackward(
  gpu: Gpu,
  o: { dx: Tensor; dw: Tensor },
  i: { dout: Tensor; x: Tensor; w: Tensor; rstd: Tensor },
): Promise<void> {
  const op = 'rmsnormBackward';
  const { N, C } = dims(op, i.x, i.w);
  expectShape(op, 'dout', i.dout, i.x.shape);
  expectShape(op, 'dx', o.dx, i.x.shape);
  expectShape(op, 'dw', o.dw, [C]);
  expectShape(op, 'rstd', i.rstd, [N]);
  expectDtype(op, 'dw', o.dw, ['f32']);
  expectDtype(op, 'rstd', i.rstd, ['f32']);
  expectPackable(op, 'dx', o.dx);
  const values = { N, C, eps: 0 };
  const name = `rmsnorm_backward_dx_${o.dx.dtype}_${i.dout.dtype}_${i.x.dtype}_${i.w.dtype}${gpu.cpu ? '_cpu' : ''}`;
  await launch(gpu, {
    name,
    wgsl: wgslOnce(name, () => backwardDxWgsl(o.dx, i.dout, i.x, i.w, gpu.cpu)),
    storage: [o.dx, i.dout, i.x, i.w, i.rstd],
    params: PARAMS,
    values,
    workgroups: grid1d(gpu, Math.ceil(N / layout(gpu.cpu).R)),
  });
  const P = Math.ceil(N / ROWS);
  const part = gpu.scratch.take([P, C], 'f32', 'rmsnorm_dw_partial');
  try {
    const name = `rmsnorm_backward_dw_partial_${i.dout.dtype}_${i.x.dtype}`;
    await launch(gpu, {
      name,
      wgsl: wgslOnce(name, () => backwardDwPartialWgsl(i.dout, i.x)),
      storage: [part, i.dout, i.x, i.rstd],
      params: PARAMS,
      values,
      workgroups: [Math.ceil(C / WG), P],
    });
    await addColumnSums(gpu, o.dw, part);
  } finally {
    part.dispose();
  }
}
