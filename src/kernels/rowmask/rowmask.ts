// row masks: which rows of a (chunked) table were read, for the value table's sparse update.
//
//   markRows    masks[c][r - c R] = 1 for every r in idx that falls in chunk c   (rows r < rows)
//   clearRows   every mask entry = 0
//
// masks are u32, one entry per row, split in chunks of R rows like the table (see
// kernels/membag). thread mapping: one thread per idx entry, one dispatch per chunk; the
// stores are atomic (many tokens read the same row; all store the same 1). idx entries past
// the table mark nothing.

import type { Gpu } from '../../gpu/device.ts';
import { ShapeError } from '../../gpu/errors.ts';
import type { Tensor } from '../../gpu/tensor.ts';
import { expectDtype, grid1d, launch, type ParamSpec } from '../kernel.ts';

const WG = 256;
const PARAMS: ParamSpec = [
  ['n', 'u32'],
  ['row', 'u32'],
  ['first', 'u32'], // the chunk's first row
  ['count', 'u32'], // its rows
];

const MARK_WGSL = /* wgsl */ `
struct Params { n: u32, row: u32, first: u32, count: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> mask: array<atomic<u32>>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  let i = g.x + g.y * p.row;
  if (i >= p.n) { return; }
  let r = idx[i] - p.first;     // wraps past the chunk when idx < first
  if (r < p.count) { atomicStore(&mask[r], 1u); }
}`;

/** Sets the mask entry of every row idx reads (masks: one u32 chunk per R rows of the table). */
export async function markRows(gpu: Gpu, masks: readonly Tensor[], rowsPerChunk: number, idx: Tensor): Promise<void> {
  const op = 'markRows';
  expectDtype(op, 'idx', idx, ['u32']);
  masks.forEach((m, c) => {
    expectDtype(op, `masks[${c}]`, m, ['u32']);
    if (m.shape.length !== 1 || (c < masks.length - 1 && m.size !== rowsPerChunk) || m.size > rowsPerChunk) {
      throw new ShapeError(`${op}: masks[${c}] ${m} must be [${rowsPerChunk}] (the last chunk may be shorter)`);
    }
  });
  if (idx.size === 0) return;
  const [x, y] = grid1d(gpu, Math.ceil(idx.size / WG));
  for (const [c, mask] of masks.entries()) {
    await launch(gpu, {
      name: 'mark_rows',
      wgsl: MARK_WGSL,
      storage: [mask, idx],
      params: PARAMS,
      values: { n: idx.size, row: x * WG, first: c * rowsPerChunk, count: mask.size },
      workgroups: [x, y],
    });
  }
}

/** Zeroes every mask entry. */
export function clearRows(gpu: Gpu, masks: readonly Tensor[]): void {
  gpu.encode((enc) => {
    for (const m of masks) enc.clearBuffer(m.buffer, m.offset, m.byteLength);
  });
}
