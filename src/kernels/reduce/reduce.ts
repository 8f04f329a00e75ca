// the second stage of engram's deterministic column reductions (parameter gradients such as
// rmsnorm's dw and linear's db, split-K products): a first kernel writes partial sums part (P,C), and
//
//   addColumnSums   out (C) += sum_k part[k, c]        k = 0..P-1 in order (+=, parameter grad)
//   columnSums      out (C)  = sum_k part[k, c]        (a split-K product's partial products)
//
// thread mapping: one thread per column; a thread walks its column's P partials in order, so
// the result is bitwise reproducible. no atomics (WGSL has no float atomics). f32 throughout.

import type { Gpu } from '../../gpu/device.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDtype, expectShape, header, launch, wgslOnce, type ParamSpec } from '../kernel.ts';

const WG = 256;
const PARAMS: ParamSpec = [
  ['C', 'u32'],
  ['P', 'u32'],
];

const wgsl = (add: boolean) => /* wgsl */ `
${header(
  [
    { name: 'out', type: 'f32', access: 'read_write' },
    { name: 'part', type: 'f32', access: 'read' },
  ],
  PARAMS,
)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let c = g.x;
  if (c >= p.C) { return; }
  var s = 0.0;
  for (var k = 0u; k < p.P; k++) { s += part[k * p.C + c]; }
  out[c] ${add ? '+=' : '='} s;
}`;

/** out (C) += the column sums of part (P,C), summed in row order. */
export function addColumnSums(gpu: Gpu, out: Tensor, part: Tensor): Promise<void> {
  return sums(gpu, out, part, true);
}

/** out (C) = the column sums of part (P,C), summed in row order. */
export function columnSums(gpu: Gpu, out: Tensor, part: Tensor): Promise<void> {
  return sums(gpu, out, part, false);
}

async function sums(gpu: Gpu, out: Tensor, part: Tensor, add: boolean): Promise<void> {
  const op = add ? 'addColumnSums' : 'columnSums';
  const [P = 0, C = 0] = part.shape;
  expectShape(op, 'part', part, [-1, -1]);
  expectShape(op, 'out', out, [C]);
  expectDtype(op, 'out', out, ['f32']);
  expectDtype(op, 'part', part, ['f32']);
  const name = add ? 'add_column_sums' : 'column_sums';
  await launch(gpu, { name, wgsl: wgslOnce(name, () => wgsl(add)), storage: [out, part], params: PARAMS, values: { C, P }, workgroups: [Math.ceil(C / WG)] });
}
