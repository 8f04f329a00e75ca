// SwiGLU activation, forward and backward.
//
//   forward   out (N,H) = silu(g) * u,   silu(x) = x sigmoid(x)
//   backward  dg (N,H) = dout * u * sigmoid(g) * (1 + g (1 - sigmoid(g)))     (=, activation grad)
//             du (N,H) = dout * silu(g)                                        (=, activation grad)
//
// layouts: the primary one is fused, gu (N,2H) with the gate in columns [0,H) and the up
// projection in [H,2H), which is what one W1|W3 projection produces; its gradient dgu (N,2H)
// has the same layout. separate g, u (N,H) and dg, du (N,H) are accepted too (either layout for
// the inputs, either for the gradients). leading dimensions are flattened into N.
// thread mapping: a unit is (row, pair of columns h, h+1), so f16/bf16 outputs are written a
// word at a time (H even for f16/bf16; f32 allows odd H); each thread loads 4 units a grid-width
// apart before it stores any (more loads in flight), and consecutive threads touch consecutive
// words: coalesced. numerics: f32 math; sigmoid(x) = 1/(1+e) or e/(1+e) with e = exp(-|x|) never
// overflows, so large |g| gives silu = g or 0 and finite gradients. nothing is saved: the
// backward recomputes sigmoid(g) from g.

import type { Gpu } from '../../gpu/device.ts';
import { DTYPES } from '../../gpu/dtype.ts';
import { ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDisjoint, expectDtype, expectShape, grid1d, header, launch, type BindingDecl, type ParamSpec, wgslOnce } from '../kernel.ts';

const WG = 256;
const PER = 4; // units (pairs of columns) per thread

const PARAMS: ParamSpec = [
  ['N', 'u32'],
  ['H', 'u32'],
  ['Q', 'u32'], // units per row, ceil(H/2)
];

/** gate and up values: the fused (N,2H) tensor, or two (N,H) tensors */
export type GateUp = { gu: Tensor } | { g: Tensor; u: Tensor };
/** their gradients, in either layout */
export type GateUpGrad = { dgu: Tensor } | { dg: Tensor; du: Tensor };

/** a (N, 2H) fused pair or two (N, H) halves, as WGSL names and an index expression per half */
interface Pair {
  fused: boolean;
  tensors: Tensor[];
  decls: (access: BindingDecl['access']) => BindingDecl[];
  /** WGSL index of (row n, column h) of the gate / up half */
  gate: (h: string) => string;
  up: (h: string) => string;
  /** names of the gate / up bindings and whether they are packed f16/bf16 */
  gName: string;
  uName: string;
  gPacked: boolean;
  uPacked: boolean;
}

function pair(fused: Tensor | null, g: Tensor | null, u: Tensor | null, names: [string, string, string]): Pair {
  const [f, gn, un] = names;
  if (fused) {
    return {
      fused: true,
      tensors: [fused],
      decls: (access) => [{ name: f, type: fused.dtype, access }],
      gate: (h) => `n * 2u * p.H + ${h}`,
      up: (h) => `n * 2u * p.H + p.H + ${h}`,
      gName: f,
      uName: f,
      gPacked: fused.dtype !== 'f32',
      uPacked: fused.dtype !== 'f32',
    };
  }
  return {
    fused: false,
    tensors: [g!, u!],
    decls: (access) => [
      { name: gn, type: g!.dtype, access },
      { name: un, type: u!.dtype, access },
    ],
    gate: (h) => `n * p.H + ${h}`,
    up: (h) => `n * p.H + ${h}`,
    gName: gn,
    uName: un,
    gPacked: g!.dtype !== 'f32',
    uPacked: u!.dtype !== 'f32',
  };
}

const COMMON = /* wgsl */ `
fn sigmoid2(x: vec2<f32>) -> vec2<f32> {
  let e = exp(-abs(x));  // in (0, 1]: no overflow for any x
  let s = 1.0 / (1.0 + e);
  return select(e * s, s, x >= vec2<f32>(0.0));
}`;

const KS = Array.from({ length: PER }, (_, k) => k);

/**
 * the body of a thread: PER units (row n, columns h, h+1) a grid-width apart, unrolled; `load(k)`
 * runs for every unit first (PER loads in flight), then `store(k)`. unit u: n = u / Q, h = 2 (u % Q).
 */
const body = (load: (k: number) => string, store: (k: number) => string) => /* wgsl */ `
  let ubase = (wid.x + wid.y * nwg.x) * ${WG}u + l.x;
  let stride = nwg.x * nwg.y * ${WG}u;
  let units = p.N * p.Q;
  ${KS.map(
    (k) => `let n${k} = (ubase + ${k}u * stride) / p.Q;
  let h${k} = (ubase + ${k}u * stride - n${k} * p.Q) * 2u;
  let ok${k} = ubase + ${k}u * stride < units;
  ${load(k)}`,
  ).join('\n  ')}
  ${KS.map((k) => `if (ok${k}) {\n    let n = n${k};\n    let h = h${k};\n    ${store(k)}\n  }`).join('\n  ')}`;

/** loads the (g, u) pairs of unit k into gv<k>, uv<k> (and dout into dv<k>); zeros past the end */
const loads = (x: Pair, dout: boolean) => (k: number) => /* wgsl */ `
  var gv${k} = vec2<f32>(0.0);
  var uv${k} = vec2<f32>(0.0);
  ${dout ? `var dv${k} = vec2<f32>(0.0);` : ''}
  if (ok${k}) {
    let n = n${k};
    let h = h${k};
    gv${k} = ld2_${x.gName}(${x.gate('h')});
    uv${k} = ld2_${x.uName}(${x.up('h')});
    ${dout ? `dv${k} = ld2_dout(n * p.H + h);` : ''}
  }`;

/** stores (a, b) at columns (h, h+1), or a alone at the end of an odd f32 row */
const store = (name: string, packed: boolean, i: string, a: string, b: string) =>
  packed ? `st2_${name}(${i}, ${a}, ${b});` : `if (h + 1u < p.H) { st2_${name}(${i}, ${a}, ${b}); } else { st_${name}(${i}, ${a}); }`;

function forwardWgsl(out: Tensor, x: Pair): string {
  return /* wgsl */ `
${header([{ name: 'out', type: out.dtype, access: 'read_write' }, ...x.decls('read')], PARAMS)}
${COMMON}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  ${body(
    loads(x, false),
    (k) => `let o = gv${k} * sigmoid2(gv${k}) * uv${k};
    ${store('out', out.dtype !== 'f32', 'n * p.H + h', 'o.x', 'o.y')}`,
  )}
}`;
}

function backwardWgsl(d: Pair, dout: Tensor, x: Pair): string {
  return /* wgsl */ `
${header([...d.decls('read_write'), { name: 'dout', type: dout.dtype, access: 'read' }, ...x.decls('read')], PARAMS)}
${COMMON}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  ${body(
    loads(x, true),
    (k) => `let s = sigmoid2(gv${k});
    let dg = dv${k} * uv${k} * s * (1.0 + gv${k} * (1.0 - s));
    let du = dv${k} * gv${k} * s;
    ${store(d.gName, d.gPacked, d.gate('h'), 'dg.x', 'dg.y')}
    ${store(d.uName, d.uPacked, d.up('h'), 'du.x', 'du.y')}`,
  )}
}`;
}

/** N and H of the inputs, with layout checks; `rows` are the leading dims of the (.., H) tensors */
function dims(op: string, x: GateUp): { N: number; H: number; rows: number[]; p: Pair } {
  if ('gu' in x) {
    const s = x.gu.shape;
    const W = s[s.length - 1] ?? 0;
    if (s.length < 1 || W % 2 !== 0) {
      throw new ShapeError(`${op}: gu ${x.gu.label}[${s.join(',')}]:${x.gu.dtype} should be [N,2H] (gate | up), with an even last dimension`);
    }
    expectDtype(op, 'gu', x.gu, DTYPES);
    const H = W / 2;
    return { N: x.gu.size / Math.max(W, 1), H, rows: s.slice(0, -1), p: pair(x.gu, null, null, ['gu', 'g', 'u']) };
  }
  expectShape(op, 'u', x.u, x.g.shape);
  expectDtype(op, 'g', x.g, DTYPES);
  expectDtype(op, 'u', x.u, DTYPES);
  const H = x.g.shape[x.g.shape.length - 1] ?? 0;
  return { N: x.g.size / Math.max(H, 1), H, rows: x.g.shape.slice(0, -1), p: pair(null, x.g, x.u, ['gu', 'g', 'u']) };
}

function expectPackedEven(op: string, H: number, ts: readonly Tensor[]): void {
  if (ts.some((t) => t.dtype !== 'f32') && H % 2 !== 0) {
    const list = ts.map(String).join(', ');
    throw new ShapeError(`${op}: H = ${H} is odd and ${list} include f16/bf16; use f32 or an even H`);
  }
}

/** out (N,H) = silu(g) * u, from the fused gu (N,2H) or from g, u (N,H). */
export async function swigluForward(gpu: Gpu, o: { out: Tensor }, x: GateUp): Promise<void> {
  const op = 'swigluForward';
  const { N, H, rows, p } = dims(op, x);
  expectShape(op, 'out', o.out, [...rows, H]);
  expectDtype(op, 'out', o.out, DTYPES);
  expectPackedEven(op, H, [o.out, ...p.tensors]);
  for (const t of p.tensors) expectDisjoint(op, o.out, t);
  const Q = Math.ceil(H / 2);
  const name = `swiglu_forward_${o.out.dtype}_${p.fused ? 'fused' : 'split'}_${p.tensors.map((t) => t.dtype).join('_')}`;
  await launch(gpu, {
    name,
    wgsl: wgslOnce(name, () => forwardWgsl(o.out, p)),
    storage: [o.out, ...p.tensors],
    params: PARAMS,
    values: { N, H, Q },
    workgroups: grid1d(gpu, Math.ceil((N * Q) / (WG * PER))),
  });
}

/** dgu (N,2H), or dg and du (N,H), = gradients of swiglu (overwritten). */
export async function swigluBackward(gpu: Gpu, o: GateUpGrad, i: { dout: Tensor } & GateUp): Promise<void> {
  const op = 'swigluBackward';
  const x: GateUp = 'gu' in i ? { gu: i.gu } : { g: i.g, u: i.u };
  const { N, H, rows, p } = dims(op, x);
  expectShape(op, 'dout', i.dout, [...rows, H]);
  expectDtype(op, 'dout', i.dout, DTYPES);
  let d: Pair;
  if ('dgu' in o) {
    expectShape(op, 'dgu', o.dgu, [...rows, 2 * H]);
    expectDtype(op, 'dgu', o.dgu, DTYPES);
    d = pair(o.dgu, null, null, ['dgu', 'dg', 'du']);
  } else {
    expectShape(op, 'dg', o.dg, [...rows, H]);
    expectShape(op, 'du', o.du, [...rows, H]);
    expectDtype(op, 'dg', o.dg, DTYPES);
    expectDtype(op, 'du', o.du, DTYPES);
    expectDisjoint(op, o.dg, o.du);
    d = pair(null, o.dg, o.du, ['dgu', 'dg', 'du']);
  }
  expectPackedEven(op, H, [...d.tensors, i.dout, ...p.tensors]);
  for (const w of d.tensors) for (const r of [i.dout, ...p.tensors]) expectDisjoint(op, w, r);
  const Q = Math.ceil(H / 2);
  const name =
    `swiglu_backward_${d.fused ? 'fused' : 'split'}_${d.tensors.map((t) => t.dtype).join('_')}_${i.dout.dtype}_` +
    `${p.fused ? 'fused' : 'split'}_${p.tensors.map((t) => t.dtype).join('_')}`;
  await launch(gpu, {
    name,
    wgsl: wgslOnce(name, () => backwardWgsl(d, i.dout, p)),
    storage: [...d.tensors, i.dout, ...p.tensors],
    params: PARAMS,
    values: { N, H, Q },
    workgroups: grid1d(gpu, Math.ceil((N * Q) / (WG * PER))),
  });
}
