// the memory value table sharded by columns over the GPUs of one host (Memory Layers at Scale;
// spec ../shared/specs/memory-layers.md §6): shard g holds columns [g d/G, (g+1) d/G) of every row,
// as a ValueTable of its own on its own Gpu. a read's indices and weights go to every shard, each
// shard reads its columns for all tokens, and the column blocks come back to the model's GPU.
// WebGPU has no copies between devices, so every exchange goes through host memory: a read back
// (mapAsync) on one device, a writeBuffer on another.
//
//   forward   y (T, d) = [y_0 | y_1 | ... ], y_g (T, d/G) = membag over shard g's columns: the blocks
//             land in a (G, T, d/G) tensor on the model's GPU, whose first two axes swapped are y
//             exchange: idx (T, B) u32 and w (T, B) f32 to every other shard; their y_g back
//   backward  dout's column blocks by the same swap; dV_g += the scatter of w * dout_g on each shard;
//             dw (T, B) = sum over g of dw_g, each shard's partial dots over its columns
//             exchange: the other shards' dout blocks out; their dw_g back
// a shard on the model's GPU itself (the first, as Transformer.create places it) reads the bag where
// it is and writes its block in place: only the other shards' data goes through the host. the shards
// compute at once: each gets its work before any result is awaited.
// numerics: y and dV are the one-GPU kernels' sums, column by column in the same order: equal to
// one GPU's bit for bit. dw adds the other shards' partial dots on the host in shard order (f64,
// rounded once to f32), then to the local shard's on the GPU: equal to one GPU's within f32
// rounding. init: each shard holds its columns of the one-GPU table's init (ValueTable columns), so
// a seed gives the same table on any number of GPUs.
// time: `exchange` counts the host's seconds moving data (read backs, uploads) and the bytes moved;
// `waiting` the seconds awaiting compute: the model's GPU's work before a read back, and the other
// shards' reads of y_g and dw_g (which include their compute).

import type { Gpu } from '../gpu/device.ts';
import { bytesPerElement, type DType } from '../gpu/dtype.ts';
import { EngramError, ShapeError } from '../gpu/errors.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { addForward } from '../kernels/add/add.ts';
import { membagBackward, membagForward } from '../kernels/membag/membag.ts';
import { swapAxes } from '../kernels/transpose/transpose.ts';
import { ValueTable, type ValueTableOptions } from './value_table.ts';

export interface ValueShard {
  gpu: Gpu;
  table: ValueTable;
  /** the first of the whole table's columns this shard holds */
  start: number;
}

/** what a forward leaves for its backward: the bag (idx, w) on every shard */
export interface ShardedBag {
  idx: readonly Tensor[];
  w: readonly Tensor[];
  dispose(): void;
}

export class ShardedValueTable {
  /** host seconds and bytes of the exchanges so far (see the header); `waiting`: seconds awaiting the shards' results */
  readonly time = { exchange: 0, waiting: 0, bytes: 0 };

  private constructor(
    readonly rows: number,
    readonly dim: number,
    readonly shards: readonly ValueShard[],
  ) {}

  /** the table of `o` sharded by columns over `gpus` (one shard each, in order); o.dim a multiple of their number */
  static async create(gpus: readonly Gpu[], o: Omit<ValueTableOptions, 'columns'>): Promise<ShardedValueTable> {
    const G = gpus.length;
    if (G < 1) throw new EngramError('ShardedValueTable: no GPUs given');
    if (!(Number.isInteger(o.dim) && o.dim > 0 && o.dim % G === 0)) {
      throw new EngramError(`ShardedValueTable: the value width ${o.dim} must be a multiple of the ${G} GPUs (each holds dim / ${G} columns)`);
    }
    const cols = o.dim / G;
    if ((o.dtype ?? 'bf16') !== 'f32' && cols % 2 !== 0) {
      throw new EngramError(`ShardedValueTable: each of the ${G} shards would hold ${cols} columns of ${o.dtype ?? 'bf16'}; 16-bit values need an even width per shard (two to a 32-bit word)`);
    }
    const shards: ValueShard[] = [];
    for (const [g, gpu] of gpus.entries()) {
      shards.push({ gpu, start: g * cols, table: await ValueTable.create(gpu, { ...o, dim: cols, columns: { start: g * cols, of: o.dim } }) });
    }
    return new ShardedValueTable(o.rows, o.dim, shards);
  }

  /** out (T, d) f32 on `gpu` (the model's) = the read of idx (T, B) u32 and w (T, B) f32 there, over every shard */
  async forward(gpu: Gpu, out: Tensor, idx: Tensor, w: Tensor): Promise<ShardedBag> {
    const [T, B] = this.checkBag('forward', idx, w);
    if (!(out.dtype === 'f32' && out.shape.length === 2 && out.shape[0] === T && out.shape[1] === this.dim)) {
      throw new ShapeError(`ShardedValueTable.forward: out ${out} must be f32 [${T}, ${this.dim}]`);
    }
    const G = this.shards.length;
    const c = this.dim / G;
    const local = this.local(gpu);
    // the model's GPU's work so far (the bag's making) counts as waiting, not as the exchange
    let t0 = performance.now();
    await gpu.sync();
    this.time.waiting += (performance.now() - t0) / 1000;
    t0 = performance.now();
    const bag = await this.bagFor(gpu, T, B, idx, w, local);
    // the blocks (G, T, c) on the model's GPU, then out (T, G, c) = their first two axes swapped
    const blocks = gpu.scratch.take([G, T, c], 'f32', 'shard_blocks');
    const ys: Tensor[] = [];
    try {
      for (const [g, s] of this.shards.entries()) {
        const y = local && g === 0 ? blocks.leading([T, c]) : s.gpu.scratch.take([T, c], 'f32', 'shard_y');
        if (!(local && g === 0)) ys.push(y);
        await membagForward(s.gpu, { out: y }, { values: s.table.values, idx: bag.idx[g]!, w: bag.w[g]! });
      }
      this.time.exchange += (performance.now() - t0) / 1000;
      t0 = performance.now();
      const remote = this.shards.slice(local ? 1 : 0);
      const got = await Promise.all(remote.map((s, j) => s.gpu.readBytes(ys[j]!.buffer, ys[j]!.offset, ys[j]!.byteLength)));
      this.time.waiting += (performance.now() - t0) / 1000;
      t0 = performance.now();
      got.forEach((bytes, j) => gpu.writeRange(blocks.buffer, blocks.offset + (j + (local ? 1 : 0)) * T * c * 4, new Uint8Array(bytes)));
      await swapAxes(gpu, { out: out.reshape([T, G, c]) }, { x: blocks });
      this.time.bytes += 2 * got.reduce((n, b) => n + b.byteLength, 0);
      this.time.exchange += (performance.now() - t0) / 1000;
      return bag;
    } catch (e) {
      bag.dispose();
      throw e;
    } finally {
      for (const y of ys) y.dispose();
      blocks.dispose();
    }
  }

  /**
   * the backward of a forward's read: dw (T, B) f32 on `gpu` (optional) and every shard's value
   * gradient (+=) from dout (T, d) f32 on `gpu`
   */
  async backward(gpu: Gpu, o: { dw?: Tensor }, bag: ShardedBag, dout: Tensor): Promise<void> {
    const [T, B] = bag.idx[0]!.shape as [number, number];
    if (!(dout.dtype === 'f32' && dout.shape.length === 2 && dout.shape[0] === T && dout.shape[1] === this.dim)) {
      throw new ShapeError(`ShardedValueTable.backward: dout ${dout} must be f32 [${T}, ${this.dim}]`);
    }
    if (o.dw && !(o.dw.dtype === 'f32' && o.dw.shape.length === 2 && o.dw.shape[0] === T && o.dw.shape[1] === B)) {
      throw new ShapeError(`ShardedValueTable.backward: dw ${o.dw} must be f32 [${T}, ${B}]`);
    }
    const G = this.shards.length;
    const c = this.dim / G;
    const local = this.local(gpu);
    // dout's column blocks (G, T, c) on the model's GPU: block g is shard g's dout
    const blocks = gpu.scratch.take([G, T, c], 'f32', 'shard_dout_blocks');
    await swapAxes(gpu, { out: blocks }, { x: dout.reshape([T, G, c]) });
    let t0 = performance.now();
    await gpu.sync();
    this.time.waiting += (performance.now() - t0) / 1000;
    t0 = performance.now();
    const taken: Tensor[] = [blocks];
    try {
      const first = local ? 1 : 0;
      const remote = this.shards.slice(first);
      const got = await Promise.all(remote.map((_, j) => gpu.readBytes(blocks.buffer, blocks.offset + (j + first) * T * c * 4, T * c * 4)));
      const dws: Tensor[] = [];
      for (const [g, s] of this.shards.entries()) {
        const mine = local && g === 0;
        let d = blocks.leading([T, c]);
        if (!mine) {
          d = s.gpu.scratch.take([T, c], 'f32', 'shard_dout');
          taken.push(d);
          s.gpu.writeBytes(d, new Uint8Array(got[g - first]!));
        }
        // the local shard's dw goes straight into dw; the others' are added to it below
        const dw = o.dw && mine ? o.dw : o.dw ? s.gpu.scratch.take([T, B], 'f32', 'shard_dw') : undefined;
        if (dw && !mine) {
          taken.push(dw);
          dws.push(dw);
        }
        await membagBackward(s.gpu, { ...(dw ? { dw } : {}), dvalues: s.table.grads }, { values: s.table.values, idx: bag.idx[g]!, w: bag.w[g]!, dout: d });
      }
      this.time.bytes += 2 * got.reduce((n, b) => n + b.byteLength, 0);
      this.time.exchange += (performance.now() - t0) / 1000;
      if (!o.dw || dws.length === 0) return;
      t0 = performance.now();
      const parts = (await Promise.all(remote.map((s, j) => s.gpu.read(dws[j]!)))) as Float32Array[];
      this.time.waiting += (performance.now() - t0) / 1000;
      t0 = performance.now();
      // the remote partial dots summed on the host (in shard order), then added to the local shard's on the GPU
      const sum = new Float32Array(T * B);
      for (let i = 0; i < sum.length; i++) {
        let x = 0;
        for (const p of parts) x += p[i]!;
        sum[i] = x;
      }
      if (local) {
        const add = gpu.scratch.take([T, B], 'f32', 'shard_dw_sum');
        taken.push(add);
        gpu.writeBytes(add, new Uint8Array(sum.buffer));
        await addForward(gpu, { out: o.dw }, { a: o.dw, b: add });
      } else gpu.writeBytes(o.dw, new Uint8Array(sum.buffer));
      this.time.bytes += (parts.length + 1) * sum.byteLength;
      this.time.exchange += (performance.now() - t0) / 1000;
    } finally {
      for (const t of taken) t.dispose();
    }
  }

  /** whether shard 0 is on the model's GPU: its bag, output block and dout block then stay there */
  private local(gpu: Gpu): boolean {
    return this.shards[0]!.gpu === gpu;
  }

  get dtype(): DType {
    return this.shards[0]!.table.dtype;
  }

  /** the whole table's values as stored (rows x dim, row-major, its dtype's bytes): every shard's columns read back */
  gather(): Promise<Uint8Array> {
    return this.gatherOf((s) => s.table.params.map((p) => p.value), bytesPerElement(this.dtype));
  }

  /** sets the whole table from its stored bytes (as gather gives them) */
  scatter(bytes: Uint8Array): void {
    const parts = this.splitColumns(bytes, bytesPerElement(this.dtype), 'scatter');
    this.shards.forEach((s, g) => s.table.params.forEach((p, c) => s.gpu.writeBytes(p.value, parts[g]![c]!)));
  }

  /**
   * the whole table's rows x dim (row-major, `e` bytes an element) from tensors laid out as the
   * shards' chunks of values, `of(shard, g)` one per chunk (the values, or an optimizer's state of
   * them), read back and their columns put together
   */
  async gatherOf(of: (s: ValueShard, g: number) => readonly Tensor[], e: number): Promise<Uint8Array> {
    const parts = await Promise.all(this.shards.map((s, g) => Promise.all(of(s, g).map((t) => s.gpu.readRaw(t)))));
    const out = new Uint8Array(this.rows * this.dim * e);
    this.eachRow(e, (g, c, at, whole, w) => out.set(parts[g]![c]!.subarray(at, at + w), whole));
    return out;
  }

  /** the reverse of gatherOf: each shard's chunks' bytes ([shard][chunk]) from the whole table's rows x dim of `e` bytes */
  splitColumns(bytes: Uint8Array, e: number, what = 'splitColumns'): Uint8Array[][] {
    if (bytes.byteLength !== this.rows * this.dim * e) {
      throw new ShapeError(`ShardedValueTable.${what}: ${bytes.byteLength} bytes for ${this.rows} rows of ${this.dim} elements of ${e} bytes (${this.rows * this.dim * e})`);
    }
    const parts = this.shards.map((s) => s.table.params.map((p) => new Uint8Array(p.value.shape[0]! * s.table.dim * e)));
    this.eachRow(e, (g, c, at, whole, w) => parts[g]![c]!.set(bytes.subarray(whole, whole + w), at));
    return parts;
  }

  /** every shard's chunk rows: fn(shard, chunk, byte offset in the chunk, byte offset in the whole table, bytes of the row's columns) */
  private eachRow(e: number, fn: (g: number, c: number, at: number, whole: number, w: number) => void): void {
    for (const [g, s] of this.shards.entries()) {
      const w = s.table.dim * e;
      let r0 = 0;
      for (const [c, p] of s.table.params.entries()) {
        const n = p.value.shape[0]!;
        for (let r = 0; r < n; r++) fn(g, c, r * w, ((r0 + r) * this.dim + s.start) * e, w);
        r0 += n;
      }
    }
  }

  /** Marks the rows a forward's bag reads on every shard, when the tables track reads. */
  async markReads(bag: ShardedBag): Promise<void> {
    for (const [g, s] of this.shards.entries()) await s.table.markReads(s.gpu, bag.idx[g]!);
  }

  async zeroGrad(): Promise<void> {
    for (const s of this.shards) await s.table.zeroGrad(s.gpu);
  }

  dispose(): void {
    for (const s of this.shards) s.table.dispose();
  }

  private checkBag(op: string, idx: Tensor, w: Tensor): [number, number] {
    if (!(idx.dtype === 'u32' && idx.shape.length === 2 && w.dtype === 'f32' && w.shape.length === 2 && idx.shape[0] === w.shape[0] && idx.shape[1] === w.shape[1])) {
      throw new ShapeError(`ShardedValueTable.${op}: idx ${idx} must be u32 [T, B] and w ${w} f32 of the same shape`);
    }
    return idx.shape as [number, number];
  }

  /** the bag on every shard: read back once and uploaded to each shard not on the model's GPU (the local one reads it where it is) */
  private async bagFor(gpu: Gpu, T: number, B: number, idx: Tensor, w: Tensor, local: boolean): Promise<ShardedBag> {
    const made: Tensor[] = [];
    const dispose = () => {
      for (const t of made) t.dispose();
    };
    try {
      const idxs: Tensor[] = [];
      const ws: Tensor[] = [];
      const remote = this.shards.length - (local ? 1 : 0);
      const [ib, wb] = remote > 0 ? await Promise.all([gpu.readBytes(idx.buffer, idx.offset, idx.byteLength), gpu.readBytes(w.buffer, w.offset, w.byteLength)]) : [];
      for (const [g, s] of this.shards.entries()) {
        if (local && g === 0) {
          idxs.push(idx);
          ws.push(w);
          continue;
        }
        const i = s.gpu.scratch.take([T, B], 'u32', 'shard_idx');
        made.push(i);
        const x = s.gpu.scratch.take([T, B], 'f32', 'shard_w');
        made.push(x);
        s.gpu.writeBytes(i, new Uint8Array(ib!));
        s.gpu.writeBytes(x, new Uint8Array(wb!));
        idxs.push(i);
        ws.push(x);
      }
      if (remote > 0) this.time.bytes += (1 + remote) * (ib!.byteLength + wb!.byteLength);
      return { idx: idxs, w: ws, dispose };
    } catch (e) {
      dispose();
      throw e;
    }
  }
}
