// AdamW for a model whose memory value table is sharded over several GPUs (model/sharded_values.ts):
// one AdamW for the model group on the model's GPU, one per shard for its columns of the table, on
// the shard's GPU. the values group is clipped by its global gradient norm over every shard, as one
// table's would be: each shard's norm is computed on its GPU and read back (4 bytes), the host
// combines them (sqrt of the sum of squares, f64) into one clip coefficient,
// min(1, maxNorm / (norm + 1e-6)) as gradNorm writes it, and hands it to each shard's update.
// numerics: the combined norm differs from one GPU's f32 reduction by rounding; the updates are
// otherwise each shard's AdamW on its columns, as one table's AdamW does them.
// checkpoint: stateBytes gives the state one GPU's AdamW of the whole table would save: the model
// group's as it is, and the table's moments (and masters) put together from the shards' columns, in
// the chunks a table on the model's GPU would have (`values.<c>.{m,v,master}`, [rows of chunk c, d]).
// restore takes either kind of checkpoint (any chunking: the chunks are concatenated by rows) and
// sets every inner AdamW's step: a state saved sharded resumes on one GPU, and the reverse.

import type { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import type { SafeTensor } from '../io/safetensors.ts';
import type { Param } from '../model/param.ts';
import type { ShardedValueTable } from '../model/sharded_values.ts';
import { valueChunkName, valueChunks } from '../model/value_table.ts';
import { AdamW, type OptimizerConfig } from './optimizer.ts';

export class ShardedAdamW {
  private lastValuesNorm = 0;

  private constructor(
    private readonly gpu: Gpu,
    private readonly table: ShardedValueTable,
    readonly model: AdamW,
    readonly shards: readonly AdamW[],
  ) {}

  /** model params (the model group, on `gpu`) and the sharded table's shards */
  static async create(gpu: Gpu, params: readonly Param[], table: ShardedValueTable, config: OptimizerConfig): Promise<ShardedAdamW> {
    const made: AdamW[] = [];
    try {
      made.push(await AdamW.create(gpu, params, config));
      for (const s of table.shards) made.push(await AdamW.create(s.gpu, s.table.params, config));
    } catch (e) {
      for (const o of made) o.dispose();
      throw e;
    }
    return new ShardedAdamW(gpu, table, made[0]!, made.slice(1));
  }

  /** steps taken */
  get step(): number {
    return this.model.step;
  }

  /** one step of every optimizer, the values group clipped by its norm over all shards (see the header) */
  async update(lrScale = 1): Promise<void> {
    const norms = await Promise.all(this.shards.map((o) => o.groupNorm('values')));
    const norm = Math.sqrt(norms.reduce((a, n) => a + n * n, 0));
    this.lastValuesNorm = norm;
    const maxNorm = this.model.maxNorm;
    const clipScale = Number.isFinite(maxNorm) ? Math.min(1, maxNorm / (norm + 1e-6)) : 1;
    await this.model.update(lrScale);
    for (const o of this.shards) await o.update(lrScale, { clipScale: { values: clipScale } });
  }

  /** the state a checkpoint holds, as one GPU's AdamW of the whole table saves it (see the header) */
  async stateBytes(): Promise<{ step: number; tensors: Record<string, SafeTensor> }> {
    const { tensors } = await this.model.stateBytes();
    const t = this.table;
    for (const kind of this.kinds()) {
      const whole = await t.gatherOf((s, g) => s.table.params.map((p) => this.shards[g]!.stateOf(p)[kind]!), 4);
      for (const c of valueChunks(t.rows, t.dim, this.gpu.device.limits.maxStorageBufferBindingSize)) {
        tensors[`${c.name}.${kind}`] = { dtype: 'F32', shape: [c.rows, t.dim], data: whole.subarray(c.start * t.dim * 4, (c.start + c.rows) * t.dim * 4) };
      }
    }
    return { step: this.step, tensors };
  }

  /** Restores a checkpointed state (one GPU's or a sharded run's): the step of every optimizer and each tensor's f32 bytes. */
  restore(step: number, bytes: (name: string) => Uint8Array | undefined): void {
    const t = this.table;
    // each shard's state by its own names: the table's rows x d, from the checkpoint's chunks, split by columns
    const mine = t.shards.map(() => new Map<string, Uint8Array>());
    for (const kind of this.kinds()) {
      const chunks: Uint8Array[] = [];
      for (;;) {
        const b = bytes(`${valueChunkName(chunks.length)}.${kind}`);
        if (!b) break;
        chunks.push(b);
      }
      const whole = new Uint8Array(chunks.reduce((n, b) => n + b.byteLength, 0));
      let at = 0;
      for (const b of chunks) {
        whole.set(b, at);
        at += b.byteLength;
      }
      if (whole.byteLength !== t.rows * t.dim * 4) {
        const got = chunks.length ? `${whole.byteLength} bytes in ${chunks.length} chunks` : 'missing';
        throw new EngramError(`ShardedAdamW.restore: the value table's optimizer state '${valueChunkName(0)}.${kind}', ... is ${got}; [${t.rows}, ${t.dim}] f32 needs ${t.rows * t.dim * 4} bytes`);
      }
      t.splitColumns(whole, 4).forEach((parts, g) => parts.forEach((b, c) => mine[g]!.set(`${t.shards[g]!.table.params[c]!.name}.${kind}`, b)));
    }
    this.model.restore(step, bytes);
    this.shards.forEach((o, g) => o.restore(step, (name) => mine[g]!.get(name)));
  }

  /** the kinds of state the table's optimizers keep (m, v, and masters of a 16-bit table) */
  private kinds(): string[] {
    return Object.keys(this.shards[0]!.stateOf(this.table.shards[0]!.table.params[0]!));
  }

  dispose(): void {
    this.model.dispose();
    for (const o of this.shards) o.dispose();
  }

  /** the global gradient norms of the last update, per group (before clipping) */
  async gradNorms(): Promise<Record<Param['group'], number>> {
    return { model: (await this.model.gradNorms()).model, values: this.lastValuesNorm };
  }
}
