// the rows memsel picked: a memory's keys and values gathered on the GPU, so that only they are
// read back (not every position of every reference). selection only: no backward.
//
//   ok, ov (B,Hkv,K,d) f32 = k, v (B,T,Hkv,d) [b, indices[b,g,j], g, :]    a 0xffffffff index
//                            (MEMSEL_NONE) or one >= T gives a zero row
//   indices (B,Hkv,K) u32 as memselForward writes them; k, v f32 (the attention inputs, post-RoPE k)
//
// thread mapping: one thread per output element of ok and of ov alike (b, g, j, x), x fastest, so
// the threads of a row read it contiguously. a copy: exact.

import type { Gpu } from '../../gpu/device.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDtype, expectShape, grid1d, header, launch, type ParamSpec } from '../kernel.ts';

const WG = 256;

const PARAMS: ParamSpec = [
  ['n', 'u32'], // B Hkv K d
  ['T', 'u32'],
  ['Hkv', 'u32'],
  ['K', 'u32'],
  ['d', 'u32'],
  ['row', 'u32'], // threads per grid row
];

const WGSL = /* wgsl */ `
${header(
  [
    { name: 'ok', type: 'f32', access: 'read_write' },
    { name: 'ov', type: 'f32', access: 'read_write' },
    { name: 'k', type: 'f32', access: 'read' },
    { name: 'v', type: 'f32', access: 'read' },
    { name: 'indices', type: 'u32', access: 'read' },
  ],
  PARAMS,
)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.row;
  if (i >= p.n) { return; }
  let x = i % p.d;
  let slot = i / p.d;              // (b Hkv + g) K + j
  let g = (slot / p.K) % p.Hkv;
  let b = slot / (p.K * p.Hkv);
  let pos = indices[slot];
  if (pos >= p.T) {
    ok[i] = 0.0;
    ov[i] = 0.0;
    return;
  }
  let src = ((b * p.T + pos) * p.Hkv + g) * p.d + x;
  ok[i] = k[src];
  ov[i] = v[src];
}`;

/** ok, ov (B,Hkv,K,d) = the rows of k, v (B,T,Hkv,d) that indices (B,Hkv,K) name (see the header) */
export async function memselGather(gpu: Gpu, o: { ok: Tensor; ov: Tensor }, i: { k: Tensor; v: Tensor; indices: Tensor }): Promise<void> {
  const op = 'memselGather';
  expectShape(op, 'k', i.k, [-1, -1, -1, -1]);
  const [B, T, Hkv, d] = i.k.shape as [number, number, number, number];
  expectShape(op, 'v', i.v, [B, T, Hkv, d]);
  expectShape(op, 'indices', i.indices, [B, Hkv, -1]);
  const K = i.indices.shape[2]!;
  expectShape(op, 'ok', o.ok, [B, Hkv, K, d]);
  expectShape(op, 'ov', o.ov, [B, Hkv, K, d]);
  for (const [what, t] of [['k', i.k], ['v', i.v], ['ok', o.ok], ['ov', o.ov]] as const) expectDtype(op, what, t, ['f32']);
  expectDtype(op, 'indices', i.indices, ['u32']);
  const n = B * Hkv * K * d;
  if (n === 0) return;
  const [x, y] = grid1d(gpu, Math.ceil(n / WG));
  await launch(gpu, {
    name: 'memsel_gather',
    wgsl: WGSL,
    storage: [o.ok, o.ov, i.k, i.v, i.indices],
    params: PARAMS,
    values: { n, T, Hkv, K, d, row: x * WG },
    workgroups: [x, y],
  });
}
