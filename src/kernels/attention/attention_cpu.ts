// causal self-attention on a CPU adapter (Mesa lavapipe): barrier-free mappings of the forward,
// dq and dk/dv kernels, which attentionForward / attentionBackward launch instead of the tiled
// ones when gpu.cpu is set. the op's contract is attention.ts's; each kernel binds the same
// tensors and uniforms as its GPU mapping (attention_common.ts), and attention_dsum (D below)
// serves both mappings.
//
//   attention_forward_*_cpu  out (B,T,NH,HS) = softmax(scale q k^T + mask) v               (=)
//                            lse (B,NH,T) = natural-log logsumexp of each row's scores    (=, f32)
//   attention_dq_*_cpu       dq (B,T,NH,HS) = scale sum_keys ds k                          (=)
//   attention_dkdv_*_cpu     dv = sum p dout, dk = scale sum ds q over every query of every
//                            head of the kv head's group: dk, dv (B,T,NKV,HS) for sequence
//                            keys, dpk, dpv (like pk) for prefix keys                      (=)
//   p = exp(scale q.k - lse) (0 where the key is not visible), ds = p (dout . v - D),
//   D = rowsum(dout * out)
//
// why: lavapipe runs a workgroup's invocations as the SIMD lanes of one CPU thread. there a
// load from storage or workgroup memory costs about ten times a lane's fma, whatever the
// addresses, and a barrier splits the shader into coroutines; the GPU kernels stage tiles in
// workgroup memory behind 3 to 5 barriers per tile. here a workgroup is one subgroup of S lanes
// (S = 8 on lavapipe: one AVX2 register), with no workgroup memory and no barrier.
// thread mapping:
//   forward, dq: a workgroup per (b, h, block of S*R queries), latest blocks first; lane l owns
//     the R queries tb + r*S + l (R = 2 for HS <= 32, else 1: rowsPerLane): their q rows (and
//     dout rows, lse, D) and their out (dq) accumulators live in registers. the visible keys go
//     by in chunks of S combined keys (prefix keys first, then sequence keys up to the block's
//     last query when causal): lane l loads key c0+l's k and v rows, and subgroupBroadcast
//     hands key j's rows to every lane (register shuffles), so per key a lane issues 2 HS/S
//     loads for 2 R HS fma's (forward) or 3 R HS (dq).
//   dk/dv: a workgroup per (b, kv head, S consecutive combined keys c0..c0+S-1); lane l owns
//     key c0+l: its k and v rows and its dk and dv accumulators live in registers. it walks
//     every query head of the group and, for each, the queries that can see the block (from
//     c0-P on when causal) in chunks of S: lane l loads query t0+l's q and dout rows, lse and D,
//     and broadcasts hand them to every lane (2 HS/S loads per query for 4 HS fma's).
//   chunked prefix (attention_common.ts): a forward or dq block of S*R queries may straddle
//     chunks; its prefix keys are the blocks of the chunks it spans (np rows from pk row po),
//     and row r sees the P of them from plo<r> on. a dk/dv block walks only the queries of the
//     chunks of its prefix keys (keyQueries), and lane l's prefix key c sees queries
//     [tlo, tlo + C). a forward row may meet a whole chunk of keys it cannot see before its
//     first visible one: see the forward's garbage-clearing note in attention_forward.ts.
//   every output row has one writer: deterministic, no atomics. loops over HS are unrolled over
//   vec4 registers (HS is a pipeline constant) except where noted at loadRow; the loops over
//   keys, queries and heads are uniform per workgroup (the broadcasts need every lane). lanes
//   past the end (t >= T, c >= P+T) compute on a clamped or zero row and store nothing.
// speed: scripts/profile_step.ts (a training step of the tiny model, per kernel) compares the
// two mappings on lavapipe; these were several times faster than the tiled ones there.
// numerics: f32; q is pre-multiplied by scale*log2(e) so that the softmax runs on exp2, as in
// the GPU kernels. the forward's online softmax rescales once per chunk of S keys; a masked
// score is -3e38 (exp2 gives exactly 0), a masked p is 0. lse = (m + log2(l)) ln(2); dk = ln(2)
// sum ds q' with q' the pre-multiplied q. results differ from the GPU mapping's only in the
// order of the sums.
// requires the subgroups feature with a fixed subgroup size of 4, 8 or 16 (cpuLanes() in kernel.ts); a
// CPU adapter without them runs the GPU mappings.

import { header, type ParamSpec, wgslOnce } from '../kernel.ts';
import {
  DKV_PARAMS,
  DQ_PARAMS,
  FWD_PARAMS,
  PACK16,
  VEC_HELPERS,
  dkvBindings,
  dkvStores,
  dqBindings,
  fwdBindings,
  keyQueries,
  queryWindow,
  range,
  rowLoads,
  rowStore,
  type AttentionShape,
} from './attention_common.ts';

export type CpuKernel = 'forward' | 'dq' | 'dkdv';

/** What launch() needs besides the storage (the GPU mapping's, in the same order) and the shared uniform values. */
export interface CpuPlan {
  name: string;
  wgsl: string;
  params: ParamSpec;
  /** uniform values of the CPU mapping only, to add to the shared ones */
  values: Record<string, number>;
  workgroups: [number, number];
}

/**
 * Query rows per lane of the forward and dq kernels: the k and v rows loaded for a chunk of keys
 * serve R rows of each lane, so more rows mean fewer loads per fma, but more registers and
 * longer compiles (LLVM's time grows with the unrolled code). on lavapipe at HS=32, R=2 made
 * both kernels markedly faster than R=1 for a little more compile time, and R=4 added little
 * for twice the compile time; at HS=64 R=2's smaller gain did not pay its compile time. the
 * dk/dv kernel gained nothing from 2 or 4 keys a lane.
 */
const rowsPerLane = (HS: number): number => (HS <= 32 ? 2 : 1);

export function cpuPlan(kernel: CpuKernel, s: AttentionShape, S: number): CpuPlan {
  const prefix = s.P > 0;
  const R = kernel === 'dkdv' ? 1 : rowsPerLane(s.HS);
  // the dk/dv kernel's combined keys cover the whole of pk (PR rows)
  return {
    name: `attention_${kernel}_hs${s.HS}_s${S}${R > 1 ? `r${R}` : ''}${prefix ? '' : '_nopre'}_cpu`,
    wgsl: wgslOnce(`attention_cpu ${kernel} ${s.HS} ${S} ${R} ${prefix}`, () => (kernel === 'forward' ? forwardWgsl(s.HS, S, R, prefix) : kernel === 'dq' ? dqWgsl(s.HS, S, R, prefix) : dkdvWgsl(s.HS, S, prefix))),
    params: CPU_PARAMS[kernel],
    values: { slots: Math.ceil(s.HS / 4) },
    workgroups: kernel === 'dkdv' ? [s.B * s.NKV, Math.ceil((s.PR + s.T) / S)] : [s.B * s.NH, Math.ceil(s.T / (S * R))],
  };
}

// each kernel's uniforms plus `slots` = ceil(HS/4), the bound of the rolled row loops (see loadRow)
const SLOTS = ['slots', 'u32'] as const;
const CPU_PARAMS: Readonly<Record<CpuKernel, ParamSpec>> = {
  forward: [...FWD_PARAMS, SLOTS],
  dq: [...DQ_PARAMS, SLOTS],
  dkdv: [...DKV_PARAMS, SLOTS],
};

/**
 * the visibility rule of KEEP (attention_common.ts) without branches (lavapipe runs branches
 * masked) and without divisions (a vector u32 division is scalarized): the chunk test comes
 * precomputed. vis (forward, dq): prefix key c is visible to a row iff c - plo < P, plo = the
 * row's block in the window (0 unchunked). visk (dk/dv): prefix key c is visible to query t iff
 * t - tlo < tspan, [tlo, tlo + tspan) = the queries of the key's chunk (0, 2^32-1 unchunked).
 */
const VIS = /* wgsl */ `
fn vis(c: u32, t: u32, plo: u32, np: u32) -> bool {
  let j = c - np;
  return (c - plo < p.P) | ((j < p.T) & ((p.causal == 0u) | (j <= t)));
}
fn visk(c: u32, t: u32, tlo: u32, tspan: u32, np: u32) -> bool {
  let j = c - np;
  return ((c < np) & (t - tlo < tspan)) | ((j < p.T) & ((p.causal == 0u) | (j <= t)));
}`;

/** the vec4 slots of a row of HS elements */
const slots = (HS: number): number[] => range(Math.ceil(HS / 4));

// compile time: lavapipe expands every storage access into per-lane branches, and LLVM's time
// grows with them: with every row access unrolled, these kernels took minutes to compile at
// HS=64. so the rows a thread loads or stores once go through a private array in a loop that
// the compiler keeps rolled (its bound, p.slots, is a uniform), and so do the prefix rows of a
// chunk (unrolled, they double the chunk's load code). the sequence rows of a chunk stay
// unrolled: rolling them saved little (indexing a private array in a loop costs a ladder of
// selects per access). still, a first compile takes seconds per kernel, more at HS=128 (the GPU
// mappings' dq and dk/dv kernels take longer).

/** WGSL: row `base` of tensor `name` (times `mul`) into `let ${v}<d>`, a vec4 a slot, by a rolled loop */
const loadRow = (v: string, name: string, base: string, HS: number, mul = ''): string =>
  `var ${v}a: array<vec4<f32>, ${slots(HS).length}>;
  for (var d = 0u; d < p.slots; d++) { ${v}a[d] = dec(raw_${name}(${base}, d), p.dt_${name})${mul}; }
  ${slots(HS)
    .map((d) => `let ${v}${d} = ${v}a[${d}];`)
    .join(' ')}`;

/** WGSL: the same, unrolled */
const loadRowUnrolled = (v: string, name: string, base: string, HS: number, mul = ''): string =>
  slots(HS)
    .map((d) => `let ${v}${d} = dec(raw_${name}(${base}, ${d}u), p.dt_${name})${mul};`)
    .join(' ');

/** WGSL: stores val(d) to slot d of row `base` of tensor `name`, by a rolled loop */
const storeRow = (name: string, base: string, HS: number, val: (d: number) => string): string =>
  `{ var sa: array<vec4<f32>, ${slots(HS).length}>; ${slots(HS)
    .map((d) => `sa[${d}] = ${val(d)};`)
    .join(' ')}
    for (var d = 0u; d < p.slots; d++) { stv_${name}(${base}, d, sa[d]); } }`;

/** WGSL: `${a}0 * ${b}0 + ...` as an fma chain over the slots, summed horizontally */
const dot = (a: (d: number) => string, b: (d: number) => string, HS: number): string => {
  const [first, ...rest] = slots(HS);
  return `hsum(${rest.reduce((acc, d) => `fma(${a(d)}, ${b(d)}, ${acc})`, `${a(first!)} * ${b(first!)}`)})`;
};

/** WGSL: lane `lane`'s x, for every lane (a register shuffle) */
const bcast = (x: string, lane: number): string => `subgroupBroadcast(${x}, ${lane}u)`;

/**
 * WGSL: the k and v rows of combined key `c` (batch b, kv head kvh) into the registers `k<d>`, `v<d>`:
 * prefix rows below np (pk rows po + c), sequence rows below `end`, zeros from there (a per-lane branch picks the
 * tensors). `rolled`: by rolled loops, for rows loaded once per thread; otherwise the sequence
 * rows are unrolled and the prefix rows rolled (unrolled, they would double the load code).
 */
function keyRows(HS: number, prefix: boolean, c: string, end: string, rolled: boolean): string {
  const d4 = slots(HS);
  const n = d4.length;
  const arrays = `var ka: array<vec4<u32>, ${n}>; var va: array<vec4<u32>, ${n}>;`;
  const loop = (kt: string, vt: string) => `for (var d = 0u; d < p.slots; d++) { ka[d] = raw_${kt}(base, d); va[d] = raw_${vt}(base, d); }`;
  const fromArrays = d4.map((d) => `kw${d} = ka[${d}]; vw${d} = va[${d}];`).join(' ');
  const words = (kt: string, vt: string, roll: boolean) =>
    roll ? `${arrays} ${loop(kt, vt)} ${fromArrays}` : d4.map((d) => `kw${d} = raw_${kt}(base, ${d}u); vw${d} = raw_${vt}(base, ${d}u);`).join(' ');
  const pre = prefix ? `if (${c} < np) { let base = ((b * p.PR + po + ${c}) * p.NKV + kvh) * ${HS}u; ${words('pk', 'pv', true)} } else ` : '';
  const dt = (t: string) => (prefix ? `select(p.dt_${t}, p.dt_p${t}, ${c} < np)` : `p.dt_${t}`);
  return `{
    ${d4.map((d) => `var kw${d} = vec4<u32>(); var vw${d} = vec4<u32>();`).join(' ')}
    ${pre}if (${c} >= np && ${c} < ${end}) { let base = ((b * p.T + ${c} - np) * p.NKV + kvh) * ${HS}u; ${words('k', 'v', rolled)} }
    let kdt = ${dt('k')};
    let vdt = ${dt('v')};
    ${d4.map((d) => `k${d} = dec(kw${d}, kdt); v${d} = dec(vw${d}, vdt);`).join(' ')}
    }`;
}

/** WGSL declarations of the vec4 registers `${x}<d>` of a row */
const rowVars = (x: string, HS: number): string =>
  slots(HS)
    .map((d) => `var ${x}${d}: vec4<f32>;`)
    .join(' ');

/** the WGSL before a CPU kernel's entry point: bindings, helpers, row loaders and storers */
const preamble = (kernel: CpuKernel, HS: number, prefix: boolean, stores: string, loads: readonly string[]): string => /* wgsl */ `
enable subgroups;
${header({ forward: fwdBindings, dq: dqBindings, dkdv: dkvBindings }[kernel](prefix), CPU_PARAMS[kernel])}
${VEC_HELPERS}
${PACK16}
${VIS}
${rowLoads(loads, HS, prefix)}
${stores}`;

/**
 * the first lines of the forward and dq kernels: the workgroup's head and block of S*R queries
 * from tb, its prefix window (np, po), the visible keys (kend), and each row r's query t<r>,
 * its offset qb<r> and the first of its prefix keys plo<r>
 */
const queryStart = (HS: number, S: number, R: number): string => /* wgsl */ `
@compute @workgroup_size(${S})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  let b = wid.x / p.NH;
  let h = wid.x % p.NH;
  let kvh = h / p.G;
  let tb = (nwg.y - 1u - wid.y) * ${S * R}u;  // latest (longest) query blocks first
  ${queryWindow('tb', S * R)}
  var kend = np + p.T;  // combined keys the block can see
  if (p.causal != 0u) { kend = np + min(p.T, tb + ${S * R}u); }
  ${range(R)
    .map(
      (r) => `let t${r} = tb + ${r * S}u + lane; let qb${r} = ((b * p.T + min(t${r}, p.T - 1u)) * p.NH + h) * ${HS}u;
  let plo${r} = select(0u, (min(t${r}, p.T - 1u) / max(p.PC, 1u)) * p.P - po, p.PC != 0u);`,
    )
    .join('\n  ')}  // rows past the end work on row T-1 and store nothing`;

function forwardWgsl(HS: number, S: number, R: number, prefix: boolean): string {
  const d4 = slots(HS);
  const J = range(S);
  const Rs = range(R);
  return /* wgsl */ `${preamble('forward', HS, prefix, rowStore('out', HS), ['q', 'k', 'v', 'pk', 'pv'])}
${queryStart(HS, S, R)}
  ${Rs.map((r) => `${loadRow(`q${r}_`, 'q', `qb${r}`, HS, ' * p.qscale')}
  var m${r} = NEG;  // running max (log2 units)
  var sum${r} = 0.0;
  ${d4.map((d) => `var o${r}_${d} = vec4<f32>(0.0);`).join(' ')}`).join('\n  ')}
  ${rowVars('k', HS)} ${rowVars('v', HS)}
  for (var c0 = 0u; c0 < kend; c0 += ${S}u) {
    ${keyRows(HS, prefix, 'c0 + lane', 'kend', false)}
    ${J.map((j) => `${d4.map((d) => `let k${j}_${d} = ${bcast(`k${d}`, j)};`).join(' ')}
    ${Rs.map((r) => `let s${r}_${j} = select(NEG, ${dot((d) => `q${r}_${d}`, (d) => `k${j}_${d}`, HS)}, vis(c0 + ${j}u, t${r}, plo${r}, np));`).join(' ')}`).join('\n    ')}
    ${Rs.map(
      (r) => `let mx${r} = max(m${r}, ${J.slice(1).reduce((a, j) => `max(${a}, s${r}_${j})`, `s${r}_0`)});
    let alpha${r} = exp2(m${r} - mx${r});
    m${r} = mx${r};
    ${J.map((j) => `let p${r}_${j} = exp2(s${r}_${j} - mx${r});`).join(' ')}
    sum${r} = sum${r} * alpha${r} + ${J.map((j) => `p${r}_${j}`).join(' + ')};
    ${d4.map((d) => `o${r}_${d} *= alpha${r};`).join(' ')}`,
    ).join('\n    ')}
    ${J.map((j) => d4.map((d) => `{ let x = ${bcast(`v${d}`, j)}; ${Rs.map((r) => `o${r}_${d} = fma(vec4<f32>(p${r}_${j}), x, o${r}_${d});`).join(' ')} }`).join(' ')).join('\n    ')}
  }
  ${Rs.map(
    (r) => `if (t${r} < p.T) {
    lse[(b * p.NH + h) * p.T + t${r}] = (m${r} + log2(sum${r})) * LN2;
    let inv = 1.0 / sum${r};
    ${storeRow('out', `qb${r}`, HS, (d) => `o${r}_${d} * inv`)}
  }`,
  ).join('\n  ')}
}`;
}

function dqWgsl(HS: number, S: number, R: number, prefix: boolean): string {
  const d4 = slots(HS);
  const Rs = range(R);
  return /* wgsl */ `${preamble('dq', HS, prefix, rowStore('dq', HS), ['q', 'k', 'v', 'pk', 'pv', 'dout'])}
${queryStart(HS, S, R)}
  ${Rs.map((r) => `${loadRow(`q${r}_`, 'q', `qb${r}`, HS, ' * p.qscale')}
  ${loadRow(`o${r}_`, 'dout', `qb${r}`, HS)}
  let lq${r} = lse[(b * p.NH + h) * p.T + min(t${r}, p.T - 1u)] * LOG2E;
  let dd${r} = dsum[(b * p.NH + h) * p.T + min(t${r}, p.T - 1u)];
  ${d4.map((d) => `var g${r}_${d} = vec4<f32>(0.0);`).join(' ')}`).join('\n  ')}
  ${rowVars('k', HS)} ${rowVars('v', HS)}
  for (var c0 = 0u; c0 < kend; c0 += ${S}u) {
    ${keyRows(HS, prefix, 'c0 + lane', 'kend', false)}
    ${range(S)
      .map(
        (j) => `{
      ${d4.map((d) => `let kb${d} = ${bcast(`k${d}`, j)}; let vb${d} = ${bcast(`v${d}`, j)};`).join(' ')}
      ${Rs.map(
        (r) => `{
        let pr = select(0.0, exp2(${dot((d) => `q${r}_${d}`, (d) => `kb${d}`, HS)} - lq${r}), vis(c0 + ${j}u, t${r}, plo${r}, np));
        let ds = vec4<f32>(pr * (${dot((d) => `o${r}_${d}`, (d) => `vb${d}`, HS)} - dd${r}));
        ${d4.map((d) => `g${r}_${d} = fma(ds, kb${d}, g${r}_${d});`).join(' ')}
      }`,
      ).join('\n      ')}
    }`,
      )
      .join('\n    ')}
  }
  ${Rs.map((r) => `if (t${r} < p.T) { ${storeRow('dq', `qb${r}`, HS, (d) => `g${r}_${d} * p.scale`)} }`).join('\n  ')}
}`;
}

function dkdvWgsl(HS: number, S: number, prefix: boolean): string {
  const d4 = slots(HS);
  const store = (k: string, v: string, base: string) =>
    `let base = ${base}; ${storeRow(k, 'base', HS, (d) => `dk${d} * LN2`)} ${storeRow(v, 'base', HS, (d) => `dv${d}`)}`;
  return /* wgsl */ `${preamble('dkdv', HS, prefix, dkvStores(HS, prefix), ['q', 'k', 'v', 'pk', 'pv', 'dout'])}

@compute @workgroup_size(${S})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
  let b = wid.x / p.NKV;
  let kvh = wid.x % p.NKV;
  let c0 = wid.y * ${S}u;  // first combined key of the block
  let c = c0 + lane;
  let np = p.PR;  // the whole of pk
  let po = 0u;
  ${rowVars('k', HS)} ${rowVars('v', HS)}
  ${keyRows(HS, prefix, 'c', 'p.PR + p.T', true)}
  ${d4.map((d) => `var dk${d} = vec4<f32>(0.0); var dv${d} = vec4<f32>(0.0);`).join(' ')}
  // the queries that can see a key of the block
  ${keyQueries('c0', S, 1)}
  let nq = (tend - tstart + ${S - 1}u) / ${S}u;  // query chunks per head
  // the queries that see this lane's key, if a prefix key: those of its chunk (all unchunked)
  let chunked = (p.PC != 0u) & (c < np);
  let tlo = select(0u, c / max(p.P, 1u) * p.PC, chunked);
  let tspan = select(0xffffffffu, p.PC, chunked);
  for (var g = 0u; g < p.G; g++) {
    let h = kvh * p.G + g;
    for (var it = 0u; it < nq; it++) {
      let t0 = tstart + it * ${S}u;
      let tc = min(t0 + lane, p.T - 1u);  // lanes past the end load row T-1, masked below
      let qb = ((b * p.T + tc) * p.NH + h) * ${HS}u;
      ${loadRowUnrolled('q', 'q', 'qb', HS, ' * p.qscale')}
      ${loadRowUnrolled('o', 'dout', 'qb', HS)}
      let lq = lse[(b * p.NH + h) * p.T + tc] * LOG2E;
      let dd = dsum[(b * p.NH + h) * p.T + tc];
      ${range(S)
        .map(
          (i) => `{
        ${d4.map((d) => `let qb${d} = ${bcast(`q${d}`, i)}; let ob${d} = ${bcast(`o${d}`, i)};`).join(' ')}
        let pr = select(0.0, exp2(${dot((d) => `qb${d}`, (d) => `k${d}`, HS)} - ${bcast('lq', i)}), (t0 + ${i}u < p.T) & visk(c, t0 + ${i}u, tlo, tspan, np));
        let ds = vec4<f32>(pr * (${dot((d) => `ob${d}`, (d) => `v${d}`, HS)} - ${bcast('dd', i)}));
        ${d4.map((d) => `dv${d} = fma(vec4<f32>(pr), ob${d}, dv${d}); dk${d} = fma(ds, qb${d}, dk${d});`).join(' ')}
      }`,
        )
        .join('\n      ')}
    }
  }
  ${prefix ? `if (c < np) { ${store('dpk', 'dpv', `((b * p.PR + c) * p.NKV + kvh) * ${HS}u`)} } else ` : ''}if (c >= np && c < np + p.T) { ${store('dk', 'dv', `((b * p.T + c - np) * p.NKV + kvh) * ${HS}u`)} }
}`;
}
