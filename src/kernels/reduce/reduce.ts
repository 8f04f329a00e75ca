// the second stage of engram's deterministic column reductions (parameter gradients such as
// rmsnorm's dw and linear's db): a first kernel writes per-chunk partial sums part (P,C), and
//
//   addColumnSums   out (C) += sum_k part[k, c]        k = 0..P-1 in order (+=, parameter grad)
//
// thread mapping: one thread per column; a thread walks its column's P partials in order, so
// the result is bitwise reproducible. no atomics (WGSL has no float atomics). f32 throughout.

import type { Gpu } from '../../gpu/device.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDtype, expectShape, header, launch, type ParamSpec } from '../kernel.ts';

const WG = 256;
const PARAMS: ParamSpec = [
  ['C', 'u32'],
  ['P', 'u32'],
];

const WGSL = /* wgsl */ `
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
  out[c] += s;
}`;

/** out (C) += the column sums of part (P,C), summed in row order. */
export async function addColumnSums(gpu: Gpu, out: Tensor, part: Tensor): Promise<void> {
  const op = 'addColumnSums';
  const [P = 0, C = 0] = part.shape;
  expectShape(op, 'part', part, [-1, -1]);
  expectShape(op, 'out', out, [C]);
  expectDtype(op, 'out', out, ['f32']);
  expectDtype(op, 'part', part, ['f32']);
  await launch(gpu, { name: 'add_column_sums', wgsl: WGSL, storage: [out, part], params: PARAMS, values: { C, P }, workgroups: [Math.ceil(C / WG)] });
}
