// the memory value table sharded by columns over the GPUs of one host (Memory Layers at Scale;
// spec ../shared/specs/memory-layers.md §6): shard g holds columns [g d/G, (g+1) d/G) of every row,
// as a ValueTable of its own on its own Gpu. a read's indices and weights go to every shard, each
// shard reads its columns for all tokens, and the column blocks come back to the model's GPU.
// WebGPU has no copies between devices, so every exchange goes through host memory: a read back
// into a kept staging buffer on one device, mapped, and uploaded from there through a kept mapped
// buffer on the other (Gpu.readView, writeRange: one host copy; gpu/staging.ts).
//
//   forward   y (T, d) = [y_0 | y_1 | ... ], y_g (T, d/G) = membag over shard g's columns: the blocks
//             land in a (G, T, d/G) tensor on the model's GPU, whose first two axes swapped are y
//             exchange: idx (T, B) u32 and w (T, B) f32 to every other shard; their y_g back
//   backward  dout's column blocks by the same swap; dV_g += the scatter of w * dout_g on each shard;
//             dw (T, B) = sum over g of dw_g, each shard's partial dots over its columns
//             exchange: the other shards' dout blocks out; their dw_g back
// a shard on the model's GPU itself (the first, as Transformer.create places it) reads the bag where
// it is and writes its block in place: only the other shards' data goes through the host.
// overlap: every device gets its work before anything is awaited. the model's GPU reads its own
// shard while the bag travels and the other shards read (forward), and computes its dw and value
// gradient while the dout blocks travel (backward); another shard computes its partial dw first,
// sends it, and scatters its value gradient while the partial travels.
// numerics: y and dV are the one-GPU kernels' sums, column by column in the same order: equal to
// one GPU's bit for bit. dw is the local shard's partial dots plus the others', added in f32 on the
// model's GPU in shard order: equal to one GPU's within f32 rounding.
// exchange 'bf16' (an option; f32 by default): the y and dout blocks travel as bf16, at half their
// bytes. every shard, the local one too, writes its y block rounded to bf16 once (membag's 16-bit
// out), and reads dout rounded to bf16 once: y is one GPU's y rounded to bf16, and dV and dw are
// one GPU's for that rounded dout, bit for bit and within f32 rounding as above. init: each shard holds its
// columns of the one-GPU table's init (ValueTable columns), so a seed gives the same table on any
// number of GPUs.
// time: `exchange` counts the host's seconds copying data into uploads, `bytes` the bytes read back
// and uploaded; `waiting` the rest of forward's and backward's wall time (awaiting the devices'
// work and the read backs' round trips).

import type { Gpu } from '../gpu/device.ts';
import { bytesPerElement, type DType } from '../gpu/dtype.ts';
import { EngramError, ShapeError } from '../gpu/errors.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { addForward, scale } from '../kernels/add/add.ts';
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

/** how a model's value table is sharded (Transformer.create, loadModel, resumeTraining) */
export interface ValueSharding {
  /** the GPUs the table is sharded over, the model's first */
  valueGpus?: readonly Gpu[];
  /** the dtype of the column blocks exchanged (y and dout; see the header): f32 (default) or bf16 */
  valueExchange?: ExchangeDType;
}

export type ExchangeDType = 'f32' | 'bf16';

export class ShardedValueTable {
  /** host seconds and bytes of the exchanges so far (see the header); `waiting`: seconds awaiting the shards' results */
  readonly time = { exchange: 0, waiting: 0, bytes: 0 };

  private constructor(
    readonly rows: number,
    readonly dim: number,
    readonly shards: readonly ValueShard[],
    /** the dtype of the column blocks exchanged */
    readonly exchange: ExchangeDType,
  ) {}

  /**
   * the table of `o` sharded by columns over `gpus` (one shard each, in order); o.dim a multiple of
   * their number. exchange: the column blocks' dtype on the way (default f32)
   */
  static async create(gpus: readonly Gpu[], o: Omit<ValueTableOptions, 'columns'>, exchange: ExchangeDType = 'f32'): Promise<ShardedValueTable> {
    const G = gpus.length;
    if (G < 1) throw new EngramError('ShardedValueTable: no GPUs given');
    if (!(Number.isInteger(o.dim) && o.dim > 0 && o.dim % G === 0)) {
      throw new EngramError(`ShardedValueTable: the value width ${o.dim} must be a multiple of the ${G} GPUs (each holds dim / ${G} columns)`);
    }
    const cols = o.dim / G;
    if ((o.dtype ?? 'bf16') !== 'f32' && cols % 2 !== 0) {
      throw new EngramError(`ShardedValueTable: each of the ${G} shards would hold ${cols} columns of ${o.dtype ?? 'bf16'}; 16-bit values need an even width per shard (two to a 32-bit word)`);
    }
    if (exchange !== 'f32' && exchange !== 'bf16') throw new EngramError(`ShardedValueTable: exchange must be 'f32' or 'bf16', got '${String(exchange)}'`);
    if (exchange === 'bf16' && cols % 2 !== 0) {
      throw new EngramError(`ShardedValueTable: bf16 exchanges need an even width per shard (two to a 32-bit word); each of the ${G} shards would hold ${cols} columns`);
    }
    const shards: ValueShard[] = [];
    try {
      for (const [g, gpu] of gpus.entries()) {
        shards.push({ gpu, start: g * cols, table: await ValueTable.create(gpu, { ...o, dim: cols, columns: { start: g * cols, of: o.dim } }) });
      }
    } catch (e) {
      // the shards made so far are freed (a shard that ran out of memory freed its own part)
      for (const s of shards) s.table.dispose();
      throw e;
    }
    return new ShardedValueTable(o.rows, o.dim, shards, exchange);
  }

  /** out (T, d) f32 on `gpu` (the model's) = the read of idx (T, B) u32 and w (T, B) f32 there, over every shard */
  async forward(gpu: Gpu, out: Tensor, idx: Tensor, w: Tensor): Promise<ShardedBag> {
    const [T, B] = this.checkBag('forward', idx, w);
    if (!(out.dtype === 'f32' && out.shape.length === 2 && out.shape[0] === T && out.shape[1] === this.dim)) {
      throw new ShapeError(`ShardedValueTable.forward: out ${out} must be f32 [${T}, ${this.dim}]`);
    }
    const { G, c, local, others } = this.layout(gpu);
    const timed = this.timed();
    const xdt = this.exchange;
    const bag = this.bagOn(T, B, idx, w, local);
    // the blocks (G, T, c) on the model's GPU, then out (T, G, c) = their first two axes swapped
    const blocks = gpu.scratch.take([G, T, c], xdt, 'shard_blocks');
    const ys: Tensor[] = [];
    try {
      // the bag's read backs go first in the model GPU's queue, the local shard's read after them:
      // it runs while the bag travels and the other shards read
      const sent = awaited(Promise.all([
        this.send(at(gpu, idx), idx.byteLength, others.map((g) => at(this.shards[g]!.gpu, bag.idx[g]!))),
        this.send(at(gpu, w), w.byteLength, others.map((g) => at(this.shards[g]!.gpu, bag.w[g]!))),
      ]));
      if (local) {
        await membagForward(gpu, { out: blocks.leading([T, c]) }, { values: this.shards[0]!.table.values, idx, w });
        gpu.flush();
      }
      await sent;
      const back: Promise<void>[] = [];
      for (const g of others) {
        const s = this.shards[g]!;
        const y = s.gpu.scratch.take([T, c], xdt, 'shard_y');
        ys.push(y);
        await membagForward(s.gpu, { out: y }, { values: s.table.values, idx: bag.idx[g]!, w: bag.w[g]! });
        back.push(awaited(this.send(at(s.gpu, y), y.byteLength, [at(gpu, blocks, g * y.byteLength)])));
      }
      await Promise.all(back);
      await this.unblock(gpu, out, blocks);
      return bag;
    } catch (e) {
      bag.dispose();
      throw e;
    } finally {
      for (const y of ys) y.dispose();
      blocks.dispose();
      timed();
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
    const { G, c, local, others } = this.layout(gpu);
    const timed = this.timed();
    const xdt = this.exchange;
    // dout's column blocks (G, T, c) on the model's GPU: block g is shard g's dout
    const blocks = gpu.scratch.take([G, T, c], xdt, 'shard_dout_blocks');
    const taken: Tensor[] = [blocks];
    try {
      await this.block(gpu, blocks, dout);
      const douts = others.map((g) => this.shards[g]!.gpu.scratch.take([T, c], xdt, 'shard_dout'));
      taken.push(...douts);
      const size = douts[0]?.byteLength ?? 0;
      const sent = awaited(Promise.all(others.map((g, j) => this.send(at(gpu, blocks, g * size), size, [at(this.shards[g]!.gpu, douts[j]!)]))));
      // the local shard's dw and value gradient run while the other shards' douts travel
      if (local) {
        const s = this.shards[0]!;
        await membagBackward(gpu, { ...(o.dw ? { dw: o.dw } : {}), dvalues: s.table.grads }, { values: s.table.values, idx: bag.idx[0]!, w: bag.w[0]!, dout: blocks.leading([T, c]) });
        gpu.flush();
      }
      await sent;
      // each other shard: its partial dw first, sent back as soon as it is done; its value
      // gradient (the sort and scatter) after it, while the partial dots travel. without a local
      // shard the first partial goes straight into dw, the rest are added to it in shard order
      const parts: Tensor[] = [];
      const back: Promise<void>[] = [];
      for (const [j, g] of others.entries()) {
        const s = this.shards[g]!;
        const inputs = { values: s.table.values, idx: bag.idx[g]!, w: bag.w[g]!, dout: douts[j]! };
        if (o.dw) {
          const dw = s.gpu.scratch.take([T, B], 'f32', 'shard_dw');
          taken.push(dw);
          await membagBackward(s.gpu, { dw }, inputs);
          const into = !local && j === 0 ? o.dw : gpu.scratch.take([T, B], 'f32', 'shard_dw_part');
          if (into !== o.dw) {
            taken.push(into);
            parts.push(into);
          }
          back.push(awaited(this.send(at(s.gpu, dw), dw.byteLength, [at(gpu, into)])));
        }
        await membagBackward(s.gpu, { dvalues: s.table.grads }, inputs);
        s.gpu.flush();
      }
      await Promise.all(back);
      for (const p of parts) await addForward(gpu, { out: o.dw! }, { a: o.dw!, b: p });
    } finally {
      for (const t of taken) t.dispose();
      timed();
    }
  }

  /** out (T, d) f32 = blocks (G, T, c) of the exchange's dtype with their first two axes swapped (bf16: as u32 pairs, then widened) */
  private async unblock(gpu: Gpu, out: Tensor, blocks: Tensor): Promise<void> {
    const [G, T, c] = blocks.shape as [number, number, number];
    if (this.exchange === 'f32') return swapAxes(gpu, { out: out.reshape([T, G, c]) }, { x: blocks });
    const y = gpu.scratch.take([T, G * c], 'bf16', 'shard_y_bf16');
    try {
      await swapAxes(gpu, { out: y.bitcast('u32', [T, G, c / 2]) }, { x: blocks.bitcast('u32', [G, T, c / 2]) });
      await scale(gpu, { out }, { x: y });
    } finally {
      y.dispose();
    }
  }

  /** blocks (G, T, c) of the exchange's dtype = dout (T, d) f32's column blocks (bf16: rounded, then swapped as u32 pairs) */
  private async block(gpu: Gpu, blocks: Tensor, dout: Tensor): Promise<void> {
    const [G, T, c] = blocks.shape as [number, number, number];
    if (this.exchange === 'f32') return swapAxes(gpu, { out: blocks }, { x: dout.reshape([T, G, c]) });
    const d = gpu.scratch.take([T, G * c], 'bf16', 'shard_dout_bf16');
    try {
      await scale(gpu, { out: d }, { x: dout });
      await swapAxes(gpu, { out: blocks.bitcast('u32', [G, T, c / 2]) }, { x: d.bitcast('u32', [T, G, c / 2]) });
    } finally {
      d.dispose();
    }
  }

  /**
   * bytes [offset, offset + size) of one device read back once and uploaded to every target
   * straight from the mapped range (Gpu.readView: one host copy per target). the host's time in
   * the uploads counts as exchange, the bytes read and written as bytes
   */
  private async send(from: Place, size: number, to: readonly Place[]): Promise<void> {
    if (to.length === 0) return;
    await from.gpu.readView(from.buffer, from.offset, size, (bytes) => {
      const t0 = performance.now();
      for (const t of to) t.gpu.writeRange(t.buffer, t.offset, bytes);
      this.time.exchange += (performance.now() - t0) / 1000;
      this.time.bytes += size * (1 + to.length);
    });
  }

  /** starts a forward's or backward's clock: the call it returns adds its wall time, less the exchange's, to waiting */
  private timed(): () => void {
    const t0 = performance.now();
    const e0 = this.time.exchange;
    return () => {
      this.time.waiting += (performance.now() - t0) / 1000 - (this.time.exchange - e0);
    };
  }

  /**
   * G shards of c columns; `local`: whether shard 0 is on the model's GPU (its bag, output block
   * and dout block then stay there); `others`: the other shards, by index
   */
  private layout(gpu: Gpu): { G: number; c: number; local: boolean; others: number[] } {
    const G = this.shards.length;
    const local = this.shards[0]!.gpu === gpu;
    return { G, c: this.dim / G, local, others: this.shards.map((_, g) => g).filter((g) => !(local && g === 0)) };
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
    const out = new Uint8Array(this.rows * this.dim * e);
    // each chunk's rows copied straight from its mapped read back (no second copy of the table)
    await Promise.all(
      this.shards.map(async (s, g) => {
        for (const [c, t] of of(s, g).entries()) {
          await s.gpu.readView(t.buffer, t.offset, t.byteLength, (bytes) => this.chunkRows(g, c, e, (at, whole, w) => out.set(bytes.subarray(at, at + w), whole)));
        }
      }),
    );
    return out;
  }

  /** the reverse of gatherOf: each shard's chunks' bytes ([shard][chunk]) from the whole table's rows x dim of `e` bytes */
  splitColumns(bytes: Uint8Array, e: number, what = 'splitColumns'): Uint8Array[][] {
    if (bytes.byteLength !== this.rows * this.dim * e) {
      throw new ShapeError(`ShardedValueTable.${what}: ${bytes.byteLength} bytes for ${this.rows} rows of ${this.dim} elements of ${e} bytes (${this.rows * this.dim * e})`);
    }
    const parts = this.shards.map((s) => s.table.params.map((p) => new Uint8Array(p.value.shape[0]! * s.table.dim * e)));
    parts.forEach((chunks, g) => chunks.forEach((part, c) => this.chunkRows(g, c, e, (at, whole, w) => part.set(bytes.subarray(whole, whole + w), at))));
    return parts;
  }

  /** the rows of shard g's chunk c: fn(byte offset in the chunk, byte offset in the whole table, bytes of the row's columns), `e` bytes an element */
  private chunkRows(g: number, c: number, e: number, fn: (at: number, whole: number, w: number) => void): void {
    const s = this.shards[g]!;
    const w = s.table.dim * e;
    const r0 = c * s.table.rowsPerChunk;
    const n = s.table.params[c]!.value.shape[0]!;
    for (let r = 0; r < n; r++) fn(r * w, ((r0 + r) * this.dim + s.start) * e, w);
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

  /** a bag's tensors on every shard: the given ones on a local shard, fresh ones (filled by forward's sends) on the others */
  private bagOn(T: number, B: number, idx: Tensor, w: Tensor, local: boolean): ShardedBag {
    const made: Tensor[] = [];
    const idxs: Tensor[] = [];
    const ws: Tensor[] = [];
    for (const [g, s] of this.shards.entries()) {
      const mine = local && g === 0;
      const i = mine ? idx : s.gpu.scratch.take([T, B], 'u32', 'shard_idx');
      const x = mine ? w : s.gpu.scratch.take([T, B], 'f32', 'shard_w');
      if (!mine) made.push(i, x);
      idxs.push(i);
      ws.push(x);
    }
    return {
      idx: idxs,
      w: ws,
      dispose: () => {
        for (const t of made) t.dispose();
      },
    };
  }
}

/** where bytes are: a device, a buffer and a byte offset in it */
interface Place {
  gpu: Gpu;
  buffer: GPUBuffer;
  offset: number;
}

/** a tensor's place, `bytes` into it */
function at(gpu: Gpu, t: Tensor, bytes = 0): Place {
  return { gpu, buffer: t.buffer, offset: t.offset + bytes };
}

/**
 * a transfer awaited later: if an error elsewhere ends the call first, its own failure is not an
 * unhandled rejection (the call's error is the one reported)
 */
function awaited<T>(p: Promise<T>): Promise<T> {
  p.catch(() => undefined);
  return p;
}
