// fused AdamW step (torch.optim.AdamW: decoupled weight decay, bias-corrected moments).
//
//   per element, with t = step (from 1), lr and wd from the parameter's group:
//     g = g * gradScale
//     p = p * (1 - lr wd)
//     m = b1 m + (1 - b1) g               v = b2 v + (1 - b2) g^2
//     p = p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//
// shapes: for every parameter p (any shape), g, m and v have p's shape and are f32; p may be
// stored f32, f16 or bf16. the update is computed in f32 and rounded once into p.
// f16/bf16 parameters: a trainer should keep an f32 master copy (tiny updates vanish when added
// to a 16-bit value: bf16 has 8 bits of mantissa, so p + 1e-3 p == p). pass it as `master`:
// the step then reads and updates the master and writes it, rounded, into p (p is not read).
// gradScale multiplies g before anything else: loss-scale removal and gradient clipping cost
// no extra pass. it is a number, or a [1] f32 tensor read on the GPU, e.g. the clip coefficient
// that gradNorm writes (min(1, maxNorm / (norm + 1e-6))): clipping then needs no readback.
// thread mapping: one dispatch per tensor (groups only change the uniforms); each thread owns
// two consecutive elements, so f16/bf16 parameters are written a whole word at a time; an odd
// tail leaves the padding half of the last word as it was. bias corrections are folded into
// two f32 uniforms on the host (in float64). no reductions: results are deterministic.
// sparse rows (`rows`): a parameter seen as rows of `width` elements, with a u32 mask per row;
// only elements of rows whose mask is nonzero are updated (moments, decay and all), the others
// keep every bit (a lazy Adam, as torch's SparseAdam: the bias corrections still use the global
// step). the memory value table's sparse mode uses it (train/optimizer.ts).

import type { Gpu } from '../../gpu/device.ts';
import type { DType } from '../../gpu/dtype.ts';
import { EngramError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDisjoint, expectDtype, expectShape, floatDtype, grid1d, header, launch, type BindingDecl, type ParamSpec, wgslOnce } from '../kernel.ts';

const WG = 256;

export interface AdamwParam {
  /** the parameter: f32, f16 or bf16, any shape */
  p: Tensor;
  /** its gradient (f32, p's shape) */
  g: Tensor;
  /** first and second moments (f32, p's shape), zero before the first step */
  m: Tensor;
  v: Tensor;
  /** optional f32 master copy of p: updated in its place, then written rounded into p */
  master?: Tensor;
  /** update only the rows (of `width` elements) whose u32 mask entry is nonzero */
  rows?: { mask: Tensor; width: number };
}

export interface AdamwGroup {
  params: readonly AdamwParam[];
  lr: number;
  weightDecay: number;
}

export interface AdamwOptions {
  /** the step number t, counting from 1 (bias corrections 1 - beta^t) */
  step: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** multiplies every gradient first: a number, or a [1] f32 tensor read on the GPU */
  gradScale?: number | Tensor;
}

const PARAMS: ParamSpec = [
  ['n', 'u32'],
  ['row', 'u32'], // threads per grid row (2-D grids past 65535 workgroups)
  ['decay', 'f32'], // 1 - lr wd
  ['b1', 'f32'],
  ['b2', 'f32'],
  ['omb1', 'f32'], // 1 - b1
  ['omb2', 'f32'], // 1 - b2
  ['step_size', 'f32'], // lr / (1 - b1^t)
  ['rbc2', 'f32'], // 1 / sqrt(1 - b2^t)
  ['eps', 'f32'],
  ['gscale', 'f32'],
  ['width', 'u32'], // row width when masked
];

function adamwWgsl(dtype: DType, master: boolean, gpuScale: boolean, rows: boolean): string {
  const packed = dtype !== 'f32';
  const bindings: BindingDecl[] = [
    { name: 'param', type: dtype, access: 'read_write' }, // p (the uniforms are `p`)
    // torch's names: a binding named v would shadow the header helpers' argument v
    { name: 'exp_avg', type: 'f32', access: 'read_write' }, // m
    { name: 'exp_avg_sq', type: 'f32', access: 'read_write' }, // v
    ...(master ? [{ name: 'master', type: 'f32' as const, access: 'read_write' as const }] : []),
    { name: 'g', type: 'f32', access: 'read' },
    ...(gpuScale ? [{ name: 'gs', type: 'f32' as const, access: 'read' as const }] : []),
    ...(rows ? [{ name: 'mask', type: 'u32' as const, access: 'read' as const }] : []),
  ];
  // the value the update starts from: the master copy, or p itself
  const load = (j: string) => (master ? `master[${j}]` : `ld_param(${j})`);
  return /* wgsl */ `
${header(bindings, PARAMS)}
// one element: moments updated in place, returns the new parameter value
fn update(j: u32, x: f32, gs: f32) -> f32 {
  let gj = g[j] * gs;
  let mj = p.b1 * exp_avg[j] + p.omb1 * gj;
  let vj = p.b2 * exp_avg_sq[j] + p.omb2 * gj * gj;
  exp_avg[j] = mj;
  exp_avg_sq[j] = vj;
  // decoupled decay first, then the bias-corrected step (torch's order)
  return x * p.decay - p.step_size * mj / (sqrt(vj) * p.rbc2 + p.eps);
}

@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = 2u * (gid.x + gid.y * p.row);
  if (i >= p.n) { return; }
  let gs = p.gscale${gpuScale ? ' * gs[0]' : ''};
  let two = i + 1u < p.n;
  ${
    rows
      ? `// masked rows: an element of a row left out keeps its value (rewritten as it was)
  let on_a = mask[i / p.width] != 0u;
  let on_b = two && mask[(i + 1u) / p.width] != 0u;
  if (!on_a && !on_b) { return; }
  var a = ${load('i')};
  if (on_a) { a = update(i, a, gs); }
  var b = ${packed ? 'ld_param(i + 1u)' : '0.0'};
  if (two) { b = ${load('i + 1u')}; }
  if (on_b) { b = update(i + 1u, b, gs); }`
      : `let a = update(i, ${load('i')}, gs);
  var b = ${packed ? 'ld_param(i + 1u)' : '0.0'};  ${packed ? '// an odd tail: the padding half keeps its bits' : ''}
  if (two) { b = update(i + 1u, ${load('i + 1u')}, gs); }`
  }
  ${master ? 'master[i] = a;\n  if (two) { master[i + 1u] = b; }' : ''}
  ${packed ? 'st2_param(i, a, b);' : 'param[i] = a;\n  if (two) { param[i + 1u] = b; }'}
}`;
}

/**
 * One AdamW step over every parameter of every group (PyTorch semantics; see the header).
 * Moments m, v and the optional f32 master are updated in place; p is overwritten.
 */
export async function adamwStep(gpu: Gpu, groups: readonly AdamwGroup[], opts: AdamwOptions): Promise<void> {
  const op = 'adamwStep';
  const { step, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, gradScale = 1 } = opts;
  if (!Number.isInteger(step) || step < 1) throw new EngramError(`${op}: step must be an integer >= 1, got ${step}`);
  for (const [name, b] of [['beta1', beta1], ['beta2', beta2]] as const) {
    if (!(b >= 0 && b < 1)) throw new EngramError(`${op}: ${name} must be in [0, 1), got ${b}`);
  }
  if (!(eps > 0 && Number.isFinite(eps))) throw new EngramError(`${op}: eps must be positive, got ${eps}`);
  const gpuScale = typeof gradScale !== 'number';
  if (gpuScale) {
    expectShape(op, 'gradScale', gradScale, [1]);
    expectDtype(op, 'gradScale', gradScale, ['f32']);
  } else if (!Number.isFinite(gradScale)) {
    throw new EngramError(`${op}: gradScale must be finite, got ${gradScale}`);
  }
  // validate everything before recording anything: a bad tensor must not leave half a step
  const jobs: { grp: AdamwGroup; t: AdamwParam; dtype: DType; storage: Tensor[] }[] = [];
  groups.forEach((grp, gi) => {
    if (!Number.isFinite(grp.lr) || !Number.isFinite(grp.weightDecay)) {
      throw new EngramError(`${op}: group ${gi} has lr ${grp.lr} and weightDecay ${grp.weightDecay}; both must be finite`);
    }
    grp.params.forEach((t, pi) => {
      const at = `groups[${gi}].params[${pi}]`;
      const dtype = floatDtype(op, `${at}.p`, t.p);
      for (const [k, x] of [['g', t.g], ['m', t.m], ['v', t.v], ['master', t.master]] as const) {
        if (!x) continue;
        expectShape(op, `${at}.${k}`, x, t.p.shape);
        expectDtype(op, `${at}.${k}`, x, ['f32']);
      }
      const writes = t.master ? [t.p, t.m, t.v, t.master] : [t.p, t.m, t.v];
      const reads = gpuScale ? [t.g, gradScale] : [t.g];
      if (t.rows) {
        const { mask, width } = t.rows;
        if (!(Number.isInteger(width) && width > 0 && t.p.size % width === 0)) {
          throw new EngramError(`${op}: ${at}.rows.width ${width} must divide ${t.p} into whole rows`);
        }
        expectShape(op, `${at}.rows.mask`, mask, [t.p.size / width]);
        expectDtype(op, `${at}.rows.mask`, mask, ['u32']);
        reads.push(mask);
      }
      // a written tensor may share a buffer (an arena) with the others, not their bytes
      for (const [j, w] of writes.entries()) for (const x of [...writes.slice(j + 1), ...reads]) expectDisjoint(op, w, x);
      if (t.p.size > 0) jobs.push({ grp, t, dtype, storage: [...writes, ...reads] });
    });
  });
  const bc1 = 1 - beta1 ** step;
  const bc2 = 1 - beta2 ** step;
  for (const { grp, t, dtype, storage } of jobs) {
    const n = t.p.size;
    const [x, y] = grid1d(gpu, Math.ceil(n / 2 / WG));
    const name = `adamw_${dtype}${t.master ? '_master' : ''}${gpuScale ? '_gpuscale' : ''}${t.rows ? '_rows' : ''}`;
    await launch(gpu, {
      name,
      wgsl: wgslOnce(name, () => adamwWgsl(dtype, !!t.master, gpuScale, !!t.rows)),
      storage,
      params: PARAMS,
      values: {
        n,
        row: x * WG,
        decay: 1 - grp.lr * grp.weightDecay,
        b1: beta1,
        b2: beta2,
        omb1: 1 - beta1,
        omb2: 1 - beta2,
        step_size: grp.lr / bc1,
        rbc2: 1 / Math.sqrt(bc2),
        eps,
        gscale: gpuScale ? 1 : gradScale,
        width: t.rows?.width ?? 1,
      },
      workgroups: [x, y],
    });
  }
}
