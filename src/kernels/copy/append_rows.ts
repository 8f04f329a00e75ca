// append rows: a lockstep KV cache append, every batch row's new positions in one dispatch.
//
//   dst[b, at + t, :] = src[b, t, :]     src (B, T, W) and dst (B, S, W): rows of W 32-bit words
//                                        (any 4-byte dtype), at + T <= S
//
// what a decode step did with 2 B copyBufferToBuffer calls per block (each breaking the compute
// pass): at batch 32, 384 copy commands a step, recorded on the host one by one. thread mapping:
// one thread per word of src; the threads of a row write it contiguously. a copy: no arithmetic,
// no backward.

import type { Gpu } from '../../gpu/device.ts';
import { ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { grid1d, header, launch, type ParamSpec } from '../kernel.ts';

const WG = 256;

const PARAMS: ParamSpec = [
  ['n', 'u32'], // words to write: B T W
  ['TW', 'u32'], // words per batch row of src
  ['SW', 'u32'], // words per batch row of dst
  ['at', 'u32'], // first word written in each batch row of dst: at W
  ['row', 'u32'], // threads per grid row
];

const WGSL = /* wgsl */ `
${header(
  [
    { name: 'dst', type: 'u32', access: 'read_write' },
    { name: 'src', type: 'u32', access: 'read' },
  ],
  PARAMS,
)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * p.row;
  if (i >= p.n) { return; }
  let b = i / p.TW;
  dst[b * p.SW + p.at + i - b * p.TW] = src[i];
}`;

/** dst's rows [at, at + T) of every batch row = src's (dst (B, S, ...W), src (B, T, ...W): the same trailing dimensions; 4-byte dtypes, the same on both sides) */
export async function appendRows(gpu: Gpu, o: { dst: Tensor }, i: { src: Tensor }, opts: { at: number }): Promise<void> {
  const op = 'appendRows';
  const [d, s] = [o.dst.shape, i.src.shape];
  if (d.length < 2 || d.length !== s.length || d[0] !== s[0] || d.slice(2).some((x, k) => x !== s[k + 2])) {
    throw new ShapeError(`${op}: dst ${o.dst} and src ${i.src} need shapes (B, S, ...) and (B, T, ...) with the same B and trailing dimensions`);
  }
  if (o.dst.dtype !== i.src.dtype || !['f32', 'u32', 'i32'].includes(i.src.dtype)) throw new ShapeError(`${op}: dst ${o.dst} and src ${i.src} need one 4-byte dtype`);
  const [B, S, T] = [d[0]!, d[1]!, s[1]!];
  const W = i.src.size / Math.max(1, B * T);
  const at = opts.at;
  if (!(Number.isInteger(at) && at >= 0 && at + T <= S)) throw new ShapeError(`${op}: rows [${at}, ${at + T}) do not fit dst's ${S} rows`);
  if (i.src.size === 0) return;
  const [x, y] = grid1d(gpu, Math.ceil(i.src.size / WG));
  await launch(gpu, {
    name: 'append_rows',
    wgsl: WGSL,
    storage: [o.dst, i.src],
    params: PARAMS,
    values: { n: i.src.size, TW: T * W, SW: S * W, at: at * W, row: x * WG },
    workgroups: [x, y],
  });
}
