// a retrieval's memories put into a KV cache's front on the GPU: their stored bf16 keys and
// values widened to f32 and laid out as attention rows, so that the host neither decodes nor
// lays them out (memory3/read.ts). inference only: no backward.
//
//   k, v (B,S,Hkv,D) f32: one block's cache; batch row b's rows [row0, row0 + M T) get
//     k[b, row0 + i T + t, g, :] = mem[idx[b, i], layer, 0, g, t, :]      v: component 1
//     and zeros where idx[b, i] = 0xffffffff (a row with fewer than M memories)
//   mem (Nm, L, 2, Hkv, T, D) bf16: memories as their blobs store them (memory3/blob.ts)
//   idx (B, M) u32: which memory fills each slot
//
// thread mapping: one thread per element (b, i, t, g, x) of k and of v alike, x fastest, so a
// warp writes a row's dims contiguously. a widening copy: exact.

import type { Gpu } from '../../gpu/device.ts';
import { ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDtype, expectShape, grid1d, header, launch, type ParamSpec } from '../kernel.ts';

const WG = 256;
/** idx's mark for an empty slot */
export const FRONT_NONE = 0xffffffff;

const PARAMS: ParamSpec = [
  ['n', 'u32'], // B M T Hkv D
  ['M', 'u32'],
  ['T', 'u32'],
  ['H', 'u32'],
  ['D', 'u32'],
  ['L', 'u32'],
  ['S', 'u32'],
  ['layer', 'u32'],
  ['row0', 'u32'],
  ['row', 'u32'], // threads per grid row
];

const WGSL = /* wgsl */ `
${header(
  [
    { name: 'k', type: 'f32', access: 'read_write' },
    { name: 'v', type: 'f32', access: 'read_write' },
    { name: 'mem', type: 'bf16', access: 'read' },
    { name: 'idx', type: 'u32', access: 'read' },
  ],
  PARAMS,
)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.row;
  if (i >= p.n) { return; }
  let x = i % p.D;
  let g = (i / p.D) % p.H;
  let t = (i / (p.D * p.H)) % p.T;
  let slot = i / (p.D * p.H * p.T);  // b M + i
  let b = slot / p.M;
  let dst = ((b * p.S + p.row0 + (slot % p.M) * p.T + t) * p.H + g) * p.D + x;
  let m = idx[slot];
  if (m == ${FRONT_NONE}u) {
    k[dst] = 0.0;
    v[dst] = 0.0;
    return;
  }
  let src = (((m * p.L + p.layer) * 2u * p.H + g) * p.T + t) * p.D + x;
  k[dst] = ld_mem(src);
  v[dst] = ld_mem(src + p.H * p.T * p.D);
}`;

/** k, v (B,S,Hkv,D): rows [row0, row0 + M T) of each batch row = the memories idx (B,M) names in mem (Nm,L,2,Hkv,T,D), at `layer` (see the header) */
export async function memoryFront(gpu: Gpu, o: { k: Tensor; v: Tensor }, i: { mem: Tensor; idx: Tensor }, p: { layer: number; row0: number }): Promise<void> {
  const op = 'memoryFront';
  expectShape(op, 'mem', i.mem, [-1, -1, 2, -1, -1, -1]);
  const [Nm, L, , H, T, D] = i.mem.shape as [number, number, number, number, number, number];
  expectShape(op, 'k', o.k, [-1, -1, H, D]);
  const [B, S] = o.k.shape as [number, number];
  expectShape(op, 'v', o.v, [B, S, H, D]);
  expectShape(op, 'idx', i.idx, [B, -1]);
  const M = i.idx.shape[1]!;
  for (const [what, t] of [['k', o.k], ['v', o.v]] as const) expectDtype(op, what, t, ['f32']);
  expectDtype(op, 'mem', i.mem, ['bf16']);
  expectDtype(op, 'idx', i.idx, ['u32']);
  if (!(Number.isInteger(p.layer) && p.layer >= 0 && p.layer < L)) throw new ShapeError(`${op}: layer ${p.layer} is not one of the memories' ${L}`);
  if (!(Number.isInteger(p.row0) && p.row0 >= 0 && p.row0 + M * T <= S)) throw new ShapeError(`${op}: rows ${p.row0} .. ${p.row0 + M * T} do not fit the cache's ${S} per batch row`);
  const n = B * M * T * H * D;
  if (n === 0 || Nm === 0) return;
  const [x, y] = grid1d(gpu, Math.ceil(n / WG));
  await launch(gpu, {
    name: 'memory_front',
    wgsl: WGSL,
    storage: [o.k, o.v, i.mem, i.idx],
    params: PARAMS,
    values: { n, M, T, H, D, L, S, layer: p.layer, row0: p.row0, row: x * WG },
    workgroups: [x, y],
  });
}
