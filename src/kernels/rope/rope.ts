// rotary position embedding (RoPE), Llama / HF "rotate half" layout, forward and backward.
//
//   x, out, dout, dx (B,T,NH,HS); H = HS/2; for i < H the pair (i, i+H) turns by a = pos * theta_i,
//   theta_i = base^(-2i/HS), pos = pos0 + t (or pos0 + positions[t]):
//   forward   out[i] = x[i] cos a - x[i+H] sin a      out[i+H] = x[i] sin a + x[i+H] cos a
//   backward  dx = the same rotation by -a            (=, activation grad; rope has no parameters)
//
// cos/sin come from a table (Tmax, H, 2) f32 of interleaved (cos a, sin a), computed on the host in
// float64 (ropeTableValues) and uploaded once: exact to f32 rounding at any position, where a
// f32 sin() of a large angle in the kernel is not (GPU sin/cos lose accuracy far from [-pi, pi]),
// and no transcendentals run per element. positions must be < Tmax: without `positions` this is
// checked on the host; a positions[t] past the table is clamped to Tmax-1 (kernels cannot throw).
// thread mapping: one thread per (b, t, k): it owns elements i = 2k, 2k+1 and their partners
// i+H, i+1+H of every head, so packed f16/bf16 words are written whole (HS % 4 == 0 for
// f16/bf16) and the two table entries are read once for all NH heads. for each head the threads
// of a (b,t) read and write consecutive words: coalesced. out must not overlap x (a separate
// tensor); numerics: f32 math, one rounding to the output dtype. nothing is saved for backward.

import type { Gpu } from '../../gpu/device.ts';
import { DTYPES } from '../../gpu/dtype.ts';
import { ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDisjoint, expectDtype, expectShape, grid1d, header, launch, type ParamSpec, wgslOnce } from '../kernel.ts';

const WG = 256;

const PARAMS: ParamSpec = [
  ['BT', 'u32'], // B*T
  ['T', 'u32'],
  ['NH', 'u32'],
  ['H', 'u32'], // HS/2
  ['Q', 'u32'], // threads per (b,t), ceil(H/2)
  ['Tmax', 'u32'],
  ['pos0', 'u32'],
];

/** (cos, sin) of pos * base^(-2i/HS), pos < Tmax, i < HS/2, as the (Tmax, HS/2, 2) f32 table */
export function ropeTableValues(Tmax: number, HS: number, base = 10000): Float32Array {
  const H = HS / 2;
  const t = new Float32Array(Tmax * H * 2);
  for (let i = 0; i < H; i++) {
    const theta = base ** ((-2 * i) / HS);
    for (let pos = 0; pos < Tmax; pos++) {
      t[(pos * H + i) * 2] = Math.cos(pos * theta);
      t[(pos * H + i) * 2 + 1] = Math.sin(pos * theta);
    }
  }
  return t;
}

/** Allocates and uploads the cos/sin table for positions < Tmax and head size HS. */
export async function createRopeTable(gpu: Gpu, Tmax: number, HS: number, base = 10000): Promise<Tensor> {
  if (HS % 2 !== 0 || HS <= 0) throw new ShapeError(`createRopeTable: head size ${HS} must be even`);
  return gpu.tensorFrom(ropeTableValues(Tmax, HS, base), [Tmax, HS / 2, 2], 'f32', 'rope_table');
}

function wgsl(out: Tensor, x: Tensor, positions: boolean, sign: 1 | -1): string {
  const packed = out.dtype !== 'f32';
  const neg = sign === 1 ? '' : '-';
  // s is sin a for the forward rotation and -sin a for the backward one
  return /* wgsl */ `
${header(
  [
    { name: 'out', type: out.dtype, access: 'read_write' },
    { name: 'x', type: x.dtype, access: 'read' },
    { name: 'tab', type: 'f32', access: 'read' },
    ...(positions ? [{ name: 'positions', type: 'u32' as const, access: 'read' as const }] : []),
  ],
  PARAMS,
)}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let g = (wid.x + wid.y * nwg.x) * ${WG}u + l.x;
  let bt = g / p.Q;
  if (bt >= p.BT) { return; }
  let i = (g - bt * p.Q) * 2u;
  let two = i + 1u < p.H;  // false only at the end of an odd-H f32 row
  let t = bt % p.T;
  let pos = min(p.pos0 + ${positions ? 'positions[t]' : 't'}, p.Tmax - 1u);
  // the angles of pairs i and i+1 are the same for every head: read them once
  let ta = (pos * p.H + i) * 2u;
  let ta1 = select(ta, ta + 2u, two);
  let c = vec2<f32>(tab[ta], tab[ta1]);
  let s = ${neg}vec2<f32>(tab[ta + 1u], tab[ta1 + 1u]);
  for (var h = 0u; h < p.NH; h++) {
    let lo = (bt * p.NH + h) * 2u * p.H + i;  // elements i, i+1 of the row
    let hi = lo + p.H;                        // their partners i+H, i+1+H
    let xv = ld2_x(lo);
    let yv = ld2_x(hi);
    let a = xv * c - yv * s;
    let b = xv * s + yv * c;
    ${
      packed
        ? 'st2_out(lo, a.x, a.y); st2_out(hi, b.x, b.y);'
        : 'if (two) { st2_out(lo, a.x, a.y); st2_out(hi, b.x, b.y); } else { st_out(lo, a.x); st_out(hi, b.x); }'
    }
  }
}`;
}

export interface RopeOptions {
  /** position of t = 0 (incremental decoding); default 0 */
  pos0?: number;
  /** u32 (T): position of each t (plus pos0) instead of pos0 + t */
  positions?: Tensor;
}

async function rope(gpu: Gpu, op: string, dir: 'forward' | 'backward', out: Tensor, x: Tensor, table: Tensor, opts: RopeOptions): Promise<void> {
  const outName = dir === 'forward' ? 'out' : 'dx';
  const xName = dir === 'forward' ? 'x' : 'dout';
  if (x.shape.length !== 4) throw new ShapeError(`${op}: ${xName} ${x} should have shape [B,T,NH,HS]`);
  const [B, T, NH, HS] = x.shape as [number, number, number, number];
  expectShape(op, outName, out, x.shape);
  expectDtype(op, xName, x, DTYPES);
  expectDtype(op, outName, out, DTYPES);
  if (HS % 2 !== 0) throw new ShapeError(`${op}: head size HS = ${HS} of ${x.label}[${x.shape.join(',')}] must be even`);
  const packed = x.dtype !== 'f32' || out.dtype !== 'f32';
  if (packed && HS % 4 !== 0) {
    throw new ShapeError(`${op}: ${x} -> ${out.label}:${out.dtype}: f16/bf16 need HS % 4 == 0 (HS = ${HS})`);
  }
  const H = HS / 2;
  const Tmax = table.shape[0] ?? 0;
  expectShape(op, 'table', table, [-1, H, 2]);
  expectDtype(op, 'table', table, ['f32']);
  expectDisjoint(op, out, x);
  const pos0 = opts.pos0 ?? 0;
  if (!Number.isInteger(pos0) || pos0 < 0) throw new ShapeError(`${op}: pos0 = ${pos0} must be a non-negative integer`);
  if (opts.positions) {
    expectShape(op, 'positions', opts.positions, [T]);
    expectDtype(op, 'positions', opts.positions, ['u32']);
  } else if (pos0 + T > Tmax) {
    throw new ShapeError(`${op}: positions ${pos0}..${pos0 + T - 1} exceed the table ${table.label}[${table.shape.join(',')}] (Tmax = ${Tmax})`);
  }
  if (Tmax === 0) throw new ShapeError(`${op}: empty table ${table.label}[${table.shape.join(',')}]`);
  const BT = B * T;
  const Q = Math.ceil(H / 2);
  const name = `rope_${dir}_${out.dtype}_${x.dtype}${opts.positions ? '_positions' : ''}`;
  await launch(gpu, {
    name,
    wgsl: wgslOnce(name, () => wgsl(out, x, !!opts.positions, dir === 'forward' ? 1 : -1)),
    storage: opts.positions ? [out, x, table, opts.positions] : [out, x, table],
    params: PARAMS,
    values: { BT, T, NH, H, Q, Tmax, pos0 },
    workgroups: grid1d(gpu, Math.ceil((BT * Q) / WG)),
  });
}

/** out (B,T,NH,HS) = x rotated by RoPE; table from createRopeTable. out must not overlap x. */
export async function ropeForward(gpu: Gpu, o: { out: Tensor }, i: { x: Tensor; table: Tensor }, opts: RopeOptions = {}): Promise<void> {
  await rope(gpu, 'ropeForward', 'forward', o.out, i.x, i.table, opts);
}

/** dx (B,T,NH,HS) = dout rotated back (overwritten); same table and positions as the forward. */
export async function ropeBackward(gpu: Gpu, o: { dx: Tensor }, i: { dout: Tensor; table: Tensor }, opts: RopeOptions = {}): Promise<void> {
  await rope(gpu, 'ropeBackward', 'backward', o.dx, i.dout, i.table, opts);
}
