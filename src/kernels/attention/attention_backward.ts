// causal self-attention backward, FlashAttention-2 style: scores are recomputed from q, k and
// the saved lse, never stored. three kernels:
//
//   attention_dsum   D (B,NH,T) = sum(dout * out) over HS, one thread per row (scratch, f32)
//   attention_dq     dq (B,T,NH,HS) = scale sum_keys ds k                       (=, overwritten)
//   attention_dkdv   dk, dv (B,T,NKV,HS), dpk, dpv like pk                        (=, overwritten)
//                    dv = sum p dout,  dk = scale sum ds q,  over every query (that sees the
//                    key: a chunked prefix's block c, the queries of chunk c) of every head of
//                    the kv head's group.   p = exp(s - lse), ds = p (dout . v - D)
//
// no float atomics: each output element has exactly one writer. dq is parallel over query
// blocks (one workgroup per (b, h, BR queries), looping over the visible key tiles, like the
// forward); dk/dv are parallel over key blocks (one workgroup per (b, kv head, BC combined
// keys), looping over the NH/NKV query heads of the group and the query tiles that can see the
// block). so results are deterministic, and causal work is skipped in both kernels.
// chunked prefix (attention_common.ts): a dq block straddling chunks sees the blocks of every
// chunk it spans, masked per row, as in the forward; a dk/dv block walks only the queries of
// the chunks of its prefix rows (from its first chunk's first query, rounded down to a query
// tile, to its last chunk's end; to T when it also holds sequence keys), masked per query.
//
// dq thread mapping: as the forward: thread (rg, cg) owns query rows rg*4..+3 and keys
// cg + CG*j of the tile for s and dp = dout v^T (4x4 register tiles); ds goes to workgroup
// memory transposed (it replaces the v tile) and the thread accumulates column slices of dq.
// dk/dv thread mapping: thread (kg, qg) owns keys kg*4..+3 and queries qg + QG*j of a query
// tile for s^T and dp^T; p^T and ds^T go to workgroup memory and the thread accumulates column
// slices qg, qg+QG, ... of its 4 keys' dk and dv in registers for the whole sweep. the next
// query tile is fetched into registers while the current one is used (3 barriers a tile): with
// only 64 threads a workgroup, this halved the kernel's time on an H100 (it did not pay in the
// forward or dq kernels, which wait on their k/v tiles directly).
// numerics: f32 throughout; q is staged times scale*log2(e), so p = exp2(s' - lse*log2(e)) and
// dk = ln(2) * sum ds q'. padded queries (t >= T) load as zeros and are masked.
// on a CPU adapter (gpu.cpu) dq and dk/dv run the row-per-thread kernels of attention_cpu.ts
// (same bindings and uniforms); attention_dsum serves both mappings.

import type { Gpu } from '../../gpu/device.ts';
import { DTYPES } from '../../gpu/dtype.ts';
import { ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { cpuLanes, expectDtype, expectShape, grid1d, header, launch, type ParamSpec, wgslOnce } from '../kernel.ts';
import {
  C4,
  DKV_PARAMS,
  DQ_PARAMS,
  KEEP,
  PACK16,
  PARAMS,
  R4,
  VEC_HELPERS,
  attentionShape,
  dkvBindings,
  dkvStores,
  dqBindings,
  dtParams,
  dtValues,
  keyQueries,
  keyTileIo,
  outer,
  paramValues,
  pickTile,
  pow2Divisor,
  queryTile,
  queryTileIo,
  queryWindow,
  range,
  raw,
  rowLoad,
  rowLoads,
  rowStore,
  swz,
  tileLoad,
  tileRegs,
  transpose4,
  type AttentionOptions,
  type Tile,
} from './attention_common.ts';
import { cpuPlan } from './attention_cpu.ts';

const F32_RW = (name: string) => ({ name, type: 'f32', access: 'read_write' }) as const;

// ---------------------------------------------------------------- D = rowsum(dout * out)

const DSUM_WG = 64;
const DSUM_PARAMS: ParamSpec = [...PARAMS, ['rows', 'u32'], ...dtParams(['dout', 'out'])];

function dsumWgsl(HS: number): string {
  return /* wgsl */ `
${header([F32_RW('dsum'), raw('dout'), raw('out')], DSUM_PARAMS)}
${PACK16}
${rowLoad('dout', HS)}
${rowLoad('out', HS)}
@compute @workgroup_size(${DSUM_WG})
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let r = g.x + g.y * nwg.x * ${DSUM_WG}u;  // row (b, t, h)
  if (r >= p.rows) { return; }
  var s = 0.0;
  for (var d4 = 0u; d4 < ${Math.ceil(HS / 4)}u; d4++) { s += dot(ldv_dout(r * ${HS}u, d4), ldv_out(r * ${HS}u, d4)); }
  let bt = r / p.NH;
  dsum[((bt / p.T) * p.NH + r % p.NH) * p.T + bt % p.T] = s;
}`;
}

// ---------------------------------------------------------------- dq

/** dq tiles (BR queries, BC keys); workgroup memory 2*BR*HS + BC*HS + max(BC*HS, BC*BR) floats */
const DQ_TILES: readonly Tile[] = [
  { BR: 64, BC: 32 },
  { BR: 32, BC: 32 },
  { BR: 32, BC: 16 },
  { BR: 16, BC: 16 },
];
const dqBytes = (t: Tile, HS4: number) => 16 * (2 * t.BR * HS4 + t.BC * HS4 + Math.max(t.BC * HS4, (t.BC * t.BR) / 4));

function dqWgsl(HS: number, tile: Tile, prefix: boolean): string {
  // KM swizzles the k and v tiles, PM the ds^T tile
  const { HS4, BR, BC, RG, CG, NT, NV, KM, PM, acc, col } = queryTile(HS, tile);
  return /* wgsl */ `
${header(dqBindings(prefix), DQ_PARAMS)}
${VEC_HELPERS}
${PACK16}
${KEEP}
${rowLoads(['q', 'k', 'v', 'pk', 'pv', 'dout'], HS, prefix)}
${rowStore('dq', HS)}
var<workgroup> sq: array<vec4<f32>, ${BR * HS4}>;   // q tile * scale*log2(e): [row][d4]
var<workgroup> sdo: array<vec4<f32>, ${BR * HS4}>;  // dout tile [row][d4]
var<workgroup> sk: array<vec4<f32>, ${BC * HS4}>;   // k tile [key][d4 ^ (key & ${KM})]
var<workgroup> svs: array<vec4<f32>, ${Math.max(BC * HS4, (BC * BR) / 4)}>;  // v tile like k, then ds^T [key][row group ^ (key & ${PM})]
${queryTileIo('q', 'sq', 'q', HS, 0, ' * p.qscale')}
${queryTileIo('do', 'sdo', 'dout', HS, 0)}
${keyTileIo('k', 'sk', 'k', 'pk', HS, KM)}
${keyTileIo('v', 'svs', 'v', 'pv', HS, KM)}

@compute @workgroup_size(${NT})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let b = wid.x / p.NH;
  let h = wid.x % p.NH;
  let kvh = h / p.G;
  let q0 = (nwg.y - 1u - wid.y) * ${BR}u;  // longest query blocks start first
  let rg = tid / ${CG}u;
  let cg = tid % ${CG}u;
  let r0 = q0 + rg * 4u;
  ${queryWindow('q0', BR)}
  ${tileLoad('q', BR * HS4, NT, 'b, h, q0', '')}
  ${tileLoad('do', BR * HS4, NT, 'b, h, q0', '')}
  var lq = vec4<f32>(0.0);  // lse * log2(e) of rows r0..r0+3
  var dd = vec4<f32>(0.0);  // D of rows r0..r0+3
  ${R4.map((r) => `if (r0 + ${r}u < p.T) { lq.${C4[r]} = lse[(b * p.NH + h) * p.T + r0 + ${r}u] * LOG2E; dd.${C4[r]} = dsum[(b * p.NH + h) * p.T + r0 + ${r}u]; }`).join('\n  ')}
  var kend = np + p.T;
  if (p.causal != 0u) { kend = np + min(p.T, q0 + ${BR}u); }
  ${acc.map(([r, i]) => `var g${r}${i} = vec4<f32>(0.0);`).join(' ')}
  for (var c0 = 0u; c0 < kend; c0 += ${BC}u) {
    ${tileLoad('k', BC * HS4, NT, 'b, kvh, c0, np, po', 'c0, np')}
    ${tileLoad('v', BC * HS4, NT, 'b, kvh, c0, np, po', 'c0, np')}
    workgroupBarrier();
    ${R4.map((r) => `var s${r} = vec4<f32>(0.0); var e${r} = vec4<f32>(0.0);`).join(' ')}
    for (var d4 = 0u; d4 < ${HS4}u; d4++) {
      let kx = ${swz('d4', 'cg', KM)};
      ${R4.map((j) => `let k${j} = sk[(cg + ${CG * j}u) * ${HS4}u + kx]; let v${j} = svs[(cg + ${CG * j}u) * ${HS4}u + kx];`).join('\n      ')}
      ${R4.map((r) => `let a${r} = sq[(rg * 4u + ${r}u) * ${HS4}u + d4]; let o${r} = sdo[(rg * 4u + ${r}u) * ${HS4}u + d4];`).join('\n      ')}
      ${transpose4('k')}
      ${transpose4('v')}
      ${R4.map((r) => `${outer(`s${r}`, `a${r}`, 'k')}\n      ${outer(`e${r}`, `o${r}`, 'v')}`).join('\n      ')}
    }
    ${R4.map((r) => `var p${r} = exp2(s${r} - lq.${C4[r]});`).join(' ')}
    if (c0 + ${BC}u > np + p.T || (p.causal != 0u && c0 + ${BC}u > np + q0 + 1u) || (c0 < np && np > p.P)) {
      ${R4.map((j) => `let kc${j} = c0 + cg + ${CG * j}u;`).join(' ')}
      ${R4.map((j) => R4.map((r) => `p${r}.${C4[j]} = select(0.0, p${r}.${C4[j]}, keep(kc${j}, r0 + ${r}u, np, po));`).join(' ')).join('\n      ')}
    }
    ${R4.map((r) => `let ds${r} = p${r} * (e${r} - dd.${C4[r]});`).join(' ')}
    workgroupBarrier();  // the v tile is dead
    ${R4.map((j) => `svs[(cg + ${CG * j}u) * ${RG}u + ${swz('rg', 'cg', PM)}] = vec4<f32>(ds0.${C4[j]}, ds1.${C4[j]}, ds2.${C4[j]}, ds3.${C4[j]});`).join('\n    ')}
    workgroupBarrier();
    for (var key = 0u; key < ${BC}u; key++) {
      let w = svs[key * ${RG}u + ${swz('rg', 'key', PM)}];
      ${range(NV)
        .map((i) => col(i, `let x${i} = sk[key * ${HS4}u + ${swz(`cg + ${CG * i}u`, 'key', KM)}]; ${R4.map((r) => `g${r}${i} += w.${C4[r]} * x${i};`).join(' ')}`))
        .join('\n      ')}
    }
    workgroupBarrier();
  }
  // dq rows go through sq (free now) so that whole rows are stored by all threads
  ${acc.map(([r, i]) => col(i, `sq[(rg * 4u + ${r}u) * ${HS4}u + cg + ${CG * i}u] = g${r}${i} * p.scale;`)).join('\n  ')}
  workgroupBarrier();
  for (var e = tid; e < ${BR * HS4}u; e += ${NT}u) {
    let r = e / ${HS4}u;
    if (q0 + r < p.T) { stv_dq(((b * p.T + q0 + r) * p.NH + h) * ${HS}u, e % ${HS4}u, sq[e]); }
  }
}`;
}

// ---------------------------------------------------------------- dk, dv

/** dk/dv tiles (BR keys, BC queries); workgroup memory 2*BR*HS + 2*BC*HS + 2*BR*BC floats */
const DKV_TILES: readonly Tile[] = [
  { BR: 32, BC: 32 },
  { BR: 32, BC: 16 },
  { BR: 16, BC: 32 },
  { BR: 16, BC: 16 },
  { BR: 16, BC: 8 },
];
const dkvBytes = (t: Tile, HS4: number) => 16 * (2 * t.BR * HS4 + 2 * t.BC * HS4 + (2 * t.BR * t.BC) / 4) + 8 * t.BC;

function dkdvWgsl(HS: number, tile: Tile, prefix: boolean): string {
  const HS4 = Math.ceil(HS / 4);
  const { BR: BK, BC: BQ } = tile;
  const KG = BK / 4;
  const QG = BQ / 4;
  const NT = KG * QG;
  const NV = Math.ceil(HS4 / QG);
  const QM = Math.min(QG, pow2Divisor(HS4)) - 1; // q and dout tile swizzle
  const XM = Math.min(QG, KG) - 1; // p^T / ds^T swizzle
  const acc = R4.flatMap((r) => range(NV).map((i) => [r, i] as const));
  const col = (i: number, s: string) => ((i + 1) * QG > HS4 ? `if (qg + ${QG * i}u < ${HS4}u) { ${s} }` : s);
  const X = BQ * KG; // offset of ds^T in sx
  const qr = tileRegs('q', BQ * HS4, NT);
  const dr = tileRegs('do', BQ * HS4, NT);
  // fetch the q, dout, lse and D of pass iteration `it` into registers
  const fetch = (it: string) => `{
    let h = kvh * p.G + (${it}) / nt;
    let t0 = tstart + ((${it}) % nt) * ${BQ}u;
    ${qr.fetch('b, h, t0')} ${dr.fetch('b, h, t0')}
    wl = 0.0;
    wd = 0.0;
    if (tid < ${BQ}u && t0 + tid < p.T) { wl = lse[(b * p.NH + h) * p.T + t0 + tid] * LOG2E; wd = dsum[(b * p.NH + h) * p.T + t0 + tid]; }
  }`;
  return /* wgsl */ `
${header(dkvBindings(prefix), DKV_PARAMS)}
${VEC_HELPERS}
${PACK16}
${KEEP}
${rowLoads(['q', 'k', 'v', 'pk', 'pv', 'dout'], HS, prefix)}
${dkvStores(HS, prefix)}
var<workgroup> sk: array<vec4<f32>, ${BK * HS4}>;   // k block [key][d4]
var<workgroup> sv: array<vec4<f32>, ${BK * HS4}>;   // v block [key][d4]
var<workgroup> sq: array<vec4<f32>, ${BQ * HS4}>;   // q tile * scale*log2(e): [query][d4 ^ (query & ${QM})]
var<workgroup> sdo: array<vec4<f32>, ${BQ * HS4}>;  // dout tile, like q
var<workgroup> sx: array<vec4<f32>, ${2 * X}>;      // p^T then ds^T: [query][key group ^ (query & ${XM})], 4 keys a vec4
var<workgroup> sl: array<f32, ${BQ}>;               // lse * log2(e) of the tile's queries
var<workgroup> sd: array<f32, ${BQ}>;               // D of the tile's queries
${keyTileIo('k', 'sk', 'k', 'pk', HS, 0)}
${keyTileIo('v', 'sv', 'v', 'pv', HS, 0)}
${queryTileIo('q', 'sq', 'q', HS, QM, ' * p.qscale', true)}
${queryTileIo('do', 'sdo', 'dout', HS, QM, '', true)}

@compute @workgroup_size(${NT})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
  let b = wid.x / p.NKV;
  let kvh = wid.x % p.NKV;
  let c0 = wid.y * ${BK}u;  // first combined key of the block
  let kg = tid / ${QG}u;
  let qg = tid % ${QG}u;
  let k0 = c0 + kg * 4u;    // first key of this thread
  let np = p.PR;  // combined keys: the whole of pk, then the sequence
  let po = 0u;
  ${tileLoad('k', BK * HS4, NT, 'b, kvh, c0, np, po', 'c0, np')}
  ${tileLoad('v', BK * HS4, NT, 'b, kvh, c0, np, po', 'c0, np')}
  ${acc.map(([r, i]) => `var dk${r}${i} = vec4<f32>(0.0); var dv${r}${i} = vec4<f32>(0.0);`).join('\n  ')}
  // the queries that can see a key of this block, tstart rounded down to a tile
  ${keyQueries('c0', BK, BQ)}
  let nt = (tend - tstart + ${BQ - 1}u) / ${BQ}u;  // query tiles per head
  // one pass over n = G * nt steps (head of the group, query tile). iteration it stages the
  // words fetched by iteration it-1, starts fetching step it's q, dout, lse and D into
  // registers (raw words), and works on step it-1 meanwhile: the global latency hides behind
  // the math, and the fetch code exists once (lavapipe compiles unrolled loads slowly)
  ${qr.decl} ${dr.decl}
  var wl = 0.0;
  var wd = 0.0;
  let n = p.G * nt;
  for (var it = 0u; it <= n; it++) {
    if (it > 0u) {
      ${qr.put('')} ${dr.put('')}
      if (tid < ${BQ}u) { sl[tid] = wl; sd[tid] = wd; }
    }
    workgroupBarrier();
    if (it < n) { ${fetch('it')} }
    if (it == 0u) { continue; }
    let t0 = tstart + ((it - 1u) % nt) * ${BQ}u;
    ${R4.map((r) => `var s${r} = vec4<f32>(0.0); var e${r} = vec4<f32>(0.0);`).join(' ')}
    for (var d4 = 0u; d4 < ${HS4}u; d4++) {
      let qx = ${swz('d4', 'qg', QM)};
      ${R4.map((j) => `let k${j} = sq[(qg + ${QG * j}u) * ${HS4}u + qx]; let v${j} = sdo[(qg + ${QG * j}u) * ${HS4}u + qx];`).join('\n        ')}
      ${R4.map((r) => `let a${r} = sk[(kg * 4u + ${r}u) * ${HS4}u + d4]; let o${r} = sv[(kg * 4u + ${r}u) * ${HS4}u + d4];`).join('\n        ')}
      ${transpose4('k')}
      ${transpose4('v')}
      ${R4.map((r) => `${outer(`s${r}`, `a${r}`, 'k')}\n        ${outer(`e${r}`, `o${r}`, 'v')}`).join('\n        ')}
    }
    let lq = vec4<f32>(${R4.map((j) => `sl[qg + ${QG * j}u]`).join(', ')});
    let dd = vec4<f32>(${R4.map((j) => `sd[qg + ${QG * j}u]`).join(', ')});
    ${R4.map((r) => `var p${r} = exp2(s${r} - lq);`).join(' ')}
    if (t0 + ${BQ}u > p.T || (p.causal != 0u && c0 + ${BK}u > np + t0 + 1u) || (p.PC != 0u && c0 < np)) {
      ${R4.map((j) => `let tq${j} = t0 + qg + ${QG * j}u;`).join(' ')}
      ${R4.map((r) => R4.map((j) => `p${r}.${C4[j]} = select(0.0, p${r}.${C4[j]}, tq${j} < p.T && keep(k0 + ${r}u, tq${j}, np, po));`).join(' ')).join('\n        ')}
    }
    ${R4.map((r) => `let ds${r} = p${r} * (e${r} - dd);`).join(' ')}
    ${R4.map((j) => {
      const at = `(qg + ${QG * j}u) * ${KG}u + ${swz('kg', 'qg', XM)}`;
      const v = (n: string) => `vec4<f32>(${R4.map((r) => `${n}${r}.${C4[j]}`).join(', ')})`;
      return `sx[${at}] = ${v('p')}; sx[${X}u + ${at}] = ${v('ds')};`;
    }).join('\n      ')}
    workgroupBarrier();
    for (var t = 0u; t < ${BQ}u; t++) {
      let xi = t * ${KG}u + ${swz('kg', 't', XM)};
      let w = sx[xi];
      let z = sx[${X}u + xi];
      ${range(NV)
        .map((i) =>
          col(
            i,
            `let at${i} = t * ${HS4}u + ${swz(`qg + ${QG * i}u`, 't', QM)}; let y${i} = sdo[at${i}]; let x${i} = sq[at${i}]; ` +
              R4.map((r) => `dv${r}${i} += w.${C4[r]} * y${i}; dk${r}${i} += z.${C4[r]} * x${i};`).join(' '),
          ),
        )
        .join('\n        ')}
    }
    workgroupBarrier();
  }
  // dk and dv go through the k and v tiles (free now) so that whole rows are stored by all threads
  ${acc.map(([r, i]) => col(i, `sk[(kg * 4u + ${r}u) * ${HS4}u + qg + ${QG * i}u] = dk${r}${i} * LN2; sv[(kg * 4u + ${r}u) * ${HS4}u + qg + ${QG * i}u] = dv${r}${i};`)).join('\n  ')}
  workgroupBarrier();
  for (var e = tid; e < ${BK * HS4}u; e += ${NT}u) {
    let c = c0 + e / ${HS4}u;
    let d4 = e % ${HS4}u;
    if (c < np) {
      let base = ((b * p.PR + c) * p.NKV + kvh) * ${HS}u;
      stv_dpk(base, d4, sk[e]);
      stv_dpv(base, d4, sv[e]);
    } else if (c - np < p.T) {
      let base = ((b * p.T + c - np) * p.NKV + kvh) * ${HS}u;
      stv_dk(base, d4, sk[e]);
      stv_dv(base, d4, sv[e]);
    }
  }
}`;
}

/**
 * Gradients of attentionForward: dq, dk, dv and (with a prefix) dpk, dpv, all overwritten.
 * dk/dv (and dpk/dpv) sum over every query and every query head sharing the kv head.
 */
export async function attentionBackward(
  gpu: Gpu,
  o: { dq: Tensor; dk: Tensor; dv: Tensor; dpk?: Tensor; dpv?: Tensor },
  i: { dout: Tensor; q: Tensor; k: Tensor; v: Tensor; pk?: Tensor; pv?: Tensor; out: Tensor; lse: Tensor },
  opts: AttentionOptions = {},
): Promise<void> {
  const op = 'attentionBackward';
  if (opts.prefixLen !== undefined) throw new ShapeError(`${op}: prefixLen is for the forward (inference with a KV cache); give the backward pk/pv of exactly the prefix's rows`);
  const s = attentionShape(op, i.q, i.k, i.v, i.pk, i.pv, opts.prefixChunk);
  for (const [n, t, like] of [
    ['dout', i.dout, i.q],
    ['out', i.out, i.q],
    ['dq', o.dq, i.q],
    ['dk', o.dk, i.k],
    ['dv', o.dv, i.k],
  ] as const) {
    expectShape(op, n, t, like.shape);
    expectDtype(op, n, t, DTYPES);
  }
  expectShape(op, 'lse', i.lse, [s.B, s.NH, s.T]);
  expectDtype(op, 'lse', i.lse, ['f32']);
  if (s.P > 0) {
    if (!o.dpk || !o.dpv) throw new ShapeError(`${op}: a prefix pk ${i.pk} needs dpk and dpv gradients`);
    expectShape(op, 'dpk', o.dpk, i.pk!.shape);
    expectShape(op, 'dpv', o.dpv, i.pk!.shape);
    expectDtype(op, 'dpk', o.dpk, DTYPES);
    expectDtype(op, 'dpv', o.dpv, DTYPES);
  }
  if (s.B * s.T === 0) return;
  const { HS } = s;
  const values = paramValues(s, opts);
  // without a prefix the kernels bind no pk, pv, dpk, dpv (rowLoadStub, rowStoreStub): 7 and 8
  // storage buffers, within what browsers allow; their dtype codes are unused
  const prefix = s.P > 0;
  const pk = i.pk ?? i.k;
  const pv = i.pv ?? i.v;
  const dpk = o.dpk ?? o.dk;
  const dpv = o.dpv ?? o.dv;
  const nopre = prefix ? '' : '_nopre';
  const dsum = gpu.scratch.take([s.B, s.NH, s.T], 'f32', 'attention_dsum');
  try {
    const rows = s.B * s.T * s.NH;
    const dsumName = `attention_dsum_hs${HS}`;
    await launch(gpu, {
      name: dsumName,
      wgsl: wgslOnce(dsumName, () => dsumWgsl(HS)),
      storage: [dsum, i.dout, i.out],
      params: DSUM_PARAMS,
      values: { ...values, rows, ...dtValues(op, { dout: i.dout, out: i.out }) },
      workgroups: grid1d(gpu, Math.ceil(rows / DSUM_WG)),
    });
    const dqStorage = prefix ? [o.dq, i.q, i.k, i.v, pk, pv, i.dout, i.lse, dsum] : [o.dq, i.q, i.k, i.v, i.dout, i.lse, dsum];
    const dqValues = { ...values, ...dtValues(op, { dq: o.dq, q: i.q, k: i.k, v: i.v, pk, pv, dout: i.dout }) };
    const dkvStorage = prefix
      ? [o.dk, o.dv, dpk, dpv, i.q, i.k, i.v, pk, pv, i.dout, i.lse, dsum]
      : [o.dk, o.dv, i.q, i.k, i.v, i.dout, i.lse, dsum];
    const dkvValues = { ...values, ...dtValues(op, { dk: o.dk, dv: o.dv, dpk, dpv, q: i.q, k: i.k, v: i.v, pk, pv, dout: i.dout }) };
    const S = cpuLanes(gpu);
    if (S !== null) {
      // the CPU mappings (attention_cpu.ts): the same bindings and uniforms, plus their own
      const dq = cpuPlan('dq', s, S);
      await launch(gpu, { ...dq, storage: dqStorage, values: { ...dqValues, ...dq.values } });
      const dkv = cpuPlan('dkdv', s, S);
      await launch(gpu, { ...dkv, storage: dkvStorage, values: { ...dkvValues, ...dkv.values } });
      return;
    }
    const tq = pickTile(gpu, op, HS, DQ_TILES, dqBytes);
    const dqName = `attention_dq_hs${HS}_${tq.BR}x${tq.BC}${nopre}`;
    await launch(gpu, {
      name: dqName,
      wgsl: wgslOnce(dqName, () => dqWgsl(HS, tq, prefix)),
      storage: dqStorage,
      params: DQ_PARAMS,
      values: dqValues,
      workgroups: [s.B * s.NH, Math.ceil(s.T / tq.BR)],
    });
    const tk = pickTile(gpu, op, HS, DKV_TILES, dkvBytes);
    const dkdvName = `attention_dkdv_hs${HS}_${tk.BR}x${tk.BC}${nopre}`;
    await launch(gpu, {
      name: dkdvName,
      wgsl: wgslOnce(dkdvName, () => dkdvWgsl(HS, tk, prefix)),
      storage: dkvStorage,
      params: DKV_PARAMS,
      values: dkvValues,
      workgroups: [s.B * s.NKV, Math.ceil((s.PR + s.T) / tk.BR)],
    });
  } finally {
    dsum.dispose();
  }
}
