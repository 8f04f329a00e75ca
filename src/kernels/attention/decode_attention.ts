// attention of one new token per batch row against a KV cache: the decode step of rows that
// joined at different times and hold different lengths (serve/engine.ts), or of a lockstep batch
// whose rows share one length (model/transformer.ts logits with a KvCache). inference only: no
// lse, no backward.
//
//   out (B,NH,HS) = softmax(scale q k^T) v over row b's keys        q (B,NH,HS) f32, rotated
//   k, v (B,S,NKV,HS) f32: the cache of one block; row b's keys are its front rows [0, f_b) and
//   its context rows [F, F + n_b) (the new token's key already appended at F + n_b - 1); the
//   rows between (a front shorter than the room F kept for it) and after are not keys.
//   rows (R,4) u32: per batch row (f_b, n_b, *, *) at rows[rowBase + b]; or no rows buffer and one
//   (f, n) for every row in the uniforms (a lockstep batch). query head h reads kv head h / (NH/NKV).
//
// thread mapping: one workgroup of 64 threads per (b, h). keys go in tiles of 64, one key per
// thread: its score (a dot product over HS from the cache row), the tile's max and sum by tree
// reductions in workgroup memory, then thread d accumulates dims d and d + 64 of
// sum_j p_j v_j over the tile's keys (coalesced rows of v). online softmax across tiles. the
// two row lengths come through workgroupUniformLoad, so the tile loop and its barriers are
// uniform. numerics: f32 throughout, exp of scores minus the running max (exactly 0 for none);
// a row with no keys (n_b = f_b = 0: an unused slot) writes zeros. HS <= 128.

import type { Gpu } from '../../gpu/device.ts';
import { ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDtype, expectShape, header, launch, wgslOnce, type ParamSpec } from '../kernel.ts';

const NT = 64;
/** largest head size (two dims per thread) */
export const DECODE_MAX_HS = 2 * NT;

const PARAMS: ParamSpec = [
  ['NH', 'u32'],
  ['G', 'u32'], // query heads per kv head
  ['NKV', 'u32'],
  ['HS', 'u32'],
  ['S', 'u32'], // cache rows per batch row
  ['F', 'u32'], // the first context row
  ['rowBase', 'u32'],
  ['scale', 'f32'],
  ['f', 'u32'], // without a rows buffer: every row's front rows and context rows
  ['n', 'u32'],
];

/** the kernel reading each row's lengths from a rows buffer, or one pair from the uniforms */
const wgsl = (perRow: boolean) => /* wgsl */ `
${header(
  [
    { name: 'out', type: 'f32', access: 'read_write' },
    { name: 'q', type: 'f32', access: 'read' },
    { name: 'k', type: 'f32', access: 'read' },
    { name: 'v', type: 'f32', access: 'read' },
    ...(perRow ? [{ name: 'rows', type: 'u32', access: 'read' } as const] : []),
  ],
  PARAMS,
)}
const NT = ${NT}u;
var<workgroup> sq: array<f32, ${DECODE_MAX_HS}>;
var<workgroup> sp: array<f32, ${NT}>;
var<workgroup> red: array<f32, ${NT}>;
var<workgroup> lens: vec2<u32>;

// the cache row of key j of batch row b (front rows first, then the context from F)
fn keyRow(b: u32, j: u32, f: u32) -> u32 {
  return b * p.S + select(p.F + j - f, j, j < f);
}

fn reduce(lid: u32, isMax: bool) -> f32 {
  for (var s = NT / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = select(red[lid] + red[lid + s], max(red[lid], red[lid + s]), isMax); }
    workgroupBarrier();
  }
  return red[0];
}

@compute @workgroup_size(${NT})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let b = wid.x / p.NH;
  let h = wid.x % p.NH;
  let kvh = h / p.G;
  if (lid == 0u) { lens = ${perRow ? 'vec2<u32>(rows[(p.rowBase + b) * 4u], rows[(p.rowBase + b) * 4u + 1u])' : 'vec2<u32>(p.f, p.n)'}; }
  let fn_ = workgroupUniformLoad(&lens);
  let f = fn_.x;
  let n = fn_.x + fn_.y;
  for (var d = lid; d < p.HS; d += NT) { sq[d] = q[(b * p.NH + h) * p.HS + d]; }
  workgroupBarrier();
  var m = -3.0e38;
  var l = 0.0;
  var acc0 = 0.0;
  var acc1 = 0.0;
  for (var t0 = 0u; t0 < n; t0 += NT) {
    let j = t0 + lid;
    var s = -3.0e38;
    if (j < n) {
      let base = (keyRow(b, j, f) * p.NKV + kvh) * p.HS;
      var dot = 0.0;
      for (var d = 0u; d < p.HS; d++) { dot += sq[d] * k[base + d]; }
      s = dot * p.scale;
    }
    red[lid] = s;
    workgroupBarrier();
    let mt = max(m, reduce(lid, true));
    workgroupBarrier();  // every thread has read red[0]
    let pj = select(0.0, exp(s - mt), j < n);
    sp[lid] = pj;
    red[lid] = pj;
    workgroupBarrier();
    let alpha = exp(m - mt);
    l = l * alpha + reduce(lid, false);
    m = mt;
    acc0 *= alpha;
    acc1 *= alpha;
    let cnt = min(NT, n - t0);
    for (var jj = 0u; jj < cnt; jj++) {
      let base = (keyRow(b, t0 + jj, f) * p.NKV + kvh) * p.HS;
      if (lid < p.HS) { acc0 += sp[jj] * v[base + lid]; }
      if (lid + NT < p.HS) { acc1 += sp[jj] * v[base + lid + NT]; }
    }
    workgroupBarrier();  // sp and red are rewritten by the next tile
  }
  let inv = select(0.0, 1.0 / l, n > 0u);
  if (lid < p.HS) { out[(b * p.NH + h) * p.HS + lid] = acc0 * inv; }
  if (lid + NT < p.HS) { out[(b * p.NH + h) * p.HS + lid + NT] = acc1 * inv; }
}`;

/**
 * out (B,NH,HS) = attention of q (B,NH,HS) over each batch row's keys in the cache k, v (B,S,NKV,HS):
 * front rows [0, f_b) and context rows [F, F + n_b), with (f_b, n_b) = rows[rowBase + b] (rows: (R,4)
 * u32), or without rows, opts.lengths = (f, n) for every row.
 */
export async function decodeAttention(
  gpu: Gpu,
  o: { out: Tensor },
  i: { q: Tensor; k: Tensor; v: Tensor; rows?: Tensor },
  opts: { F: number; rowBase?: number; scale?: number; lengths?: readonly [f: number, n: number] },
): Promise<void> {
  const op = 'decodeAttention';
  if (i.q.shape.length !== 3) throw new ShapeError(`${op}: q ${i.q} should be [B, NH, HS]`);
  const [B, NH, HS] = i.q.shape as [number, number, number];
  if (i.k.shape.length !== 4) throw new ShapeError(`${op}: k ${i.k} should be [B, S, NKV, HS]`);
  const [, S, NKV] = i.k.shape as [number, number, number, number];
  expectShape(op, 'k', i.k, [B, S, NKV, HS]);
  expectShape(op, 'v', i.v, [B, S, NKV, HS]);
  expectShape(op, 'out', o.out, [B, NH, HS]);
  for (const [n, t] of [['q', i.q], ['k', i.k], ['v', i.v], ['out', o.out]] as const) expectDtype(op, n, t, ['f32']);
  const rowBase = opts.rowBase ?? 0;
  const [f, n] = opts.lengths ?? [0, 0];
  if (i.rows) {
    expectDtype(op, 'rows', i.rows, ['u32']);
    if (i.rows.shape.length !== 2 || i.rows.shape[1] !== 4 || i.rows.shape[0]! < rowBase + B) {
      throw new ShapeError(`${op}: rows ${i.rows} should be [R, 4] u32 with R >= rowBase + B = ${rowBase + B}`);
    }
    if (opts.lengths) throw new ShapeError(`${op}: pass the rows' lengths in rows or in lengths, not both`);
  } else if (!opts.lengths || !(Number.isInteger(f) && Number.isInteger(n) && f >= 0 && n >= 0 && f <= opts.F && opts.F + n <= S)) {
    throw new ShapeError(`${op}: without rows, lengths (f, n) = (${opts.lengths?.join(', ') ?? 'none'}) must give every row f <= F = ${opts.F} front rows and n context rows within the cache's ${S}`);
  }
  if (NH % NKV !== 0) throw new ShapeError(`${op}: ${NH} query heads do not split into groups over ${NKV} kv heads`);
  if (!(HS > 0 && HS <= DECODE_MAX_HS)) throw new ShapeError(`${op}: head size ${HS} must be in 1..${DECODE_MAX_HS}`);
  if (!(Number.isInteger(opts.F) && opts.F >= 0 && opts.F <= S)) throw new ShapeError(`${op}: F = ${opts.F} must be a row of the cache's ${S}`);
  if (B === 0) return;
  const name = i.rows ? 'decode_attention' : 'decode_attention_lockstep';
  await launch(gpu, {
    name,
    wgsl: wgslOnce(name, () => wgsl(!!i.rows)),
    storage: i.rows ? [o.out, i.q, i.k, i.v, i.rows] : [o.out, i.q, i.k, i.v],
    params: PARAMS,
    values: { NH, G: NH / NKV, NKV, HS, S, F: opts.F, rowBase, scale: opts.scale ?? 1 / Math.sqrt(HS), f, n },
    workgroups: [B * NH],
  });
}
