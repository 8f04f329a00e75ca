// one optimizer step of a Transformer: gradient accumulation over micro-batches, the schedule's
// learning-rate factor, AdamW (values as their own group; ShardedAdamW when they are sharded over
// several GPUs), and the numbers a progress line
// shows. the loss is read back once per step (after the last micro-batch is recorded).

import type { Gpu } from '../gpu/device.ts';
import type { Tensor } from '../gpu/tensor.ts';
import type { TrainMemory, Transformer } from '../model/transformer.ts';
import { zeroGrads } from '../model/param.ts';
import { AdamW, type OptimizerConfig } from './optimizer.ts';
import { ShardedAdamW } from './sharded_optimizer.ts';
import { lrFactor, type Schedule } from './schedule.ts';

/** AdamW, or ShardedAdamW for a model whose value table is sharded over several GPUs */
export type Optimizer = AdamW | ShardedAdamW;

/** a new optimizer for the model's parameters: ShardedAdamW when its value table is sharded, else AdamW */
export function optimizerFor(gpu: Gpu, model: Transformer, cfg: OptimizerConfig): Promise<Optimizer> {
  return model.shardedTable ? ShardedAdamW.create(gpu, model.params, model.shardedTable, cfg) : AdamW.create(gpu, model.params, cfg);
}

export interface Batch {
  /** (B, T) u32 */
  ids: Tensor;
  /** (B, T) u32 */
  targets: Tensor;
  /** explicit memory the batch attends to (Memory³'s second stage) */
  memory?: TrainMemory;
  /** called after the batch's backward, before the update (Memory³: gradients through the memories' encoding) */
  afterBackward?: () => Promise<void>;
}

export interface StepResult {
  step: number;
  /** mean loss over the micro-batches */
  loss: number;
  lrFactor: number;
  tokens: number;
}

export class Trainer {
  constructor(
    private readonly gpu: Gpu,
    readonly model: Transformer,
    readonly opt: Optimizer,
    readonly schedule: Schedule,
  ) {}

  /** Forward and backward over every micro-batch (gradients summed, each scaled by 1/count), then one update. */
  async step(micro: readonly Batch[]): Promise<StepResult> {
    const { gpu, model, opt } = this;
    await zeroGrads(gpu, model.params);
    await model.shardedTable?.zeroGrad();
    const losses: Tensor[] = [];
    let tokens = 0;
    for (const b of micro) {
      losses.push(await model.forward(b.ids, b.targets, b.memory));
      await model.backward(1 / micro.length);
      await b.afterBackward?.();
      tokens += b.ids.size;
    }
    const factor = lrFactor(opt.step + 1, this.schedule);
    await opt.update(factor);
    let loss = 0;
    for (const l of losses) {
      loss += (await gpu.read(l))[0]! / micro.length;
      l.dispose();
    }
    return { step: opt.step, loss, lrFactor: factor, tokens };
  }
}
