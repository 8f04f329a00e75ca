// a dense engram checkpoint (no memory layers) and its logits, for bench/torch/hf_check.py to load
// in transformers' LlamaForCausalLM and compare:
//   node --import tsx scripts/hf_check_make.ts <dir>
// writes <dir>/model/ (saveModel: model.safetensors + config.json) and <dir>/engram_logits.json
// ({ ids: [[...]], logits: [...] } for a seeded batch, logits (B T, V) row-major).

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Gpu } from '../src/gpu/device.ts';
import { saveModel } from '../src/model/checkpoint.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { Rng } from '../src/testing/rng.ts';

const dir = process.argv[2];
if (!dir) throw new Error('usage: node --import tsx scripts/hf_check_make.ts <dir>');
mkdirSync(dir, { recursive: true });
const gpu = await Gpu.create();
const config = parseModelConfig({ vocabSize: 96, dim: 64, layers: 3, heads: 4, kvHeads: 2, ffnHidden: 160, maxSeqLen: 32, ropeTheta: 10000, normEps: 1e-5 });
const model = await Transformer.create(gpu, config, 3);
await saveModel(gpu, join(dir, 'model'), model);
const rng = new Rng(77);
const [B, T] = [2, 24];
const ids = Array.from({ length: B * T }, () => rng.int(config.vocabSize));
const t = await gpu.tensorFrom(ids, [B, T], 'u32', 'ids');
const logits = await model.logits(t);
const values = Array.from(await gpu.read(logits));
writeFileSync(join(dir, 'engram_logits.json'), JSON.stringify({ ids: [ids.slice(0, T), ids.slice(T)], logits: values }));
console.log(`wrote ${dir}: ${values.length} logits from ${gpu.adapterName}`);
t.dispose();
logits.dispose();
model.dispose();
gpu.destroy();
