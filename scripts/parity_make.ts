// the inputs of the PyTorch parity check (llm.c's test_gpt2 in spirit): a tiny engram model with a
// Memory+ block, a batch and the training settings, written to <outdir>; bench/torch/parity.py
// rebuilds the model in PyTorch from them and writes golden.safetensors (logits, loss, every
// gradient, 10 training losses), which tests/parity.test.ts compares engram against.
//
//   node --import tsx scripts/parity_make.ts <outdir> [modelSeed]
//     <outdir>/model/      saveModel: model.safetensors (all F32) + config.json ("engram" key)
//     <outdir>/batch.json  { ids: [[...]], targets: [[...]] }   B = 2, T = 16, seeded
//     <outdir>/train.json  { lr, steps, schedule: { warmup, steps, minRatio } }
//
// deterministic: the weights come from engram's seeded init kernels (any adapter), the batch
// from the seeded Rng. targets are the next tokens of a random sequence of T + 1 tokens.

import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Gpu } from '../src/gpu/device.ts';
import { saveModel } from '../src/model/checkpoint.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { Rng } from '../src/testing/rng.ts';

export const PARITY_CONFIG = {
  vocabSize: 64,
  dim: 32,
  layers: 3,
  heads: 4,
  kvHeads: 2,
  ffnHidden: 48,
  maxSeqLen: 16,
  memory: { layers: [1], nKeys: 8, heads: 2, topk: 4, keyDim: 16, valueDtype: 'f32' },
};
export const PARITY_TRAIN = { lr: 1e-2, steps: 10, schedule: { warmup: 2, steps: 10, minRatio: 0.1 } };
const [B, T] = [2, 16];
/** the committed golden files use the default; the seed was picked for wide top-k margins (parity.py prints them) */
const MODEL_SEED = 4;
const BATCH_SEED = 1234;

async function main(): Promise<void> {
  const out = process.argv[2];
  if (!out) {
    console.error('usage: node --import tsx scripts/parity_make.ts <outdir> [modelSeed]');
    process.exit(2);
  }
  const gpu = await Gpu.create();
  try {
    const config = parseModelConfig(PARITY_CONFIG);
    const seed = process.argv[3] === undefined ? MODEL_SEED : Number(process.argv[3]);
    if (!Number.isInteger(seed) || seed < 0) throw new Error(`parity_make: modelSeed must be an integer >= 0, got ${process.argv[3]}`);
    const model = await Transformer.create(gpu, config, seed);
    await saveModel(gpu, join(out, 'model'), model);
    model.dispose();
    const rng = new Rng(BATCH_SEED);
    const ids: number[][] = [];
    const targets: number[][] = [];
    for (let b = 0; b < B; b++) {
      const seq = Array.from({ length: T + 1 }, () => rng.int(config.vocabSize));
      ids.push(seq.slice(0, T));
      targets.push(seq.slice(1));
    }
    await mkdir(out, { recursive: true });
    await writeFile(join(out, 'batch.json'), JSON.stringify({ ids, targets }) + '\n');
    await writeFile(join(out, 'train.json'), JSON.stringify(PARITY_TRAIN, null, 2) + '\n');
    console.log(`parity_make: wrote ${out}/{model/,batch.json,train.json} on ${gpu.adapterName}`);
  } finally {
    gpu.destroy();
  }
}

await main();
