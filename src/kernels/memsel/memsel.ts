// Memory³ token sparsification (spec memory3.md §1): which tokens of each encoded reference
// become its explicit memory, per KV head, batched over references. selection only: discrete,
// no backward.
//
//   forward  indices (B,Hkv,K) u32 = per (b, g) the K valid positions j with the largest
//                                    ln w_j, descending, ties -> lower j                    (=)
//            scores  (B,Hkv,T) f32 = ln w_j at valid j, -inf elsewhere (optional output)     (=)
//            ln w_j = ln sum_{i valid} sum_{h in heads(g)} exp(scale q[b,i,h] . k[b,j,g])
//   q (B,T,H,d) f32/f16/bf16 (pre-RoPE), k (B,T,Hkv,d) f32/f16/bf16 (pre-RoPE),
//   start (B) u32: first valid position (the prefix length), length (B) u32: one past the last.
//
// spec choices:
//   - valid positions of reference b: [st, end) with end = min(length[b], T), st = min(start[b],
//     end). the "Reference:" prefix and the padding neither score (as queries i) nor are scored
//     (as keys j): both sums and the candidates run over [st, end) only.
//   - fewer than K valid positions: the slots past them hold 0xffffffff (no token).
//   - GQA (the paper does not say): group 'sum' (default) sums over the G = H/Hkv query heads
//     g*G .. g*G+G-1 that share KV head g; 'first' uses only query head g*G.
//   - the paper's approximation w_j = sum_i exp(q_i . k_j / sqrt(d)): no softmax normalization
//     over j, no causal mask, no RoPE in the score. scale defaults to 1/sqrt(d).
//   - a NaN ln w ranks as -inf (below every number; still selected before the "no token" slots).
//
// GPU thread mapping: a workgroup per (b, g) (a 2-D grid past 65535), NT = 32*ceil(T/32)
// threads; thread j owns key j. the (head, query) rows of the group, nh*(end-st) of them (nh = G
// or 1), go through workgroup memory in tiles of QT = 16 rows, pre-multiplied by
// scale*log2(e); each thread dots its key with the QT rows (broadcast reads, QT vec4
// accumulators) and folds them into its online log-sum-exp (one rescale per tile). the thread
// re-reads its k row for every tile (L1-resident: the (b, g) slice is T*d values) instead of
// holding it across the barriers: lavapipe's compile time blew up with the row live across
// them. the ln w then go to workgroup memory as order
// keys (topk.ts's order_key: unsigned order = float order), and every valid thread counts its
// rank among the valid keys by (key desc, j asc), a total order: the ranks are distinct and the
// thread of rank r < K writes slot r. st and end come through workgroupUniformLoad (the barriers
// need them uniform even where start/length share a buffer with an output and are bound
// read_write). workgroup memory: 16 QT d/4 + 4 NT + 8 bytes (9 KiB at d=128, T=256).
// CPU mapping (gpu.cpu and a fixed subgroup size S, cpuLanes(); pipeline names end in _cpu): no
// workgroup memory, no barriers. a workgroup is one subgroup of S lanes per (b, g); the lanes
// walk the valid keys S*R at a time (R = CPU_KEYS = 4), lane l owning keys jb + r*S + l (their k
// rows in registers); for each head of the group and each chunk of S queries, lane l loads
// query i0+l's row and subgroupBroadcast hands every row to every lane, where it serves the
// lane's R keys (d/S loads and d/4 shuffles per lane per query row for R d fma's). each lane
// keeps its best Kp = nextPow2(K) keys sorted in registers (topk.ts's insertion chain; a lane's
// keys come in increasing j, so a strict > keeps ties in index order); at the end K rounds of
// subgroupMax / subgroupMin merge the S lists: the best head (key desc, j asc) is written and
// its lane pops it. requires subgroups of a fixed size 4, 8 or 16; else the GPU mapping runs.
// numerics: f32 accumulation; online log-sum-exp in log2 units with a running max (scores of
// masked rows are -3e38: exp2 gives exactly 0); ln w = (m + log2(l)) ln 2. the two mappings sum
// in different orders, so their ln w may differ in the last bits (and near-ties may then swap).
// no atomics; every output element has one writer: deterministic.
// limits: 1 <= T <= 256, d even in 2..128, 1 <= K <= 32.

import type { Gpu } from '../../gpu/device.ts';
import { LimitError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { MAX_HS, PACK16, VEC_HELPERS, dtParams, dtValues, range, raw, rowLoad } from '../attention/attention_common.ts';
import { cpuLanes, expectDisjoint, expectDtype, expectShape, floatDtype, grid1d, header, launch, type BindingDecl, type ParamSpec } from '../kernel.ts';
import { ORDER_KEY_WGSL, heldDeclsWgsl, insertChainWgsl, nextPow2, type HeldField } from '../topk/topk.ts';

/** longest sequence (reference plus prefix) a workgroup handles */
export const MEMSEL_MAX_T = 256;
/** most tokens kept per (reference, KV head) */
export const MEMSEL_MAX_K = 32;
/** the "no token" index of slots past the valid positions */
export const MEMSEL_NONE = 0xffffffff;

export type MemselGroup = 'sum' | 'first';

export interface MemselOptions {
  /** score scale; default 1/sqrt(d) */
  scale?: number;
  /** how the query heads sharing a KV head combine: 'sum' over the group (default) or only the 'first' */
  group?: MemselGroup;
}

/** (head, query) rows per tile of the GPU mapping */
const QT = 16;
/**
 * keys per lane of the CPU mapping: the query rows a lane loads and broadcasts serve R keys, so
 * more keys mean fewer loads and shuffles per fma (and S*R keys per step: short references
 * leave lanes idle). 4 was the fastest of 1, 2, 4 and 8 in a rough timing on lavapipe (8 was
 * no faster and doubled the compile time).
 */
const CPU_KEYS = 4;

const PARAMS: ParamSpec = [
  ['BG', 'u32'], // B * Hkv workgroups
  ['T', 'u32'],
  ['H', 'u32'],
  ['HKV', 'u32'],
  ['G', 'u32'], // H / Hkv
  ['NHG', 'u32'], // query heads per group used: G ('sum') or 1 ('first')
  ['K', 'u32'],
  ['slots', 'u32'], // ceil(d/4), the bound of the CPU mapping's rolled row loops
  ['qscale', 'f32'], // scale * log2(e)
  ...dtParams(['q', 'k']),
];

// scores are stored as raw bits (-inf is not a WGSL constant)
const BINDINGS: readonly BindingDecl[] = [
  { name: 'indices', type: 'u32', access: 'read_write' },
  { name: 'scores', type: 'u32', access: 'read_write' },
  raw('q'),
  raw('k'),
  { name: 'start', type: 'u32', access: 'read' },
  { name: 'length', type: 'u32', access: 'read' },
];

const preamble = (HS: number) => /* wgsl */ `
${header(BINDINGS, PARAMS)}
${VEC_HELPERS}
${PACK16}
${ORDER_KEY_WGSL}
${rowLoad('q', HS)}
${rowLoad('k', HS)}
const NONE = ${MEMSEL_NONE}u;
const NEG_INF = 0xff800000u;`;

/** WGSL: the sum over the slots of fma(a(d), b(d)), horizontally added */
const dot = (a: (d: number) => string, b: (d: number) => string, HS4: number): string => {
  const [first, ...rest] = range(HS4);
  return `hsum(${rest.reduce((acc, d) => `fma(${a(d)}, ${b(d)}, ${acc})`, `${a(first!)} * ${b(first!)}`)})`;
};

/** WGSL: fold the n scores sc(0..n-1) (log2 units) into the running max `m` and sum `l` */
const lseUpdate = (n: number, sc: (i: number) => string, m = 'm', l = 'l'): string => {
  const J = range(n);
  return `{
      let mx = max(${m}, ${J.slice(1).reduce((a, i) => `max(${a}, ${sc(i)})`, sc(0))});
      ${l} = ${l} * exp2(${m} - mx) + ${J.map((i) => `exp2(${sc(i)} - mx)`).join(' + ')};
      ${m} = mx;
    }`;
};

function gpuWgsl(HS: number, NT: number): string {
  const HS4 = Math.ceil(HS / 4);
  const R = range(QT);
  return /* wgsl */ `${preamble(HS)}
var<workgroup> sq: array<vec4<f32>, ${QT * HS4}>;  // tile of (head, query) rows * qscale: [row][d4]
var<workgroup> keys: array<u32, ${NT}>;           // order keys of ln w, by position
var<workgroup> bounds: vec2<u32>;

@compute @workgroup_size(${NT})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) j: u32) {
  let bg = wid.x + wid.y * nwg.x;
  if (bg >= p.BG) { return; }  // grid padding; uniform per workgroup
  let b = bg / p.HKV;
  let g = bg % p.HKV;
  if (j == 0u) {
    let e = min(length[b], p.T);
    bounds = vec2<u32>(min(start[b], e), e);
  }
  let se = workgroupUniformLoad(&bounds);
  let st = se.x;
  let end = se.y;
  let n = end - st;
  let jv = j >= st && j < end;
  let kb = ((b * p.T + min(j, p.T - 1u)) * p.HKV + g) * ${HS}u;
  var m = NEG;  // running max (log2 units)
  var l = 0.0;  // running sum of exp2(s - m)
  let rows = p.NHG * n;  // row r: head g*G + r/n, query st + r%n
  for (var r0 = 0u; r0 < rows; r0 += ${QT}u) {
    for (var e = j; e < ${QT * HS4}u; e += ${NT}u) {
      let r = r0 + e / ${HS4}u;
      var v = vec4<f32>(0.0);
      if (r < rows) {
        v = ldv_q(((b * p.T + st + r % n) * p.H + g * p.G + r / n) * ${HS}u, e % ${HS4}u) * p.qscale;
      }
      sq[e] = v;
    }
    workgroupBarrier();
    let nr = rows - r0;
    ${R.map((r) => `var a${r} = vec4<f32>(0.0);`).join(' ')}
    for (var d4 = 0u; d4 < ${HS4}u; d4++) {
      let kv = ldv_k(kb, d4);
      ${R.map((r) => `a${r} = fma(sq[${r * HS4}u + d4], kv, a${r});`).join(' ')}
    }
    ${R.map((r) => `let s${r} = select(NEG, hsum(a${r}), ${r}u < nr);`).join(' ')}
    ${lseUpdate(QT, (r) => `s${r}`)}
    workgroupBarrier();  // the tile is dead
  }
  let lw = (m + log2(l)) * LN2;
  if (j < p.T) { scores[bg * p.T + j] = select(NEG_INF, bitcast<u32>(lw), jv); }
  let key = order_key(bitcast<u32>(lw));
  keys[j] = key;
  workgroupBarrier();
  if (jv) {
    var rank = 0u;
    for (var j2 = st; j2 < end; j2++) {
      let k2 = keys[j2];
      rank += select(0u, 1u, k2 > key || (k2 == key && j2 < j));
    }
    if (rank < p.K) { indices[bg * p.K + rank] = j; }
  }
  if (j >= n && j < p.K) { indices[bg * p.K + j] = NONE; }
}`;
}

function cpuWgsl(HS: number, S: number, Kp: number, R: number): string {
  const HS4 = Math.ceil(HS / 4);
  const D = range(HS4);
  const Rs = range(R);
  const fields = (r: number): HeldField[] => [
    { reg: 'hk', pad: '0u', cand: `key${r}` },
    { reg: 'hi', pad: 'NONE', cand: `j${r}` },
  ];
  // pop the head of the held list where `pop`: every entry moves up one, padding enters at the end
  const pop = range(Kp)
    .map((e) =>
      fields(0)
        .map((f) => `${f.reg}${e} = select(${f.reg}${e}, ${e + 1 < Kp ? `${f.reg}${e + 1}` : f.pad}, pop);`)
        .join(' '),
    )
    .join('\n    ');
  // the subgroup ops sit in control flow that is uniform (st and end are loaded at one address
  // by every lane) but that the analysis cannot prove so when start/length end up bound read_write
  return /* wgsl */ `diagnostic(off, subgroup_uniformity);
enable subgroups;
${preamble(HS)}

@compute @workgroup_size(${S})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  let bg = wid.x + wid.y * nwg.x;
  if (bg >= p.BG) { return; }  // grid padding; uniform per workgroup
  let b = bg / p.HKV;
  let g = bg % p.HKV;
  let end = min(length[b], p.T);
  let st = min(start[b], end);
  ${heldDeclsWgsl(Kp, fields(0))}
  var ka: array<vec4<f32>, ${HS4}>;
  var qa: array<vec4<f32>, ${HS4}>;
  for (var jb = st; jb < end; jb += ${S * R}u) {
    ${Rs.map(
      (r) => `let j${r} = jb + ${r * S}u + lane;
    let jv${r} = j${r} < end;  // lanes past the end work on key end-1 and keep nothing
    let kb${r} = ((b * p.T + min(j${r}, end - 1u)) * p.HKV + g) * ${HS}u;
    for (var d = 0u; d < p.slots; d++) { ka[d] = dec(raw_k(kb${r}, d), p.dt_k); }
    ${D.map((d) => `let k${r}_${d} = ka[${d}];`).join(' ')}
    var m${r} = NEG;  // running max (log2 units)
    var l${r} = 0.0;  // running sum of exp2(s - m)`,
    ).join('\n    ')}
    for (var hh = 0u; hh < p.NHG; hh++) {
      let h = g * p.G + hh;
      for (var i0 = st; i0 < end; i0 += ${S}u) {
        let qb = ((b * p.T + min(i0 + lane, end - 1u)) * p.H + h) * ${HS}u;
        for (var d = 0u; d < p.slots; d++) { qa[d] = dec(raw_q(qb, d), p.dt_q) * p.qscale; }
        ${D.map((d) => `let q${d} = qa[${d}];`).join(' ')}
        ${Rs.map((r) => range(S).map((i) => `var s${r}_${i}: f32;`).join(' ')).join('\n        ')}
        ${range(S)
          .map(
            (i) => `{
          let iv = i0 + ${i}u < end;
          ${D.map((d) => `let x${d} = subgroupBroadcast(q${d}, ${i}u);`).join(' ')}
          ${Rs.map((r) => `s${r}_${i} = select(NEG, ${dot((d) => `x${d}`, (d) => `k${r}_${d}`, HS4)}, iv);`).join('\n          ')}
        }`,
          )
          .join('\n        ')}
        ${Rs.map((r) => lseUpdate(S, (i) => `s${r}_${i}`, `m${r}`, `l${r}`)).join('\n        ')}
      }
    }
    ${Rs.map(
      (r) => `let lw${r} = (m${r} + log2(l${r})) * LN2;
    if (jv${r}) { scores[bg * p.T + j${r}] = bitcast<u32>(lw${r}); }
    let key${r} = order_key(bitcast<u32>(lw${r}));
    ${insertChainWgsl(Kp, fields(r), (e) => `jv${r} & (key${r} > hk${e})`)}`,
    ).join('\n    ')}
  }
  for (var j = lane; j < p.T; j += ${S}u) {
    if (j < st || j >= end) { scores[bg * p.T + j] = NEG_INF; }
  }
  // merge the lanes' sorted lists: the best head (key desc, index asc) goes to slot r
  for (var r = 0u; r < p.K; r++) {
    let best = subgroupMax(hk0);
    let bi = subgroupMin(select(NONE, hi0, hk0 == best));
    if (lane == 0u) { indices[bg * p.K + r] = bi; }
    let pop = hi0 == bi;  // one lane (indices are distinct), or only padding left
    ${pop}
  }
}`;
}

interface MemselDims {
  B: number;
  T: number;
  H: number;
  Hkv: number;
  d: number;
  K: number;
}

function checkShapes(op: string, o: { indices: Tensor; scores?: Tensor }, i: { q: Tensor; k: Tensor; start: Tensor; length: Tensor }): MemselDims {
  const { q, k } = i;
  if (q.shape.length !== 4) throw new ShapeError(`${op}: q ${q} should have shape [B,T,H,d]`);
  const [B, T, H, d] = q.shape as [number, number, number, number];
  floatDtype(op, 'q', q);
  floatDtype(op, 'k', k);
  expectShape(op, 'k', k, [B, T, -1, d]);
  const Hkv = k.shape[2]!;
  if (Hkv === 0 || H % Hkv !== 0) throw new ShapeError(`${op}: H=${H} query heads (q ${q}) must be a multiple of Hkv=${Hkv} KV heads (k ${k})`);
  if (d % 2 !== 0 || d < 2) throw new ShapeError(`${op}: head size d=${d} (q ${q}) must be even and at least 2`);
  if (d > MAX_HS) throw new LimitError(`${op}: head size d=${d} (q ${q}) is over the limit of ${MAX_HS}`);
  if (T < 1) throw new ShapeError(`${op}: q ${q} has no positions (T = 0)`);
  if (T > MEMSEL_MAX_T) throw new LimitError(`${op}: q ${q} has T=${T} positions; the limit is ${MEMSEL_MAX_T} (one workgroup per reference and KV head)`);
  for (const [n, t] of [['start', i.start], ['length', i.length]] as const) {
    expectDtype(op, n, t, ['u32']);
    expectShape(op, n, t, [B]);
  }
  expectDtype(op, 'indices', o.indices, ['u32']);
  expectShape(op, 'indices', o.indices, [B, Hkv, -1]);
  const K = o.indices.shape[2]!;
  if (K < 1) throw new ShapeError(`${op}: indices ${o.indices} keeps K=${K} tokens; need at least 1`);
  if (K > MEMSEL_MAX_K) throw new LimitError(`${op}: indices ${o.indices} keeps K=${K} tokens; the limit is ${MEMSEL_MAX_K}`);
  const outs: Tensor[] = [o.indices];
  if (o.scores) {
    expectDtype(op, 'scores', o.scores, ['f32']);
    expectShape(op, 'scores', o.scores, [B, Hkv, T]);
    expectDisjoint(op, o.indices, o.scores);
    outs.push(o.scores);
  }
  for (const out of outs) for (const t of [q, k, i.start, i.length]) expectDisjoint(op, out, t);
  return { B, T, H, Hkv, d, K };
}

/**
 * Memory³ token selection: per reference b and KV head g, the K positions j in [start[b],
 * length[b]) with the largest ln w_j = ln sum_{i, h in group} exp(scale q_i,h . k_j,g) (i over the
 * same range), descending, ties -> lower j; 0xffffffff past the valid positions. scores, when
 * given, get ln w (-inf outside the valid range). q, k pre-RoPE; see the file header.
 */
export async function memselForward(
  gpu: Gpu,
  o: { indices: Tensor; scores?: Tensor },
  i: { q: Tensor; k: Tensor; start: Tensor; length: Tensor },
  opts: MemselOptions = {},
): Promise<void> {
  const op = 'memselForward';
  const { B, T, H, Hkv, d, K } = checkShapes(op, o, i);
  const group = opts.group ?? 'sum';
  if (group !== 'sum' && group !== 'first') throw new ShapeError(`${op}: group '${String(group)}' must be 'sum' or 'first'`);
  const scale = opts.scale ?? 1 / Math.sqrt(d);
  if (!Number.isFinite(scale)) throw new ShapeError(`${op}: scale ${scale} must be finite`);
  if (B === 0) return;
  const G = H / Hkv;
  const S = cpuLanes(gpu);
  const Kp = nextPow2(K);
  const NT = 32 * Math.ceil(T / 32);
  const R = CPU_KEYS;
  const scores = o.scores ?? gpu.scratch.take([B, Hkv, T], 'f32', 'memsel_scores');
  try {
    await launch(gpu, {
      name: S !== null ? `memsel_hs${d}_s${S}_r${R}_k${Kp}_cpu` : `memsel_hs${d}_nt${NT}`,
      wgsl: S !== null ? cpuWgsl(d, S, Kp, R) : gpuWgsl(d, NT),
      storage: [o.indices, scores, i.q, i.k, i.start, i.length],
      params: PARAMS,
      values: {
        BG: B * Hkv,
        T,
        H,
        HKV: Hkv,
        G,
        NHG: group === 'sum' ? G : 1,
        K,
        slots: Math.ceil(d / 4),
        qscale: scale * Math.LOG2E,
        ...dtValues(op, { q: i.q, k: i.k }),
      },
      workgroups: grid1d(gpu, B * Hkv),
    });
  } finally {
    if (!o.scores) scores.dispose();
  }
}
