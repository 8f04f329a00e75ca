// the memory value table: N rows of width d, ONE table shared by all memory layers of a model
// (Memory Layers at Scale, mem_share_values). rows are split over chunks of at most one
// storage binding each (2 GiB - 4 on an H100: 2^20 x 1024 bf16 already needs 2), see
// kernels/membag. values are stored f32, f16 or bf16; the gradient is a dense f32 table with
// the same chunking (the paper's dense AdamW), which every layer's backward adds into.
// init (spec): N(0, d^-0.5), deterministic from a seed whatever the chunking (and for a shard of
// columns, those columns of the whole table's init).
// trackReads: a u32 mask per row, set by every memory layer's forward for the rows it reads and
// cleared by the optimizer's step: the sparse update's "rows read since the last step".

import type { Gpu } from '../gpu/device.ts';
import type { DType } from '../gpu/dtype.ts';
import { EngramError } from '../gpu/errors.ts';
import { fillNormal } from '../kernels/init/init.ts';
import { chunkRows, type ValueChunks } from '../kernels/membag/membag.ts';
import { clearRows, markRows } from '../kernels/rowmask/rowmask.ts';
import type { Tensor } from '../gpu/tensor.ts';
import { createParam, disposeParams, zeroGrads, type Param } from './param.ts';

export interface ValueTableOptions {
  rows: number;
  dim: number;
  dtype?: DType;
  /** largest chunk in bytes (default: the device's maxStorageBufferBindingSize); tests force tiny ones */
  maxBindingBytes?: number;
  seed?: number;
  /** keep a mask of the rows read since the last optimizer step (for the sparse update) */
  trackReads?: boolean;
  /**
   * this table is columns [start, start + dim) of a table `of` wide (a shard: sharded_values.ts): its
   * init is those columns of that table's, N(0, of^-0.5)
   */
  columns?: { start: number; of: number };
}

/** the name of a table's chunk `c` (its Param's; an optimizer's state of it is named after it) */
export function valueChunkName(c: number): string {
  return `values.${c}`;
}

/**
 * the chunks of a table of `rows` x `dim` on a device whose storage bindings hold `maxBindingBytes`
 * (its f32 gradient chunks must fit too, whatever the values' dtype): name, first row and rows of each
 */
export function valueChunks(rows: number, dim: number, maxBindingBytes: number): { name: string; start: number; rows: number }[] {
  const per = chunkRows(rows, dim, 'f32', maxBindingBytes);
  const out: { name: string; start: number; rows: number }[] = [];
  for (let c = 0, r0 = 0; r0 < rows; c++, r0 += per) out.push({ name: valueChunkName(c), start: r0, rows: Math.min(per, rows - r0) });
  return out;
}

export class ValueTable {
  private constructor(
    readonly rows: number,
    readonly dim: number,
    readonly dtype: DType,
    /** one Param per chunk, group 'values' */
    readonly params: readonly Param[],
    readonly rowsPerChunk: number,
  ) {}

  static async create(gpu: Gpu, o: ValueTableOptions): Promise<ValueTable> {
    const { rows, dim, dtype = 'bf16', seed = 0 } = o;
    if (!(Number.isInteger(rows) && rows > 0 && Number.isInteger(dim) && dim > 0)) {
      throw new EngramError(`ValueTable: rows (${rows}) and dim (${dim}) must be positive integers`);
    }
    const { start, of } = o.columns ?? { start: 0, of: dim };
    if (!(Number.isInteger(start) && Number.isInteger(of) && start >= 0 && start + dim <= of)) {
      throw new EngramError(`ValueTable: columns [${start}, ${start} + ${dim}) must lie within the ${of} of the whole table`);
    }
    const chunks = valueChunks(rows, dim, o.maxBindingBytes ?? gpu.device.limits.maxStorageBufferBindingSize);
    const params: Param[] = [];
    const table = new ValueTable(rows, dim, dtype, params, chunks[0]!.rows);
    try {
      for (const c of chunks) {
        const p = await createParam(gpu, c.name, [c.rows, dim], dtype, 'values');
        params.push(p);
        await fillNormal(gpu, p.value, { std: of ** -0.5, seed, offset: c.start * of + start, ...(of !== dim ? { rowStride: of } : {}) });
        if (o.trackReads) {
          p.rowMask = { mask: await gpu.tensor([c.rows], 'u32', `${c.name}.read`), width: dim };
          clearRows(gpu, [p.rowMask.mask]);
        }
      }
      return table;
    } catch (e) {
      // a table that could not be made whole (out of memory) frees what it made
      table.dispose();
      throw e;
    }
  }

  /** the values, as the membag kernels take them */
  get values(): ValueChunks {
    return { chunks: this.params.map((p) => p.value), rowsPerChunk: this.rowsPerChunk, rows: this.rows, dim: this.dim };
  }

  /** the dense f32 gradient, same chunking */
  get grads(): ValueChunks {
    return { chunks: this.params.map((p) => p.grad), rowsPerChunk: this.rowsPerChunk, rows: this.rows, dim: this.dim };
  }

  get tracksReads(): boolean {
    return this.params[0]?.rowMask !== undefined;
  }

  /** Marks the rows `slots` (u32, any shape) reads, when the table tracks reads. */
  async markReads(gpu: Gpu, slots: Tensor): Promise<void> {
    if (!this.tracksReads) return;
    await markRows(gpu, this.params.map((p) => p.rowMask!.mask), this.rowsPerChunk, slots);
  }

  zeroGrad(gpu: Gpu): Promise<void> {
    return zeroGrads(gpu, this.params);
  }

  dispose(): void {
    for (const p of this.params) p.rowMask?.mask.dispose();
    disposeParams(this.params);
  }
}
