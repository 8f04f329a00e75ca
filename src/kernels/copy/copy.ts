// copy and fill: the bandwidth baseline and two small utilities.
//
//   copy   dst (n words) = src (n words)     raw 32-bit words, any dtype (same dtype both sides)
//   fill   dst (n) = value                    f32 only
//
// thread mapping: copy moves PER vec4<u32> (16 bytes each) per thread when the word count is a
// multiple of 4, else one word per thread. the PER loads of a thread are a grid-width apart, so
// each load instruction of a warp is still one coalesced 512-byte access, and PER independent
// loads are in flight before the first store. a 2-D grid covers more than 65535 workgroups.
// copy is what the benchmark's copy_GBps measures: bytes read + bytes written over time.

import type { Gpu } from '../../gpu/device.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDtype, grid1d, header, launch } from '../kernel.ts';
import { ShapeError } from '../../gpu/errors.ts';

const WG = 256;
/** vec4s per thread; the benchmark times the alternatives (copy_GBps_per<k> notes) */
export const COPY_PER_THREAD = [1, 2, 4, 8] as const;
const DEFAULT_PER = 4;

// the PER loads and stores are unrolled in the template (a run-time indexed private array could
// land in local memory)
const copyWgsl = (vec: boolean, per: number) => {
  const ks = Array.from({ length: per }, (_, k) => k);
  const zero = vec ? 'vec4<u32>()' : '0u';
  return /* wgsl */ `
// p.x: units to copy, p.y: threads per grid row, p.z: threads in the grid
@group(0) @binding(0) var<uniform> p: vec4<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<${vec ? 'vec4<u32>' : 'u32'}>;
@group(0) @binding(2) var<storage, read> src: array<${vec ? 'vec4<u32>' : 'u32'}>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * p.y;
${ks.map((k) => `  let j${k} = i + ${k}u * p.z;\n  var v${k} = ${zero};\n  if (j${k} < p.x) { v${k} = src[j${k}]; }`).join('\n')}
${ks.map((k) => `  if (j${k} < p.x) { dst[j${k}] = v${k}; }`).join('\n')}
}`;
};

/** dst = src, byte for byte (same dtype and element count). */
export async function copy(gpu: Gpu, dst: Tensor, src: Tensor, perThread: number = DEFAULT_PER): Promise<void> {
  if (dst.dtype !== src.dtype || dst.size !== src.size) {
    throw new ShapeError(`copy: ${dst} and ${src} must have the same dtype and number of elements`);
  }
  const words = dst.byteLength / 4;
  const vec = words % 4 === 0;
  const units = vec ? words / 4 : words;
  const per = vec ? perThread : 1;
  const [x, y] = grid1d(gpu, Math.ceil(units / (WG * per)));
  const params = new Uint32Array([units, x * WG, x * y * WG, 0]).buffer;
  const pipe = await gpu.pipelines.get(vec ? `copy_vec4_x${per}` : 'copy_u32', copyWgsl(vec, per));
  gpu.dispatch(pipe, [dst, src], params, [x, y]);
}

const FILL_PARAMS = [
  ['n', 'u32'],
  ['row', 'u32'],
  ['value', 'f32'],
] as const;

const FILL_WGSL = /* wgsl */ `
${header([{ name: 'dst', type: 'f32', access: 'read_write' }], FILL_PARAMS)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * p.row;
  if (i < p.n) { dst[i] = p.value; }
}`;

/** dst[:] = value (f32 tensors). */
export async function fill(gpu: Gpu, dst: Tensor, value: number): Promise<void> {
  expectDtype('fill', 'dst', dst, ['f32']);
  const [x, y] = grid1d(gpu, Math.ceil(dst.size / WG));
  await launch(gpu, {
    name: 'fill_f32',
    wgsl: FILL_WGSL,
    storage: [dst],
    params: FILL_PARAMS,
    values: { n: dst.size, row: x * WG, value },
    workgroups: [x, y],
  });
}
