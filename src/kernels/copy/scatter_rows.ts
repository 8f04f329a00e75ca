// scatter rows: the KV cache append of a decode step whose batch rows are at different lengths.
//
//   dst[idx[base + r]] = src[r]        src (N, W) and dst (M, W): rows of W 32-bit words (any 4-byte dtype)
//
// an index of 0xffffffff (SKIP_ROW) writes nothing (an unused slot); an index past dst's rows
// writes nothing either (kernels cannot throw; the caller's indices are checked on the host where
// it builds them). thread mapping: one thread per word; the threads of a row write it
// contiguously. no two rows of one call may share a destination (then the last write is
// unspecified). a copy: no arithmetic, no backward.

import type { Gpu } from '../../gpu/device.ts';
import { ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDtype, grid1d, header, launch, type ParamSpec } from '../kernel.ts';

const WG = 256;
/** the index of a row not to write */
export const SKIP_ROW = 0xffffffff;

const PARAMS: ParamSpec = [
  ['n', 'u32'], // words to write: N W
  ['W', 'u32'],
  ['M', 'u32'],
  ['base', 'u32'],
  ['row', 'u32'], // threads per grid row
];

const WGSL = /* wgsl */ `
${header(
  [
    { name: 'dst', type: 'u32', access: 'read_write' },
    { name: 'src', type: 'u32', access: 'read' },
    { name: 'idx', type: 'u32', access: 'read' },
  ],
  PARAMS,
)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * p.row;
  if (i >= p.n) { return; }
  let r = i / p.W;
  let d = idx[p.base + r];
  if (d >= p.M) { return; }
  dst[d * p.W + i - r * p.W] = src[i];
}`;

/** dst's rows idx[base + r] = src's rows r (rows of the last dimension; 4-byte dtypes, the same on both sides) */
export async function scatterRows(gpu: Gpu, o: { dst: Tensor }, i: { src: Tensor; idx: Tensor }, opts: { base?: number } = {}): Promise<void> {
  const op = 'scatterRows';
  const W = i.src.shape.at(-1) ?? 1;
  if (o.dst.shape.at(-1) !== W) throw new ShapeError(`${op}: dst ${o.dst} and src ${i.src} need rows of one width (their last dimension)`);
  if (o.dst.dtype !== i.src.dtype || !['f32', 'u32', 'i32'].includes(i.src.dtype)) throw new ShapeError(`${op}: dst ${o.dst} and src ${i.src} need one 4-byte dtype`);
  expectDtype(op, 'idx', i.idx, ['u32']);
  const N = i.src.size / W;
  const base = opts.base ?? 0;
  if (!(Number.isInteger(base) && base >= 0 && base + N <= i.idx.size)) throw new ShapeError(`${op}: idx ${i.idx} has no ${N} entries from ${base}`);
  if (N * W === 0) return;
  const [x, y] = grid1d(gpu, Math.ceil((N * W) / WG));
  await launch(gpu, {
    name: 'scatter_rows',
    wgsl: WGSL,
    storage: [o.dst, i.src, i.idx],
    params: PARAMS,
    values: { n: N * W, W, M: o.dst.size / W, base, row: x * WG },
    workgroups: [x, y],
  });
}
