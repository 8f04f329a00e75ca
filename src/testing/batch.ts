// a seeded batch of random tokens: B sequences of T + 1 tokens drawn from [0, vocab), the first T
// as ids and the last T as targets (what a model memorises in a training test or a benchmark)

import type { Gpu } from '../gpu/device.ts';
import type { Batch } from '../train/trainer.ts';
import { Rng } from './rng.ts';

export async function randomBatch(gpu: Gpu, B: number, T: number, vocab: number, seed: number): Promise<Batch & { dispose(): void }> {
  const rng = new Rng(seed);
  const seq = Array.from({ length: B * (T + 1) }, () => rng.int(vocab));
  const ids = await gpu.tensorFrom(seq.filter((_, i) => i % (T + 1) !== T), [B, T], 'u32', 'ids');
  const targets = await gpu.tensorFrom(seq.filter((_, i) => i % (T + 1) !== 0), [B, T], 'u32', 'targets');
  return {
    ids,
    targets,
    dispose: () => {
      ids.dispose();
      targets.dispose();
    },
  };
}
