// embedding lookup, forward and a deterministic scatter-add backward.
//
//   forward   out (N,C) = W (V,C) [ids (N)]                     (an id >= V gives a zero row)
//   backward  dW (V,C) += sum over t with ids[t] = v of dout[t]  (+=, parameter grad; f32)
//
// ids are u32 (N) (any leading shape; out is ids.shape + [C]). kernels cannot throw, so ids from
// the host should pass checkIds() first; on the GPU an id >= V reads as a zero row and adds
// nothing to dW.
// forward thread mapping: with out and W of one dtype, rows are copied as raw words (16 bytes a
// unit when the row allows), 4 units per thread a grid-width apart, loads before stores;
// consecutive threads copy consecutive words. mixed dtypes convert a pair of columns a thread.
// backward: sort-and-segment-sum (no float atomics; bitwise reproducible run to run), the
// memory layer's weighted row scatter (membag.ts scatterAddRows) with every weight 1: ids are
// sorted stably, each id's dout rows summed in order of t in f32, and every dW row written by
// exactly one thread per column. unused rows of dW keep their values.

import type { Gpu } from '../../gpu/device.ts';
import { DTYPES } from '../../gpu/dtype.ts';
import { EngramError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDisjoint, expectDtype, expectShape, grid1d, header, launch, type ParamSpec, wgslOnce } from '../kernel.ts';
import { fill } from '../copy/copy.ts';
import { scatterAddRows } from '../membag/membag.ts';

const WG = 256; // forward threads per workgroup
const PER = 4; // forward units per thread
const KS = Array.from({ length: PER }, (_, k) => k);

/** Throws unless every id is < V, naming the first bad position and value. */
export function checkIds(ids: ArrayLike<number>, V: number): void {
  for (let t = 0; t < ids.length; t++) {
    const v = ids[t]!;
    if (!(Number.isInteger(v) && v >= 0 && v < V)) {
      throw new EngramError(`embedding: ids[${t}] = ${v} is out of range for a vocabulary of ${V} (ids must be integers in 0..${V - 1})`);
    }
  }
}

const FWD_PARAMS: ParamSpec = [
  ['N', 'u32'],
  ['C', 'u32'],
  ['V', 'u32'],
  ['Q', 'u32'], // units per row
];

/**
 * out and W of one dtype: rows are copied as raw words, `vec` (1, 2 or 4) words a unit, PER units
 * per thread a grid-width apart (unrolled), all loads before the stores.
 */
function forwardCopyWgsl(vec: number): string {
  const T = vec === 1 ? 'u32' : `vec${vec}<u32>`;
  return /* wgsl */ `
${header([], FWD_PARAMS)}
@group(0) @binding(1) var<storage, read_write> out: array<${T}>;
@group(0) @binding(2) var<storage, read> W: array<${T}>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let ubase = (wid.x + wid.y * nwg.x) * ${WG}u + l.x;
  let stride = nwg.x * nwg.y * ${WG}u;
  let units = p.N * p.Q;
  // units past the end read the last one; an out-of-range id reads row V-1 and stores zeros
  ${KS.map(
    (k) => `let u${k} = ubase + ${k}u * stride;
  let c${k} = min(u${k}, units - 1u);
  let t${k} = c${k} / p.Q;
  let id${k} = ids[t${k}];
  let v${k} = select(${T}(0u), W[min(id${k}, p.V - 1u) * p.Q + c${k} - t${k} * p.Q], id${k} < p.V);`,
  ).join('\n  ')}
  ${KS.map((k) => `if (u${k} < units) { out[u${k}] = v${k}; }`).join('\n  ')}
}`;
}

/** out and W of different dtypes: one thread per (t, pair of columns), converted through f32 */
function forwardConvertWgsl(out: Tensor, W: Tensor): string {
  const packed = out.dtype !== 'f32';
  return /* wgsl */ `
${header(
  [
    { name: 'out', type: out.dtype, access: 'read_write' },
    { name: 'W', type: W.dtype, access: 'read' },
    { name: 'ids', type: 'u32', access: 'read' },
  ],
  FWD_PARAMS,
)}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let idx = (wid.x + wid.y * nwg.x) * ${WG}u + l.x;
  let t = idx / p.Q;
  if (t >= p.N) { return; }
  let c = (idx - t * p.Q) * 2u;
  let id = ids[t];
  let v = select(vec2<f32>(0.0), ld2_W(min(id, p.V - 1u) * p.C + c), id < p.V);
  ${packed ? 'st2_out(t * p.C + c, v.x, v.y);' : 'if (c + 1u < p.C) { st2_out(t * p.C + c, v.x, v.y); } else { st_out(t * p.C + c, v.x); }'}
}`;
}

/** out (ids.shape, C) = W (V,C) rows at ids; an id >= V gives zeros (validate with checkIds). */
export async function embeddingForward(gpu: Gpu, o: { out: Tensor }, i: { W: Tensor; ids: Tensor }): Promise<void> {
  const op = 'embeddingForward';
  expectShape(op, 'W', i.W, [-1, -1]);
  const [V, C] = i.W.shape as [number, number];
  expectDtype(op, 'W', i.W, DTYPES);
  expectDtype(op, 'ids', i.ids, ['u32']);
  expectShape(op, 'out', o.out, [...i.ids.shape, C]);
  expectDtype(op, 'out', o.out, DTYPES);
  if (o.out.dtype !== 'f32' && C % 2 !== 0) {
    throw new ShapeError(`${op}: out ${o.out} has an odd row size C = ${C}; use f32 or an even C`);
  }
  expectDisjoint(op, o.out, i.W);
  expectDisjoint(op, o.out, i.ids);
  const N = i.ids.size;
  if (o.out.dtype === i.W.dtype) {
    const words = o.out.dtype === 'f32' ? C : C / 2;
    const vec = words % 4 === 0 ? 4 : words % 2 === 0 ? 2 : 1;
    const Q = words / vec;
    const name = `embedding_forward_copy_${vec}`;
    await launch(gpu, {
      name,
      wgsl: wgslOnce(name, () => forwardCopyWgsl(vec)),
      storage: [o.out, i.W, i.ids],
      params: FWD_PARAMS,
      values: { N, C, V, Q },
      workgroups: grid1d(gpu, Math.ceil((N * Q) / (WG * PER))),
    });
    return;
  }
  const Q = Math.ceil(C / 2);
  const name = `embedding_forward_${o.out.dtype}_${i.W.dtype}`;
  await launch(gpu, {
    name,
    wgsl: wgslOnce(name, () => forwardConvertWgsl(o.out, i.W)),
    storage: [o.out, i.W, i.ids],
    params: FWD_PARAMS,
    values: { N, C, V, Q },
    workgroups: grid1d(gpu, Math.ceil((N * Q) / WG)),
  });
}

/** dW (V,C) f32 += scatter of dout (ids.shape, C) by ids; deterministic (sort-and-segment-sum). */
export async function embeddingBackward(gpu: Gpu, o: { dW: Tensor }, i: { dout: Tensor; ids: Tensor }): Promise<void> {
  const op = 'embeddingBackward';
  expectShape(op, 'dW', o.dW, [-1, -1]);
  expectDtype(op, 'dW', o.dW, ['f32']);
  const [V, C] = o.dW.shape as [number, number];
  expectDtype(op, 'ids', i.ids, ['u32']);
  expectShape(op, 'dout', i.dout, [...i.ids.shape, C]);
  expectDtype(op, 'dout', i.dout, DTYPES);
  for (const r of [i.dout, i.ids]) expectDisjoint(op, o.dW, r);
  const N = i.ids.size;
  if (N === 0 || C === 0) return;
  // the memory layer's weighted scatter with every weight 1 (w * dout is then dout exactly)
  const ones = gpu.scratch.take([N, 1], 'f32', 'embedding_ones');
  try {
    await fill(gpu, ones, 1);
    const table = { chunks: [o.dW], rowsPerChunk: V, rows: V, dim: C };
    await scatterAddRows(gpu, table, { idx: i.ids.reshape([N, 1]), w: ones, dout: i.dout.reshape([N, C]) });
  } finally {
    ones.dispose();
  }
}
