// embedding lookup, forward and a deterministic scatter-add backward.
//
//   forward   out (N,C) = W (V,C) [ids (N)]                     (an id >= V gives a zero row)
//   backward  dW (V,C) += sum over t with ids[t] = v of dout[t]  (+=, parameter grad; f32)
//
// ids are u32 (N) (any leading shape; out is ids.shape + [C]). kernels cannot throw, so ids from
// the host should pass checkIds() first; on the GPU an id >= V reads as a zero row and adds
// nothing to dW.
// forward thread mapping: with out and W of one dtype, rows are copied as raw words (16 bytes a
// unit when the row allows), 4 units per thread a grid-width apart, loads before stores;
// consecutive threads copy consecutive words. mixed dtypes convert a pair of columns a thread.
// backward, sort-and-segment-sum (no float atomics; bitwise reproducible run to run):
//   1. sortPairs stably sorts (id, t) by id with bitLength(V) key bits (ids >= V saturate past
//      V - 1 and are skipped), so each id's rows form one run, in order of t.
//   2. segsum: the sorted rows are cut into blocks of R = 64; a workgroup per (block, 128-column
//      chunk) walks its rows in order, summing dout rows per run of equal ids in f32. a run that
//      lies inside the block is added into dW at once; a run cut by the block's start or end
//      leaves its piece in part (2 slots a block: the run coming in, the run going out).
//   3. segsum_join: for each run that starts in a block and goes on past it, one thread per
//      column adds the pieces block by block in order and adds them into dW.
//   every dW row is written by exactly one thread per column, so no two workgroups race; the sum
//   of an id's rows is in order of t within each block piece, pieces in block order. parallelism
//   is (N/R) * (C/128) workgroups whatever the id distribution (one id on most positions makes
//   step 3 walk N/R pieces). unused rows of dW keep their values.

import type { Gpu } from '../../gpu/device.ts';
import { DTYPES } from '../../gpu/dtype.ts';
import { EngramError, ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDisjoint, expectDtype, expectShape, grid1d, header, launch, type ParamSpec } from '../kernel.ts';
import { sortPairs } from '../sort/sort.ts';

const WG = 256; // forward threads per workgroup
const PER = 4; // forward units per thread
const KS = Array.from({ length: PER }, (_, k) => k);
const SEG_WG = 64; // segsum threads; each owns 2 columns
const COLS = 2 * SEG_WG; // columns per chunk
const R = SEG_WG; // sorted rows per block (one load per thread)

/** Throws unless every id is < V, naming the first bad position and value. */
export function checkIds(ids: ArrayLike<number>, V: number): void {
  for (let t = 0; t < ids.length; t++) {
    const v = ids[t]!;
    if (!(Number.isInteger(v) && v >= 0 && v < V)) {
      throw new EngramError(`embedding: ids[${t}] = ${v} is out of range for a vocabulary of ${V} (ids must be integers in 0..${V - 1})`);
    }
  }
}

const FWD_PARAMS: ParamSpec = [
  ['N', 'u32'],
  ['C', 'u32'],
  ['V', 'u32'],
  ['Q', 'u32'], // units per row
];

/**
 * out and W of one dtype: rows are copied as raw words, `vec` (1, 2 or 4) words a unit, PER units
 * per thread a grid-width apart (unrolled), all loads before the stores.
 */
function forwardCopyWgsl(vec: number): string {
  const T = vec === 1 ? 'u32' : `vec${vec}<u32>`;
  return /* wgsl */ `
${header([], FWD_PARAMS)}
@group(0) @binding(1) var<storage, read_write> out: array<${T}>;
@group(0) @binding(2) var<storage, read> W: array<${T}>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let ubase = (wid.x + wid.y * nwg.x) * ${WG}u + l.x;
  let stride = nwg.x * nwg.y * ${WG}u;
  let units = p.N * p.Q;
  // units past the end read the last one; an out-of-range id reads row V-1 and stores zeros
  ${KS.map(
    (k) => `let u${k} = ubase + ${k}u * stride;
  let c${k} = min(u${k}, units - 1u);
  let t${k} = c${k} / p.Q;
  let id${k} = ids[t${k}];
  let v${k} = select(${T}(0u), W[min(id${k}, p.V - 1u) * p.Q + c${k} - t${k} * p.Q], id${k} < p.V);`,
  ).join('\n  ')}
  ${KS.map((k) => `if (u${k} < units) { out[u${k}] = v${k}; }`).join('\n  ')}
}`;
}

/** out and W of different dtypes: one thread per (t, pair of columns), converted through f32 */
function forwardConvertWgsl(out: Tensor, W: Tensor): string {
  const packed = out.dtype !== 'f32';
  return /* wgsl */ `
${header(
  [
    { name: 'out', type: out.dtype, access: 'read_write' },
    { name: 'W', type: W.dtype, access: 'read' },
    { name: 'ids', type: 'u32', access: 'read' },
  ],
  FWD_PARAMS,
)}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let idx = (wid.x + wid.y * nwg.x) * ${WG}u + l.x;
  let t = idx / p.Q;
  if (t >= p.N) { return; }
  let c = (idx - t * p.Q) * 2u;
  let id = ids[t];
  let v = select(vec2<f32>(0.0), ld2_W(min(id, p.V - 1u) * p.C + c), id < p.V);
  ${packed ? 'st2_out(t * p.C + c, v.x, v.y);' : 'if (c + 1u < p.C) { st2_out(t * p.C + c, v.x, v.y); } else { st_out(t * p.C + c, v.x); }'}
}`;
}

const SEG_PARAMS: ParamSpec = [
  ['N', 'u32'],
  ['C', 'u32'],
  ['V', 'u32'],
  ['chunks', 'u32'], // column chunks of ${COLS}
  ['blocks', 'u32'], // row blocks of ${R}
];

/** the workgroup's (block, chunk) and this thread's first column; exits past the last block */
const SEG_PROLOGUE = /* wgsl */ `
  let gi = wid.x + wid.y * nwg.x;
  let blk = gi / p.chunks;
  if (blk >= p.blocks) { return; }  // uniform per workgroup
  let c = (gi - blk * p.chunks) * ${COLS}u + 2u * l.x;`;

function segsumWgsl(dout: Tensor): string {
  return /* wgsl */ `
${header(
  [
    { name: 'dW', type: 'f32', access: 'read_write' },
    { name: 'part', type: 'f32', access: 'read_write' },
    { name: 'keys', type: 'u32', access: 'read' },
    { name: 'pos', type: 'u32', access: 'read' },
    { name: 'dout', type: dout.dtype, access: 'read' },
  ],
  SEG_PARAMS,
)}
var<workgroup> kk: array<u32, ${R}>;  // sorted ids of the block
var<workgroup> pp: array<u32, ${R}>;  // their positions t
@compute @workgroup_size(${SEG_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  ${SEG_PROLOGUE}
  let r0 = blk * ${R}u;
  let cnt = min(${R}u, p.N - r0);
  if (l.x < cnt) {
    kk[l.x] = keys[r0 + l.x];
    pp[l.x] = pos[r0 + l.x];
  }
  // ids just before and after the block tell whether its first / last run is cut
  var before = 0u;
  let hasBefore = r0 > 0u;
  if (hasBefore) { before = keys[r0 - 1u]; }
  var after = 0u;
  let hasAfter = r0 + cnt < p.N;
  if (hasAfter) { after = keys[r0 + cnt]; }
  workgroupBarrier();
  let c1 = c + 1u < p.C;
  var s = vec2<f32>(0.0);
  var first = true;
  for (var j = 0u; j < cnt; j++) {
    let id = kk[j];
    if (c < p.C) { s += ld2_dout(pp[j] * p.C + c); }
    if (j + 1u == cnt || kk[j + 1u] != id) {
      // end of a run within the block
      let cutBefore = first && hasBefore && before == id;
      let cutAfter = j + 1u == cnt && hasAfter && after == id;
      if (id < p.V && c < p.C) {
        if (cutBefore || cutAfter) {
          // slot 0: the piece of a run that came in from an earlier block; slot 1: one going on
          let q = (blk * 2u + select(1u, 0u, cutBefore)) * p.C + c;
          part[q] = s.x;
          if (c1) { part[q + 1u] = s.y; }
        } else {
          let q = id * p.C + c;
          dW[q] += s.x;
          if (c1) { dW[q + 1u] += s.y; }
        }
      }
      s = vec2<f32>(0.0);
      first = false;
    }
  }
}`;
}

const SEGSUM_JOIN_WGSL = /* wgsl */ `
${header(
  [
    { name: 'dW', type: 'f32', access: 'read_write' },
    { name: 'part', type: 'f32', access: 'read' },
    { name: 'keys', type: 'u32', access: 'read' },
  ],
  SEG_PARAMS,
)}
@compute @workgroup_size(${SEG_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  ${SEG_PROLOGUE}
  // only the block where a cut run starts joins it: its last row continues into the next block,
  // and its first row is not the same run as the previous block's last row
  let e = blk * ${R}u + ${R}u;
  if (e >= p.N || c >= p.C) { return; }
  let id = keys[e - 1u];
  if (keys[e] != id || id >= p.V) { return; }
  if (blk > 0u && keys[blk * ${R}u - 1u] == id) { return; }
  let c1 = c + 1u < p.C;
  var s0 = part[(blk * 2u + 1u) * p.C + c];
  var s1 = 0.0;
  if (c1) { s1 = part[(blk * 2u + 1u) * p.C + c + 1u]; }
  for (var b = blk + 1u; b < p.blocks; b++) {
    let q = b * 2u * p.C + c;
    s0 += part[q];
    if (c1) { s1 += part[q + 1u]; }
    let eb = b * ${R}u + ${R}u;
    if (eb >= p.N || keys[eb] != id) { break; }
  }
  dW[id * p.C + c] += s0;
  if (c1) { dW[id * p.C + c + 1u] += s1; }
}`;

/** out (ids.shape, C) = W (V,C) rows at ids; an id >= V gives zeros (validate with checkIds). */
export async function embeddingForward(gpu: Gpu, o: { out: Tensor }, i: { W: Tensor; ids: Tensor }): Promise<void> {
  const op = 'embeddingForward';
  expectShape(op, 'W', i.W, [-1, -1]);
  const [V, C] = i.W.shape as [number, number];
  expectDtype(op, 'W', i.W, DTYPES);
  expectDtype(op, 'ids', i.ids, ['u32']);
  expectShape(op, 'out', o.out, [...i.ids.shape, C]);
  expectDtype(op, 'out', o.out, DTYPES);
  if (o.out.dtype !== 'f32' && C % 2 !== 0) {
    throw new ShapeError(`${op}: out ${o.out} has an odd row size C = ${C}; use f32 or an even C`);
  }
  expectDisjoint(op, o.out, i.W);
  expectDisjoint(op, o.out, i.ids);
  const N = i.ids.size;
  if (o.out.dtype === i.W.dtype) {
    const words = o.out.dtype === 'f32' ? C : C / 2;
    const vec = words % 4 === 0 ? 4 : words % 2 === 0 ? 2 : 1;
    const Q = words / vec;
    await launch(gpu, {
      name: `embedding_forward_copy_${vec}`,
      wgsl: forwardCopyWgsl(vec),
      storage: [o.out, i.W, i.ids],
      params: FWD_PARAMS,
      values: { N, C, V, Q },
      workgroups: grid1d(gpu, Math.ceil((N * Q) / (WG * PER))),
    });
    return;
  }
  const Q = Math.ceil(C / 2);
  await launch(gpu, {
    name: `embedding_forward_${o.out.dtype}_${i.W.dtype}`,
    wgsl: forwardConvertWgsl(o.out, i.W),
    storage: [o.out, i.W, i.ids],
    params: FWD_PARAMS,
    values: { N, C, V, Q },
    workgroups: grid1d(gpu, Math.ceil((N * Q) / WG)),
  });
}

/** dW (V,C) f32 += scatter of dout (ids.shape, C) by ids; deterministic (sort-and-segment-sum). */
export async function embeddingBackward(gpu: Gpu, o: { dW: Tensor }, i: { dout: Tensor; ids: Tensor }): Promise<void> {
  const op = 'embeddingBackward';
  expectShape(op, 'dW', o.dW, [-1, -1]);
  expectDtype(op, 'dW', o.dW, ['f32']);
  const [V, C] = o.dW.shape as [number, number];
  expectDtype(op, 'ids', i.ids, ['u32']);
  expectShape(op, 'dout', i.dout, [...i.ids.shape, C]);
  expectDtype(op, 'dout', i.dout, DTYPES);
  for (const r of [i.dout, i.ids]) expectDisjoint(op, o.dW, r);
  const N = i.ids.size;
  if (N === 0 || C === 0) return;
  // one more bit than V - 1 needs: ids >= V saturate to 2^keyBits - 1 >= V, a run of their own
  const keyBits = Math.max(1, Math.min(32, Math.floor(Math.log2(Math.max(V, 1))) + 1));
  const keys = gpu.scratch.take([N], 'u32', 'embedding_sorted_ids');
  const pos = gpu.scratch.take([N], 'u32', 'embedding_sorted_pos');
  const blocks = Math.ceil(N / R);
  const chunks = Math.ceil(C / COLS);
  const part = gpu.scratch.take([2 * blocks, C], 'f32', 'embedding_dw_part');
  try {
    await sortPairs(gpu, { keysOut: keys, valuesOut: pos }, { keys: i.ids.reshape([N]) }, { keyBits });
    const values = { N, C, V, chunks, blocks };
    const grid = grid1d(gpu, blocks * chunks);
    await launch(gpu, {
      name: `embedding_backward_segsum_${i.dout.dtype}`,
      wgsl: segsumWgsl(i.dout),
      storage: [o.dW, part, keys, pos, i.dout],
      params: SEG_PARAMS,
      values,
      workgroups: grid,
    });
    if (blocks > 1) {
      await launch(gpu, { name: 'embedding_backward_segsum_join', wgsl: SEGSUM_JOIN_WGSL, storage: [o.dW, part, keys], params: SEG_PARAMS, values, workgroups: grid });
    }
  } finally {
    keys.dispose();
    pos.dispose();
    part.dispose();
  }
}
