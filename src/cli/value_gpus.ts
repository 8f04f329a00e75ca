// `engram train --value-gpus N`: the GPUs of a training run whose memory value table is sharded by
// columns over N of them (model/sharded_values.ts), opened by openGpus (gpu/multi.ts): the model on
// the first, which holds shard 0 too (Transformer.create's valueGpus in this order), shard g on GPU
// g. --value-gpus-shared opens the N devices on one adapter: the sharding's arithmetic and
// exchanges on a machine with one GPU, no speed-up. N = 1 (the default): one GPU, no sharding.

import { Gpu } from '../gpu/device.ts';
import { EngramError } from '../gpu/errors.ts';
import { busOf, openGpus } from '../gpu/multi.ts';
import type { ValueSharding } from '../model/sharded_values.ts';
import type { Transformer } from '../model/transformer.ts';

export interface ValueGpuArgs {
  /** GPUs the value table is sharded over (1 or absent: not sharded) */
  valueGpus?: number;
  /** open them as devices of one adapter */
  valueGpusShared?: boolean;
  /** the dtype the shards' column blocks travel in: 'f32' (default) or 'bf16' */
  valueExchange?: string;
}

/** the run's GPUs: `gpu` the model's; `sharding` (valueGpus gpus[0] first) when the table is sharded; `all` to destroy */
export async function openTrainGpus(a: ValueGpuArgs): Promise<{ gpu: Gpu; sharding: ValueSharding; all: Gpu[] }> {
  const n = a.valueGpus ?? 1;
  if (!(Number.isInteger(n) && n >= 1)) throw new EngramError(`--value-gpus: expected a whole number of GPUs >= 1, got ${n}`);
  const x = a.valueExchange ?? 'f32';
  if (x !== 'f32' && x !== 'bf16') throw new EngramError(`--value-exchange: expected f32 or bf16, got '${x}'`);
  if (n === 1) {
    const gpu = await Gpu.create();
    return { gpu, sharding: {}, all: [gpu] };
  }
  const gpus = await openGpus({ count: n, ...(a.valueGpusShared ? { shared: true } : {}) });
  return { gpu: gpus[0]!, sharding: { valueGpus: gpus, valueExchange: x }, all: gpus };
}

/** where the model's value table is: a line per shard (its columns, adapter and PCI address), or none when it is not sharded */
export function shardPlacement(model: Transformer): string[] {
  const t = model.shardedTable;
  if (!t) return [];
  const lines = [`values: ${t.rows} x ${t.dim} ${t.dtype} sharded by columns over ${t.shards.length} GPUs, exchanging ${t.exchange} blocks`];
  for (const [g, s] of t.shards.entries()) {
    const bus = busOf(s.gpu);
    lines.push(`  shard ${g}: columns [${s.start}, ${s.start + s.table.dim}) on ${s.gpu.adapterName}${bus ? ` at ${bus}` : ''}${g === 0 ? ' (the model\'s GPU)' : ''}`);
  }
  return lines;
}
