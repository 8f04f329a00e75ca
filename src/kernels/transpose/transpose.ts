// transpose of the last two dimensions, 32-bit elements (f32, u32, i32), batched.
//
//   transpose  out (..., C, R) = x (..., R, C)^T       leading dims are the batch (flattened)
//   swapAxes   out (C, R, E) = x (R, C, E)              rows of E elements move whole
//   each is its own backward (dx = the same op on dout).
//
// thread mapping: one 32 x 8 workgroup per 32 x 32 tile of x, each thread moving 4 elements
// of a column of the tile; the tile passes through workgroup memory with rows padded to 33
// words (a column read hits 32 banks), so that both the reads of x and the writes of out are
// 128-byte rows per warp. grid (C/32, R/32, batch); a batch past 65535 is split over launches.
// swapAxes: one thread per 32-bit word, consecutive threads on consecutive words of a row of
// E (coalesced when E is not tiny), 2-D grid. numerics: a bit copy. matmul uses it to hand its tiled kernel operands in the layout it runs
// fastest (see matmul.ts, choosePretranspose).

import type { Gpu } from '../../gpu/device.ts';
import { LimitError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDisjoint, expectDtype, grid1d, launch, type ParamSpec } from '../kernel.ts';

const PARAMS: ParamSpec = [
  ['R', 'u32'],
  ['C', 'u32'],
  ['b0', 'u32'], // first batch index of this launch
];

const WGSL = /* wgsl */ `
struct Params { R: u32, C: u32, b0: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<u32>;
var<workgroup> tile: array<array<u32, 33>, 32>;
@compute @workgroup_size(32, 8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let base = (p.b0 + wid.z) * p.R * p.C;
  let r0 = wid.y * 32u;
  let c0 = wid.x * 32u;
  for (var i = 0u; i < 32u; i += 8u) {
    let r = r0 + lid.y + i;
    let c = c0 + lid.x;
    if (r < p.R && c < p.C) { tile[lid.y + i][lid.x] = x[base + r * p.C + c]; }
  }
  workgroupBarrier();
  for (var i = 0u; i < 32u; i += 8u) {
    let c = c0 + lid.y + i;
    let r = r0 + lid.x;
    if (r < p.R && c < p.C) { out[base + c * p.R + r] = tile[lid.x][lid.y + i]; }
  }
}`;

/** out (..., C, R) = x (..., R, C) transposed in its last two dimensions (32-bit dtypes). */
export async function transpose(gpu: Gpu, o: { out: Tensor }, i: { x: Tensor }): Promise<void> {
  const op = 'transpose';
  const { out } = o;
  const { x } = i;
  expectDtype(op, 'x', x, ['f32', 'u32', 'i32']);
  if (x.shape.length < 2) throw new ShapeError(`${op}: x ${x} needs at least 2 dimensions`);
  const R = x.shape[x.shape.length - 2]!;
  const C = x.shape[x.shape.length - 1]!;
  const lead = x.shape.slice(0, -2);
  const want = [...lead, C, R];
  if (out.dtype !== x.dtype || out.shape.length !== want.length || want.some((d, k) => d !== out.shape[k])) {
    throw new ShapeError(`${op}: out ${out} must be [${want.join(',')}]:${x.dtype} for x ${x}`);
  }
  expectDisjoint(op, out, x);
  const batch = lead.reduce((a, b) => a * b, 1);
  if (R === 0 || C === 0 || batch === 0) return;
  const maxZ = gpu.device.limits.maxComputeWorkgroupsPerDimension;
  if (Math.ceil(R / 32) > maxZ || Math.ceil(C / 32) > maxZ) {
    throw new LimitError(`${op}: x ${x} has more than ${32 * maxZ} rows or columns; transpose it in pieces`);
  }
  for (let b0 = 0; b0 < batch; b0 += maxZ) {
    await launch(gpu, {
      name: 'transpose_u32',
      wgsl: WGSL,
      storage: [out, x],
      params: PARAMS,
      values: { R, C, b0 },
      workgroups: [Math.ceil(C / 32), Math.ceil(R / 32), Math.min(maxZ, batch - b0)],
    });
  }
}

const SWAP_PARAMS: ParamSpec = [
  ['R', 'u32'],
  ['C', 'u32'],
  ['E', 'u32'],
  ['row', 'u32'], // threads per grid row
];

const SWAP_WGSL = /* wgsl */ `
struct Params { R: u32, C: u32, E: u32, row: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * p.row;          // word of out: (c, r, e)
  if (i >= p.R * p.C * p.E) { return; }
  let e = i % p.E;
  let r = (i / p.E) % p.R;
  let c = i / (p.E * p.R);
  out[i] = x[(r * p.C + c) * p.E + e];
}`;

/** out (C, R, E) = x (R, C, E): the first two dimensions swapped (32-bit dtypes). */
export async function swapAxes(gpu: Gpu, o: { out: Tensor }, i: { x: Tensor }): Promise<void> {
  const op = 'swapAxes';
  const { out } = o;
  const { x } = i;
  expectDtype(op, 'x', x, ['f32', 'u32', 'i32']);
  if (x.shape.length !== 3) throw new ShapeError(`${op}: x ${x} must be 3-D (R, C, E)`);
  const [R, C, E] = x.shape as [number, number, number];
  if (out.dtype !== x.dtype || out.shape.length !== 3 || out.shape[0] !== C || out.shape[1] !== R || out.shape[2] !== E) {
    throw new ShapeError(`${op}: out ${out} must be [${C},${R},${E}]:${x.dtype} for x ${x}`);
  }
  expectDisjoint(op, out, x);
  if (x.size === 0) return;
  const [gx, gy] = grid1d(gpu, Math.ceil(x.size / 256));
  await launch(gpu, { name: 'swap_axes_u32', wgsl: SWAP_WGSL, storage: [out, x], params: SWAP_PARAMS, values: { R, C, E, row: gx * 256 }, workgroups: [gx, gy] });
}
