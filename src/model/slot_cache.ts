// the KV cache of a server's decoding batch: `slots` rows that each hold one sequence at its own
// length, joining and leaving at any step (Transformer.decodeSlots runs one new token of each).
//
// layout per block l, (slots, F_l + max, NKV, HS) f32 for keys and for values: per slot, rows
// [0, F_l) hold its front (Memory³'s sink and memories, or nothing) of which the first f_{l,s}
// count, and rows [F_l, F_l + n_s) its context. unlike the lockstep KvCache (transformer.ts), a
// front of another size moves nothing (the context starts at F_l whatever the front) and rows of
// other lengths mask each other's garbage: decodeAttention reads exactly row s's keys.
//
// per step the host writes three small u32 tensors from SlotState:
//   rows (L, slots, 4)  (f_{l,s}, n_s + 1, 0, 0): the keys of the step's token (its own key included)
//   pos  (slots)        the token's RoPE position: pos0_s + n_s
//   dst  (L, slots)     the cache row its key and value go to, s (F_l + max) + F_l + n_s (SKIP_ROW when idle)
// a sequence enters a slot from a batch-1 KvCache (its prompt run by Transformer.logits, whose
// chunked prompt and fronts Memory³ reading needs): copyIntoSlot moves its front and context rows.

import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { SKIP_ROW } from '../kernels/copy/scatter_rows.ts';
import type { ModelConfig } from './config.ts';
import type { KvCache } from './transformer.ts';

export interface SlotCache {
  slots: number;
  /** context rows per slot */
  max: number;
  /** per block: the rows kept for a front (F_l), where the context starts */
  frontMax: number[];
  /** per block (slots, F_l + max, NKV, HS) f32 */
  k: Tensor[];
  v: Tensor[];
  /** the step's tensors (header) */
  rows: Tensor;
  pos: Tensor;
  dst: Tensor;
}

/** what each slot holds: the host's side of a SlotCache, which writeSlotStep turns into its step tensors */
export interface SlotState {
  /** per slot: a sequence is there */
  active: boolean[];
  /** per slot: context positions cached (n_s) */
  length: number[];
  /** per slot: the RoPE position of its context row 0 */
  pos0: number[];
  /** per block, per slot: front rows that count (f_{l,s}) */
  front: number[][];
}

export async function createSlotCache(gpu: Gpu, c: ModelConfig, o: { slots: number; max: number; frontMax?: readonly number[] }): Promise<SlotCache> {
  const { slots, max } = o;
  const L = c.layers;
  const frontMax = o.frontMax ? [...o.frontMax] : Array.from({ length: L }, () => 0);
  if (!(Number.isInteger(slots) && slots > 0 && Number.isInteger(max) && max > 0)) throw new EngramError(`slot cache: slots (${slots}) and max (${max}) must be positive integers`);
  if (frontMax.length !== L || frontMax.some((f) => !(Number.isInteger(f) && f >= 0))) throw new EngramError(`slot cache: frontMax needs a whole number >= 0 for each of the ${L} blocks, got [${frontMax.join(', ')}]`);
  const HS = c.dim / c.heads;
  const k: Tensor[] = [];
  const v: Tensor[] = [];
  for (let l = 0; l < L; l++) {
    k.push(await gpu.tensor([slots, frontMax[l]! + max, c.kvHeads, HS], 'f32', `slots.k.${l}`));
    v.push(await gpu.tensor([slots, frontMax[l]! + max, c.kvHeads, HS], 'f32', `slots.v.${l}`));
  }
  return {
    slots,
    max,
    frontMax,
    k,
    v,
    rows: await gpu.tensor([L * slots, 4], 'u32', 'slots.rows'),
    pos: await gpu.tensor([slots], 'u32', 'slots.pos'),
    dst: await gpu.tensor([L * slots], 'u32', 'slots.dst'),
  };
}

export function disposeSlotCache(s: SlotCache): void {
  for (const t of [...s.k, ...s.v, s.rows, s.pos, s.dst]) t.dispose();
}

/** an empty SlotState for the cache */
export function slotState(s: SlotCache): SlotState {
  return {
    active: Array.from({ length: s.slots }, () => false),
    length: Array.from({ length: s.slots }, () => 0),
    pos0: Array.from({ length: s.slots }, () => 0),
    front: s.frontMax.map(() => Array.from({ length: s.slots }, () => 0)),
  };
}

/** writes the step tensors for one new token in every active slot (their lengths before it) */
export function writeSlotStep(gpu: Gpu, s: SlotCache, st: SlotState): void {
  const L = s.frontMax.length;
  const rows = new Uint32Array(L * s.slots * 4);
  const pos = new Uint32Array(s.slots);
  const dst = new Uint32Array(L * s.slots).fill(SKIP_ROW);
  for (let b = 0; b < s.slots; b++) {
    if (!st.active[b]) continue;
    const n = st.length[b]!;
    if (n >= s.max) throw new EngramError(`slot cache: slot ${b} holds ${n} positions, its room; it cannot take another token`);
    pos[b] = st.pos0[b]! + n;
    for (let l = 0; l < L; l++) {
      const F = s.frontMax[l]!;
      rows.set([st.front[l]![b]!, n + 1], (l * s.slots + b) * 4);
      dst[l * s.slots + b] = b * (F + s.max) + F + n;
    }
  }
  gpu.flush(); // recorded work of the last step reads these tensors: it goes first
  gpu.device.queue.writeBuffer(s.rows.buffer, s.rows.offset, rows);
  gpu.device.queue.writeBuffer(s.pos.buffer, s.pos.offset, pos);
  gpu.device.queue.writeBuffer(s.dst.buffer, s.dst.offset, dst);
}

/**
 * moves batch row 0 of a lockstep cache (a prompt run by Transformer.logits) into `slot`: per
 * block its front rows to [0, front) and its context rows to [F_l, F_l + length); records them in st
 */
export function copyIntoSlot(gpu: Gpu, kv: KvCache, s: SlotCache, st: SlotState, slot: number): void {
  if (!(Number.isInteger(slot) && slot >= 0 && slot < s.slots)) throw new EngramError(`slot cache: slot ${slot} is not in 0..${s.slots - 1}`);
  if (kv.length > s.max) throw new EngramError(`slot cache: a sequence of ${kv.length} positions does not fit a slot of ${s.max}`);
  gpu.encode((enc) => {
    for (let l = 0; l < s.frontMax.length; l++) {
      const f = kv.front[l]!;
      if (f > s.frontMax[l]!) throw new EngramError(`slot cache: block ${l}'s front of ${f} rows passes the ${s.frontMax[l]} kept for it`);
      const row = s.k[l]!.shape[2]! * s.k[l]!.shape[3]! * 4;
      const at = slot * (s.frontMax[l]! + s.max) * row;
      for (const [from, to] of [
        [kv.k[l]!, s.k[l]!],
        [kv.v[l]!, s.v[l]!],
      ] as const) {
        if (f > 0) enc.copyBufferToBuffer(from.buffer, from.offset, to.buffer, to.offset + at, f * row);
        if (kv.length > 0) enc.copyBufferToBuffer(from.buffer, from.offset + f * row, to.buffer, to.offset + at + s.frontMax[l]! * row, kv.length * row);
      }
    }
  });
  st.active[slot] = true;
  st.length[slot] = kv.length;
  st.pos0[slot] = kv.pos0;
  s.frontMax.forEach((_, l) => (st.front[l]![slot] = kv.front[l]!));
}

/** sets `slot`'s front at block `layer`: rows x (kvHeads, headDim) f32, keys rotated, at most F_l rows */
export function setSlotFront(gpu: Gpu, s: SlotCache, st: SlotState, layer: number, slot: number, k: Float32Array, v: Float32Array): void {
  const t = s.k[layer];
  if (!t) throw new EngramError(`slot cache: no block ${layer}`);
  const width = t.shape[2]! * t.shape[3]!;
  const rows = k.length / width;
  if (k.length !== v.length || !Number.isInteger(rows)) throw new EngramError(`slot cache: front keys (${k.length}) and values (${v.length}) must be the same whole number of rows of ${width}`);
  if (rows > s.frontMax[layer]!) throw new EngramError(`slot cache: ${rows} front rows for block ${layer}, which has room for ${s.frontMax[layer]}`);
  gpu.flush();
  const at = slot * (s.frontMax[layer]! + s.max) * width * 4;
  if (rows > 0) {
    gpu.device.queue.writeBuffer(t.buffer, t.offset + at, k as Float32Array<ArrayBuffer>);
    gpu.device.queue.writeBuffer(s.v[layer]!.buffer, s.v[layer]!.offset + at, v as Float32Array<ArrayBuffer>);
  }
  st.front[layer]![slot] = rows;
}
