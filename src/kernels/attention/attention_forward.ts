// causal self-attention forward, flash style (online softmax): the GPU mapping, and the choice
// of mapping (on a CPU adapter, gpu.cpu, the row-per-thread kernel of attention_cpu.ts).
//
//   out (B,T,NH,HS) = softmax(scale q k^T + mask) v       lse (B,NH,T) = logsumexp, saved (f32)
//   q (B,T,NH,HS)  k, v (B,T,NKV,HS)  pk, pv (B,P,NKV,HS) or chunked (B,ceil(T/C)*P,NKV,HS), optional
//
// thread mapping: one workgroup per (b, h, block of BR queries), latest blocks first (they have
// the most keys); RG = BR/4 row groups times CG = BC/4 column groups of threads. thread (rg, cg)
// owns query rows rg*4..rg*4+3 and, for the scores, keys cg, cg+CG, cg+2CG, cg+3CG of each
// BC-key tile (a 4x4 register tile, updated with fma's), and for the output, the 4-element
// column slices cg, cg+CG, ... of its 4 rows. per key tile (5 barriers):
//   k tile -> workgroup memory | s = q k^T in registers, row-max partials -> workgroup memory |
//   row max, p = exp2(s - m), the v tile replaces the k tile | p -> workgroup memory transposed
//   (over the partials) | o = o * alpha + p v |
// q is staged once, pre-multiplied by scale*log2(e) so the softmax runs on exp2. tiles wholly
// above the diagonal are never visited; only tiles that cross it (or the end) are masked.
// workgroup memory: BR*HS + BC*HS + BC*BR floats, 32 KiB at BR=64, BC=32, HS=64 (every device
// has 32 KiB; a separate buffer for the row partials, one barrier less, measured slower on an
// H100: fewer resident workgroups). row strides are not padded: accesses are xor-swizzled so
// that the 8 threads of a quarter warp hit distinct banks.
// numerics: f32 throughout (storage may be f32/f16/bf16); masked scores are -3e38, so exp2 gives
// exactly 0. lse is stored in natural-log units: lse = (m + log2(l)) * ln(2).
// chunked prefix: a block of BR queries may straddle chunks (C need not be a multiple of BR);
// its prefix keys are the blocks of every chunk it spans, masked per row (no masked prefix
// tile when the block lies in one chunk). a row may then meet whole tiles of keys it cannot
// see before its first visible one: its running max stays -3e38 and p = exp2(0) = 1 adds
// garbage to l and o, which the first visible key clears (alpha = exp2(-3e38 - m) = 0); every
// row sees at least one key (its own when causal).
// keys, dtypes and the prefix: see attention_common.ts.

import type { Gpu } from '../../gpu/device.ts';
import { DTYPES } from '../../gpu/dtype.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { cpuLanes, expectDtype, expectShape, header, launch, wgslOnce } from '../kernel.ts';
import {
  C4,
  FWD_PARAMS,
  KEEP,
  PACK16,
  R4,
  VEC_HELPERS,
  attentionShape,
  dtValues,
  fwdBindings,
  keyTileIo,
  outer,
  paramValues,
  pickTile,
  queryWindow,
  queryTile,
  queryTileIo,
  range,
  rowLoads,
  rowStore,
  swz,
  tileLoad,
  transpose4,
  type AttentionOptions,
  type Tile,
} from './attention_common.ts';
import { cpuPlan } from './attention_cpu.ts';

/** forward tiles (BR queries, BC keys), best first; workgroup memory BR*HS + BC*HS + BC*BR floats */
const FWD_TILES: readonly Tile[] = [
  { BR: 64, BC: 32 },
  { BR: 32, BC: 32 },
  { BR: 32, BC: 16 },
  { BR: 16, BC: 16 },
];
const fwdBytes = (t: Tile, HS4: number) => 16 * (t.BR * HS4 + t.BC * HS4 + (t.BC * t.BR) / 4);

function forwardWgsl(HS: number, tile: Tile, prefix: boolean): string {
  // KM swizzles the k tile, PM the p^T tile
  const { HS4, BR, BC, RG, CG, NT, NV, KM, PM, acc, col } = queryTile(HS, tile);
  const cols = (f: (i: number) => string) =>
    range(NV)
      .map((i) => col(i, f(i)))
      .join('\n      ');
  const rows = (f: (r: number) => string, sep = '\n    ') => R4.map(f).join(sep);
  return /* wgsl */ `
${header(fwdBindings(prefix), FWD_PARAMS)}
${VEC_HELPERS}
${PACK16}
${KEEP}
${rowLoads(['q', 'k', 'v', 'pk', 'pv'], HS, prefix)}
${rowStore('out', HS)}
var<workgroup> sq: array<vec4<f32>, ${BR * HS4}>;  // q tile * scale*log2(e): [row][d4]
var<workgroup> skv: array<vec4<f32>, ${BC * HS4}>; // k tile [key][d4 ^ (key & ${KM})], then v tile [key][d4]
var<workgroup> sp: array<vec4<f32>, ${BC * RG}>;   // p^T [key][row group ^ (key & ${PM})], 4 rows a vec4; row partials
${queryTileIo('q', 'sq', 'q', HS, 0, ' * p.qscale')}
${keyTileIo('k', 'skv', 'k', 'pk', HS, KM)}
${keyTileIo('v', 'skv', 'v', 'pv', HS, 0)}

@compute @workgroup_size(${NT})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let b = wid.x / p.NH;
  let h = wid.x % p.NH;
  let kvh = h / p.G;
  let q0 = (nwg.y - 1u - wid.y) * ${BR}u;  // latest (longest) query blocks start first
  let rg = tid / ${CG}u;
  let cg = tid % ${CG}u;
  let r0 = q0 + rg * 4u;
  ${queryWindow('q0', BR)}
  ${tileLoad('q', BR * HS4, NT, 'b, h, q0', '')}
  var kend = np + p.T;  // combined keys this block can see
  if (p.causal != 0u) { kend = np + min(p.T, q0 + ${BR}u); }
  var m = vec4<f32>(NEG);   // running max of rows r0..r0+3 (log2 units)
  var l = vec4<f32>(0.0);   // this thread's share of the running sums
  ${acc.map(([r, i]) => `var o${r}${i} = vec4<f32>(0.0);`).join(' ')}
  for (var c0 = 0u; c0 < kend; c0 += ${BC}u) {
    ${tileLoad('k', BC * HS4, NT, 'b, kvh, c0, np, po', 'c0, np')}
    workgroupBarrier();
    ${rows((r) => `var s${r} = vec4<f32>(0.0);`, ' ')}
    for (var d4 = 0u; d4 < ${HS4}u; d4++) {
      let kx = ${swz('d4', 'cg', KM)};
      ${R4.map((j) => `let k${j} = skv[(cg + ${CG * j}u) * ${HS4}u + kx];`).join(' ')}
      ${rows((r) => `let a${r} = sq[(rg * 4u + ${r}u) * ${HS4}u + d4];`, ' ')}
      ${transpose4('k')}
      ${rows((r) => outer(`s${r}`, `a${r}`, 'k'), '\n      ')}
    }
    if (c0 + ${BC}u > np + p.T || (p.causal != 0u && c0 + ${BC}u > np + q0 + 1u) || (c0 < np && np > p.P)) {
      ${R4.map((j) => `let kc${j} = c0 + cg + ${CG * j}u;`).join(' ')}
      ${R4.map((j) => rows((r) => `s${r}.${C4[j]} = select(NEG, s${r}.${C4[j]}, keep(kc${j}, r0 + ${r}u, np, po));`, ' ')).join('\n      ')}
    }
    sp[cg * ${RG}u + rg] = vec4<f32>(hmax(s0), hmax(s1), hmax(s2), hmax(s3));
    workgroupBarrier();  // the k tile is dead
    var mt = m;
    for (var c = 0u; c < ${CG}u; c++) { mt = max(mt, sp[c * ${RG}u + rg]); }
    let alpha = exp2(m - mt);
    m = mt;
    ${rows((r) => `let p${r} = exp2(s${r} - mt.${C4[r]});`, ' ')}
    l = l * alpha + vec4<f32>(hsum(p0), hsum(p1), hsum(p2), hsum(p3));
    ${acc.map(([r, i]) => `o${r}${i} *= alpha.${C4[r]};`).join(' ')}
    ${tileLoad('v', BC * HS4, NT, 'b, kvh, c0, np, po', 'c0, np')}
    workgroupBarrier();  // every thread has read the row maxes: p^T may overwrite them
    ${R4.map((j) => `sp[(cg + ${CG * j}u) * ${RG}u + ${swz('rg', 'cg', PM)}] = vec4<f32>(p0.${C4[j]}, p1.${C4[j]}, p2.${C4[j]}, p3.${C4[j]});`).join('\n    ')}
    workgroupBarrier();
    for (var key = 0u; key < ${BC}u; key++) {
      let w = sp[key * ${RG}u + ${swz('rg', 'key', PM)}];
      ${cols((i) => `let x${i} = skv[key * ${HS4}u + cg + ${CG * i}u]; ${rows((r) => `o${r}${i} += w.${C4[r]} * x${i};`, ' ')}`)}
    }
    workgroupBarrier();
  }
  sp[cg * ${RG}u + rg] = l;
  workgroupBarrier();
  var lt = vec4<f32>(0.0);
  for (var c = 0u; c < ${CG}u; c++) { lt += sp[c * ${RG}u + rg]; }
  let inv = 1.0 / lt;
  // normalized rows go through sq (free now) so that whole rows are stored by all threads
  ${acc.map(([r, i]) => col(i, `sq[(rg * 4u + ${r}u) * ${HS4}u + cg + ${CG * i}u] = o${r}${i} * inv.${C4[r]};`)).join('\n  ')}
  if (cg == 0u) {
    ${rows((r) => `if (r0 + ${r}u < p.T) { lse[(b * p.NH + h) * p.T + r0 + ${r}u] = (m.${C4[r]} + log2(lt.${C4[r]})) * LN2; }`)}
  }
  workgroupBarrier();
  for (var e = tid; e < ${BR * HS4}u; e += ${NT}u) {
    let r = e / ${HS4}u;
    if (q0 + r < p.T) { stv_out(((b * p.T + q0 + r) * p.NH + h) * ${HS}u, e % ${HS4}u, sq[e]); }
  }
}`;
}

/**
 * out = softmax(scale q k^T, causal, prefix first) v; saves lse (B,NH,T), the natural-log
 * logsumexp of each row's scores, for the backward pass.
 */
export async function attentionForward(
  gpu: Gpu,
  o: { out: Tensor; lse: Tensor },
  i: { q: Tensor; k: Tensor; v: Tensor; pk?: Tensor; pv?: Tensor },
  opts: AttentionOptions = {},
): Promise<void> {
  const op = 'attentionForward';
  const s = attentionShape(op, i.q, i.k, i.v, i.pk, i.pv, opts.prefixChunk, opts.prefixLen);
  expectShape(op, 'out', o.out, i.q.shape);
  expectDtype(op, 'out', o.out, DTYPES);
  expectShape(op, 'lse', o.lse, [s.B, s.NH, s.T]);
  expectDtype(op, 'lse', o.lse, ['f32']);
  if (s.B * s.T === 0) return;
  // without a prefix the kernel binds no pk/pv (rowLoadStub); their dtype codes are unused
  const prefix = s.P > 0;
  const pk = i.pk ?? i.k;
  const pv = i.pv ?? i.v;
  const storage = prefix ? [o.out, o.lse, i.q, i.k, i.v, pk, pv] : [o.out, o.lse, i.q, i.k, i.v];
  const values = { ...paramValues(s, opts), ...dtValues(op, { out: o.out, q: i.q, k: i.k, v: i.v, pk, pv }) };
  const S = cpuLanes(gpu);
  if (S !== null) {
    const plan = cpuPlan('forward', s, S);
    await launch(gpu, { ...plan, storage, values: { ...values, ...plan.values } });
    return;
  }
  const tile = pickTile(gpu, op, s.HS, FWD_TILES, fwdBytes);
  await launch(gpu, {
    name: `attention_forward_hs${s.HS}_${tile.BR}x${tile.BC}${prefix ? '' : '_nopre'}`,
    wgsl: wgslOnce(`attention_forward ${s.HS} ${tile.BR} ${tile.BC} ${prefix}`, () => forwardWgsl(s.HS, tile, prefix)),
    storage,
    params: FWD_PARAMS,
    values,
    workgroups: [s.B * s.NH, Math.ceil(s.T / tile.BR)],
  });
}
