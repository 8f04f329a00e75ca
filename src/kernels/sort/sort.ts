// stable GPU sort of u32 keys with u32 values (payload), plus an exclusive scan and segment starts.
//
//   sortPairs      keysOut (n), valuesOut (n) = keys, values reordered by key, ties in input order
//   scanExclusive  data (M) = exclusive prefix sums of data, in place (u32, wrapping)
//   segmentStarts  starts (n+1), count (1): the first index of every run of equal keys in a sorted
//                  array, then n; count = number of runs
//
// algorithm: LSD radix sort, 4 bits a pass, ceil(keyBits/4) passes (keys < 2^20: 5 passes).
// a pass is three steps over tiles of TILE = 1024 elements:
//   1. hist:    per-tile digit counts, stored digit-major: hist[d * tiles + tile]
//   2. scan:    exclusive scan of hist gives each (digit, tile) its first output index
//               (1 dispatch while 16 * tiles <= 1024, i.e. n <= 64k; 3 up to n = 64M)
//   3. scatter: each thread owns 8 consecutive elements of the tile; packed per-thread digit counts
//               (two 16-bit counters per word) are scanned across the workgroup, elements are
//               shuffled into digit order in workgroup memory, then written out coalesced.
// stability: within a tile, thread order = element order and each thread walks its elements in
// order; across tiles, the digit-major scan puts earlier tiles first. every pass is stable, so
// the sort is. cost per pass: 3 dispatches for n <= 64k (5 above), reading keys twice and
// values once, writing both once; 12 bytes read + 8 written per element.
// keys >= 2^keyBits saturate to 2^keyBits - 1 (they sort last, in input order, and keysOut
// holds the saturated value): the sort is total whatever the keys, and callers can use an
// out-of-range key as a sentinel. without `values` the payload is the input index, so valuesOut
// is the sorting permutation.
//
// keys, values, starts and counts are 'u32' tensors.

import type { Gpu } from '../../gpu/device.ts';
import { ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDisjoint, expectDtype, expectShape, grid1d, header, launch, type ParamSpec } from '../kernel.ts';

const WG = 128; // sort threads per workgroup
const ITEMS = 8; // consecutive elements per thread
const TILE = WG * ITEMS;
const BITS = 4;
const BUCKETS = 1 << BITS;
const SCAN_WG = 256;
const SCAN_TILE = SCAN_WG * 4;

// ---------------------------------------------------------------- scan

const SCAN_PARAMS: ParamSpec = [['M', 'u32']];

/** exclusive scan of one SCAN_TILE per workgroup, in place; the tile's total goes to sums[tile] */
function scanBlockWgsl(withSums: boolean): string {
  return /* wgsl */ `
${header(
  [
    { name: 'data', type: 'u32', access: 'read_write' },
    ...(withSums ? [{ name: 'sums', type: 'u32' as const, access: 'read_write' as const }] : []),
  ],
  SCAN_PARAMS,
)}
var<workgroup> part: array<u32, ${SCAN_WG}>;
@compute @workgroup_size(${SCAN_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let blk = wid.x + wid.y * nwg.x;
  if (blk * ${SCAN_TILE}u >= p.M) { return; }  // grid padding; uniform per workgroup
  let lid = l.x;
  // each thread scans 4 consecutive words, then the 256 thread totals are scanned (hillis-steele)
  let i0 = blk * ${SCAN_TILE}u + lid * 4u;
  var v: array<u32, 4>;
  var s = 0u;
  for (var k = 0u; k < 4u; k++) {
    let i = i0 + k;
    v[k] = 0u;
    if (i < p.M) { v[k] = data[i]; }
    s += v[k];
  }
  part[lid] = s;
  workgroupBarrier();
  for (var off = 1u; off < ${SCAN_WG}u; off <<= 1u) {
    var add = 0u;
    if (lid >= off) { add = part[lid - off]; }
    workgroupBarrier();
    part[lid] += add;
    workgroupBarrier();
  }
  var run = part[lid] - s;
  for (var k = 0u; k < 4u; k++) {
    let i = i0 + k;
    if (i < p.M) { data[i] = run; }
    run += v[k];
  }
  ${withSums ? `if (lid == ${SCAN_WG - 1}u) { sums[blk] = part[lid]; }` : ''}
}`;
}

const SCAN_ADD_WGSL = /* wgsl */ `
${header(
  [
    { name: 'data', type: 'u32', access: 'read_write' },
    { name: 'sums', type: 'u32', access: 'read' },
  ],
  SCAN_PARAMS,
)}
@compute @workgroup_size(${SCAN_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let blk = wid.x + wid.y * nwg.x;
  if (blk * ${SCAN_TILE}u >= p.M) { return; }
  let add = sums[blk];
  for (var k = 0u; k < 4u; k++) {
    let i = blk * ${SCAN_TILE}u + k * ${SCAN_WG}u + l.x;
    if (i < p.M) { data[i] += add; }
  }
}`;

/**
 * Exclusive prefix sum of the first M u32 words of `data`, in place (wrapping on overflow).
 * One dispatch for M <= 1024, then 2 more per level of 1024.
 */
export async function scanExclusive(gpu: Gpu, data: Tensor, M = data.size): Promise<void> {
  expectDtype('scanExclusive', 'data', data, ['u32']);
  if (M > data.size) throw new ShapeError(`scanExclusive: M = ${M} exceeds ${data.label}[${data.shape.join(',')}]`);
  if (M === 0) return;
  const blocks = Math.ceil(M / SCAN_TILE);
  if (blocks === 1) {
    await launch(gpu, { name: 'scan_exclusive_block', wgsl: scanBlockWgsl(false), storage: [data], params: SCAN_PARAMS, values: { M }, workgroups: [1] });
    return;
  }
  const sums = gpu.scratch.take([blocks], 'u32', 'scan_sums');
  try {
    const grid = grid1d(gpu, blocks);
    await launch(gpu, { name: 'scan_exclusive_block_sums', wgsl: scanBlockWgsl(true), storage: [data, sums], params: SCAN_PARAMS, values: { M }, workgroups: grid });
    await scanExclusive(gpu, sums, blocks);
    await launch(gpu, { name: 'scan_exclusive_add', wgsl: SCAN_ADD_WGSL, storage: [data, sums], params: SCAN_PARAMS, values: { M }, workgroups: grid });
  } finally {
    sums.dispose();
  }
}

// ---------------------------------------------------------------- radix sort

const SORT_PARAMS: ParamSpec = [
  ['n', 'u32'],
  ['tiles', 'u32'],
  ['shift', 'u32'],
  ['maxKey', 'u32'],
];

const HIST_WGSL = /* wgsl */ `
${header(
  [
    { name: 'hist', type: 'u32', access: 'read_write' },
    { name: 'kin', type: 'u32', access: 'read' },
  ],
  SORT_PARAMS,
)}
var<workgroup> h: array<atomic<u32>, ${BUCKETS}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let tile = wid.x + wid.y * nwg.x;
  if (tile >= p.tiles) { return; }  // uniform per workgroup
  let lid = l.x;
  if (lid < ${BUCKETS}u) { atomicStore(&h[lid], 0u); }
  workgroupBarrier();
  // 4-bit counters per thread (at most ${ITEMS} per digit): digits 0-7 in lo, 8-15 in hi,
  // so a thread issues one atomic per distinct digit, not one per element
  var lo = 0u;
  var hi = 0u;
  for (var j = 0u; j < ${ITEMS}u; j++) {
    let g = tile * ${TILE}u + j * ${WG}u + lid;
    if (g < p.n) {
      let d = (min(kin[g], p.maxKey) >> p.shift) & ${BUCKETS - 1}u;
      let one = 1u << ((d & 7u) * 4u);
      if (d < 8u) { lo += one; } else { hi += one; }
    }
  }
  for (var d = 0u; d < ${BUCKETS}u; d++) {
    let c = (select(lo, hi, d >= 8u) >> ((d & 7u) * 4u)) & 15u;
    if (c > 0u) { atomicAdd(&h[d], c); }
  }
  workgroupBarrier();
  if (lid < ${BUCKETS}u) { hist[lid * p.tiles + tile] = atomicLoad(&h[lid]); }
}`;

/** one radix pass: stable scatter of a tile by the digit at p.shift; `iota`: payload = input index */
function scatterWgsl(iota: boolean): string {
  return /* wgsl */ `
${header(
  [
    { name: 'kout', type: 'u32', access: 'read_write' },
    { name: 'vout', type: 'u32', access: 'read_write' },
    { name: 'offs', type: 'u32', access: 'read' },
    { name: 'kin', type: 'u32', access: 'read' },
    ...(iota ? [] : [{ name: 'vin', type: 'u32' as const, access: 'read' as const }]),
  ],
  SORT_PARAMS,
)}
var<workgroup> sk: array<u32, ${TILE}>;      // tile keys, then tile keys in digit order
var<workgroup> sv: array<u32, ${TILE}>;      // same for values
var<workgroup> cnt: array<u32, ${(BUCKETS / 2) * WG}>;  // [digit/2][thread]: two 16-bit counters a word
var<workgroup> gbase: array<u32, ${BUCKETS}>;  // first output index of each digit of this tile
var<workgroup> lstart: array<u32, ${BUCKETS}>; // first tile slot of each digit
fn digit(k: u32) -> u32 { return (k >> p.shift) & ${BUCKETS - 1}u; }
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let tile = wid.x + wid.y * nwg.x;
  if (tile >= p.tiles) { return; }  // uniform per workgroup
  let lid = l.x;
  let t0 = tile * ${TILE}u;
  // coalesced load; slots past n get key 0xffffffff (digit 15): they sit at the end of the tile
  // in thread order, so they rank after every real element and are never written
  for (var j = 0u; j < ${ITEMS}u; j++) {
    let i = j * ${WG}u + lid;
    let g = t0 + i;
    if (g < p.n) {
      sk[i] = min(kin[g], p.maxKey);
      sv[i] = ${iota ? 'g' : 'vin[g]'};
    } else {
      sk[i] = 0xffffffffu;
      sv[i] = 0u;
    }
  }
  if (lid < ${BUCKETS}u) { gbase[lid] = offs[lid * p.tiles + tile]; }
  for (var w = 0u; w < ${BUCKETS / 2}u; w++) { cnt[w * ${WG}u + lid] = 0u; }
  workgroupBarrier();
  // this thread's elements are tile slots lid*ITEMS .. lid*ITEMS+ITEMS-1, in order
  var k: array<u32, ${ITEMS}>;
  var v: array<u32, ${ITEMS}>;
  for (var j = 0u; j < ${ITEMS}u; j++) {
    k[j] = sk[lid * ${ITEMS}u + j];
    v[j] = sv[lid * ${ITEMS}u + j];
    let d = digit(k[j]);
    cnt[(d >> 1u) * ${WG}u + lid] += 1u << ((d & 1u) * 16u);
  }
  var own: array<u32, ${BUCKETS / 2}>;
  for (var w = 0u; w < ${BUCKETS / 2}u; w++) { own[w] = cnt[w * ${WG}u + lid]; }
  workgroupBarrier();  // the scan reads other threads' counts
  // inclusive scan over threads of the packed counters (a tile holds <= 1024 < 2^16 per digit)
  for (var off = 1u; off < ${WG}u; off <<= 1u) {
    var add: array<u32, ${BUCKETS / 2}>;
    for (var w = 0u; w < ${BUCKETS / 2}u; w++) { add[w] = 0u; }
    if (lid >= off) {
      for (var w = 0u; w < ${BUCKETS / 2}u; w++) { add[w] = cnt[w * ${WG}u + lid - off]; }
    }
    workgroupBarrier();
    for (var w = 0u; w < ${BUCKETS / 2}u; w++) { cnt[w * ${WG}u + lid] += add[w]; }
    workgroupBarrier();
  }
  // tile totals per digit sit in the last thread's column; their exclusive scan = lstart
  if (lid < ${BUCKETS}u) {
    var s = 0u;
    for (var d = 0u; d < lid; d++) { s += (cnt[(d >> 1u) * ${WG}u + ${WG - 1}u] >> ((d & 1u) * 16u)) & 0xffffu; }
    lstart[lid] = s;
  }
  workgroupBarrier();
  // inclusive -> exclusive; the column is then this thread's running rank per digit
  for (var w = 0u; w < ${BUCKETS / 2}u; w++) { cnt[w * ${WG}u + lid] -= own[w]; }
  for (var j = 0u; j < ${ITEMS}u; j++) {
    let d = digit(k[j]);
    let c = (d >> 1u) * ${WG}u + lid;
    let sh = (d & 1u) * 16u;
    let slot = lstart[d] + ((cnt[c] >> sh) & 0xffffu);
    cnt[c] += 1u << sh;
    sk[slot] = k[j];
    sv[slot] = v[j];
  }
  workgroupBarrier();
  // slot i of digit d goes to gbase[d] + (i - lstart[d]): runs of a digit are written contiguously
  let valid = min(${TILE}u, p.n - t0);
  for (var j = 0u; j < ${ITEMS}u; j++) {
    let i = j * ${WG}u + lid;
    if (i < valid) {
      let key = sk[i];
      let d = digit(key);
      let dst = gbase[d] + i - lstart[d];
      kout[dst] = key;
      vout[dst] = sv[i];
    }
  }
}`;
}

export interface SortOptions {
  /** keys are < 2^keyBits (1..32, default 32); larger keys saturate to 2^keyBits - 1 */
  keyBits?: number;
}

/** Radix passes a sort of `keyBits`-bit keys runs (each 3-5 dispatches, see the header). */
export const sortPasses = (keyBits: number): number => Math.ceil(keyBits / BITS);

/**
 * Stable sort of (key, value) pairs by key. Without `values` the payload is the input index
 * (valuesOut is the sorting permutation). Outputs must not overlap inputs. keysOut may be a
 * scratch tensor the caller ignores.
 */
export async function sortPairs(
  gpu: Gpu,
  o: { keysOut: Tensor; valuesOut: Tensor },
  i: { keys: Tensor; values?: Tensor },
  opts: SortOptions = {},
): Promise<void> {
  const op = 'sortPairs';
  const keyBits = opts.keyBits ?? 32;
  if (!Number.isInteger(keyBits) || keyBits < 1 || keyBits > 32) throw new ShapeError(`${op}: keyBits = ${keyBits}, need an integer in 1..32`);
  const n = i.keys.size;
  expectShape(op, 'keys', i.keys, [n]);
  expectDtype(op, 'keys', i.keys, ['u32']);
  for (const [what, t] of [['keysOut', o.keysOut], ['valuesOut', o.valuesOut], ...(i.values ? [['values', i.values] as const] : [])] as const) {
    expectShape(op, what, t, [n]);
    expectDtype(op, what, t, ['u32']);
  }
  for (const out of [o.keysOut, o.valuesOut]) {
    expectDisjoint(op, out, i.keys);
    if (i.values) expectDisjoint(op, out, i.values);
  }
  expectDisjoint(op, o.keysOut, o.valuesOut);
  if (n === 0) return;
  const tiles = Math.ceil(n / TILE);
  const grid = grid1d(gpu, tiles);
  const maxKey = keyBits === 32 ? 0xffffffff : 2 ** keyBits - 1;
  const passes = sortPasses(keyBits);
  const hist = gpu.scratch.take([BUCKETS * tiles], 'u32', 'sort_hist');
  const tmpK = passes > 1 ? gpu.scratch.take([n], 'u32', 'sort_keys') : null;
  const tmpV = passes > 1 ? gpu.scratch.take([n], 'u32', 'sort_values') : null;
  try {
    let kin: Tensor = i.keys;
    let vin: Tensor | null = i.values ?? null;
    for (let pass = 0; pass < passes; pass++) {
      // ping-pong so that the last pass lands in the outputs
      const toOut = (passes - 1 - pass) % 2 === 0;
      const kout = toOut ? o.keysOut : tmpK!;
      const vout = toOut ? o.valuesOut : tmpV!;
      const values = { n, tiles, shift: pass * BITS, maxKey };
      await launch(gpu, { name: 'sort_radix_hist', wgsl: HIST_WGSL, storage: [hist, kin], params: SORT_PARAMS, values, workgroups: grid });
      await scanExclusive(gpu, hist, BUCKETS * tiles);
      await launch(gpu, {
        name: vin ? 'sort_radix_scatter' : 'sort_radix_scatter_iota',
        wgsl: scatterWgsl(!vin),
        storage: vin ? [kout, vout, hist, kin, vin] : [kout, vout, hist, kin],
        params: SORT_PARAMS,
        values,
        workgroups: grid,
      });
      kin = kout;
      vin = vout;
    }
  } finally {
    hist.dispose();
    tmpK?.dispose();
    tmpV?.dispose();
  }
}

// ---------------------------------------------------------------- segments

const SEG_WG = 256;
const SEG_PARAMS: ParamSpec = [['n', 'u32']];

const SEG_FLAGS_WGSL = /* wgsl */ `
${header(
  [
    { name: 'flag', type: 'u32', access: 'read_write' },
    { name: 'keys', type: 'u32', access: 'read' },
  ],
  SEG_PARAMS,
)}
@compute @workgroup_size(${SEG_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let i = (wid.x + wid.y * nwg.x) * ${SEG_WG}u + l.x;
  if (i >= p.n) { return; }
  flag[i] = select(0u, 1u, i == 0u || keys[i] != keys[i - 1u]);
}`;

const SEG_WRITE_WGSL = /* wgsl */ `
${header(
  [
    { name: 'starts', type: 'u32', access: 'read_write' },
    { name: 'count', type: 'u32', access: 'read_write' },
    { name: 'rank', type: 'u32', access: 'read' },
    { name: 'keys', type: 'u32', access: 'read' },
  ],
  SEG_PARAMS,
)}
@compute @workgroup_size(${SEG_WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
  let i = (wid.x + wid.y * nwg.x) * ${SEG_WG}u + l.x;
  if (i >= p.n) { return; }
  let head = i == 0u || keys[i] != keys[i - 1u];
  if (head) { starts[rank[i]] = i; }
  if (i == p.n - 1u) {
    let s = rank[i] + select(0u, 1u, head);
    count[0] = s;
    starts[s] = p.n;
  }
}`;

/**
 * For keys sorted so that equal keys are adjacent: starts[j] = first index of run j, starts[count]
 * = n, count[0] = number of runs. starts has n + 1 entries; those past count are left as they were.
 */
export async function segmentStarts(gpu: Gpu, o: { starts: Tensor; count: Tensor }, i: { keys: Tensor }): Promise<void> {
  const op = 'segmentStarts';
  const n = i.keys.size;
  expectShape(op, 'keys', i.keys, [n]);
  expectShape(op, 'starts', o.starts, [n + 1]);
  expectShape(op, 'count', o.count, [1]);
  for (const [what, t] of [['keys', i.keys], ['starts', o.starts], ['count', o.count]] as const) expectDtype(op, what, t, ['u32']);
  expectDisjoint(op, o.starts, o.count);
  if (n === 0) {
    gpu.write(o.count, [0]);
    gpu.write(o.starts, [0]);
    return;
  }
  const rank = gpu.scratch.take([n], 'u32', 'segment_rank');
  try {
    const grid = grid1d(gpu, Math.ceil(n / SEG_WG));
    await launch(gpu, { name: 'segment_flags', wgsl: SEG_FLAGS_WGSL, storage: [rank, i.keys], params: SEG_PARAMS, values: { n }, workgroups: grid });
    await scanExclusive(gpu, rank, n);
    await launch(gpu, { name: 'segment_starts', wgsl: SEG_WRITE_WGSL, storage: [o.starts, o.count, rank, i.keys], params: SEG_PARAMS, values: { n }, workgroups: grid });
  } finally {
    rank.dispose();
  }
}
