// weighted sum of two tensors (residual connections), forward and backward.
//
//   forward   out (n) = alpha a (n) + beta b (n)          any shapes of equal size
//   backward  da (n) = alpha dout,  db (n) = beta dout     (=, activation grads; either optional)
//   scale     out (n) = alpha x (n)                        any dtypes: with alpha 1, a cast
//
// thread mapping: one thread per pair of elements (f16/bf16 outputs are written a word at a
// time), 2-D grid past 65535 workgroups. out may be a or b (in place): each thread reads its
// pair before writing it; any other overlap is an error. numerics: f32 arithmetic, rounded once to out's dtype.

import type { Gpu } from '../../gpu/device.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { ShapeError } from '../../gpu/errors.ts';
import { expectDisjoint, expectPackable, grid1d, header, launch, type ParamSpec, wgslOnce } from '../kernel.ts';

const WG = 256;
const PARAMS: ParamSpec = [
  ['n', 'u32'],
  ['row', 'u32'],
  ['alpha', 'f32'],
  ['beta', 'f32'],
];

// in place (out is a or b) binds that tensor once, as out, and reads it through ld_out
// b null: out = alpha a (scale), nothing else bound or read
function wgsl(out: Tensor, a: Tensor, b: Tensor | null, aliasA: boolean, aliasB: boolean): string {
  const packed = out.dtype !== 'f32';
  const inputs = [
    ...(aliasA ? [] : [{ name: 'a', type: a.dtype, access: 'read' as const }]),
    ...(aliasB || !b ? [] : [{ name: 'b', type: b.dtype, access: 'read' as const }]),
  ];
  const la = aliasA ? 'ld_out' : 'ld_a';
  const lb = aliasB ? 'ld_out' : 'ld_b';
  return /* wgsl */ `
${header([{ name: 'out', type: out.dtype, access: 'read_write' }, ...inputs], PARAMS)}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = 2u * (g.x + g.y * p.row);
  if (i >= p.n) { return; }
  let i1 = min(i + 1u, p.n - 1u);
  let x = p.alpha * ${la}(i)${b ? ` + p.beta * ${lb}(i)` : ''};
  let y = p.alpha * ${la}(i1)${b ? ` + p.beta * ${lb}(i1)` : ''};
  ${packed ? 'st2_out(i, x, y);' : 'if (i + 1u < p.n) { st2_out(i, x, y); } else { st_out(i, x); }'}
}`;
}

const same = (x: Tensor, y: Tensor) => x.buffer === y.buffer && x.offset === y.offset;

/** out = alpha a + beta b (elementwise; out may be a or b). */
export async function addForward(gpu: Gpu, o: { out: Tensor }, i: { a: Tensor; b: Tensor }, alpha = 1, beta = 1): Promise<void> {
  const op = 'addForward';
  if (i.a.size !== o.out.size || i.b.size !== o.out.size) {
    throw new ShapeError(`${op}: ${i.a}, ${i.b} and ${o.out} must have the same number of elements`);
  }
  expectPackable(op, 'out', o.out);
  const aliasA = same(o.out, i.a);
  const aliasB = same(o.out, i.b);
  const [x, y] = grid1d(gpu, Math.ceil(o.out.size / (2 * WG)));
  const name = `add_${o.out.dtype}_${i.a.dtype}_${i.b.dtype}${aliasA ? '_ina' : ''}${aliasB ? '_inb' : ''}`;
  await launch(gpu, {
    name,
    wgsl: wgslOnce(name, () => wgsl(o.out, i.a, i.b, aliasA, aliasB)),
    storage: [o.out, ...(aliasA ? [] : [i.a]), ...(aliasB ? [] : [i.b])],
    params: PARAMS,
    values: { n: o.out.size, row: x * WG, alpha, beta },
    workgroups: [x, y],
  });
}

/** da = alpha dout, db = beta dout (each optional, overwritten). */
export async function addBackward(gpu: Gpu, o: { da?: Tensor; db?: Tensor }, i: { dout: Tensor }, alpha = 1, beta = 1): Promise<void> {
  if (o.da) await scale(gpu, { out: o.da }, { x: i.dout }, alpha);
  if (o.db) await scale(gpu, { out: o.db }, { x: i.dout }, beta);
}

/** out = alpha x, elementwise, any float dtypes (alpha 1: a dtype conversion); out may be x. */
export async function scale(gpu: Gpu, o: { out: Tensor }, i: { x: Tensor }, alpha = 1): Promise<void> {
  const op = 'scale';
  if (i.x.size !== o.out.size) throw new ShapeError(`${op}: ${i.x} and ${o.out} must have the same number of elements`);
  expectPackable(op, 'out', o.out);
  const alias = same(o.out, i.x);
  if (!alias) expectDisjoint(op, o.out, i.x);
  const [x, y] = grid1d(gpu, Math.ceil(o.out.size / (2 * WG)));
  const name = `scale_${o.out.dtype}_${i.x.dtype}${alias ? '_in' : ''}`;
  await launch(gpu, {
    name,
    wgsl: wgslOnce(name, () => wgsl(o.out, i.x, null, alias, false)),
    storage: alias ? [o.out] : [o.out, i.x],
    params: PARAMS,
    values: { n: o.out.size, row: x * WG, alpha, beta: 0 },
    workgroups: [x, y],
  });
}
