// AdamW for a model whose memory value table is sharded over several GPUs (model/sharded_values.ts):
// one AdamW for the model group on the model's GPU, one per shard for its columns of the table, on
// the shard's GPU. the values group is clipped by its global gradient norm over every shard, as one
// table's would be: each shard's norm is computed on its GPU and read back (4 bytes), the host
// combines them (sqrt of the sum of squares, f64) into one clip coefficient,
// min(1, maxNorm / (norm + 1e-6)) as gradNorm writes it, and hands it to each shard's update.
// numerics: the combined norm differs from one GPU's f32 reduction by rounding; the updates are
// otherwise each shard's AdamW on its columns, as one table's AdamW does them.

import type { Gpu } from '../gpu/device.ts';
import type { Param } from '../model/param.ts';
import type { ShardedValueTable } from '../model/sharded_values.ts';
import { AdamW, type OptimizerConfig } from './optimizer.ts';

export class ShardedAdamW {
  private lastValuesNorm = 0;

  private constructor(
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
    return new ShardedAdamW(made[0]!, made.slice(1));
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

  dispose(): void {
    this.model.dispose();
    for (const o of this.shards) o.dispose();
  }

  /** the global gradient norms of the last update, per group (before clipping) */
  async gradNorms(): Promise<Record<Param['group'], number>> {
    return { model: (await this.model.gradNorms()).model, values: this.lastValuesNorm };
  }
}
