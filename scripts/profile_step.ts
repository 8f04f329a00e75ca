// where a training step's GPU time goes, per kernel: `node --import tsx scripts/profile_step.ts
// [preset|config.json] [batch] [seq]` builds the model with random tokens, runs two steps to
// compile and warm up, then profiles one (gpu/profiler.ts). a development tool, not a benchmark.

import { readFileSync } from 'node:fs';
import { Gpu } from '../src/gpu/device.ts';
import { KernelProfiler, formatProfile } from '../src/gpu/profiler.ts';
import { PRESETS } from '../src/cli/commands.ts';
import { parseModelConfig } from '../src/model/config.ts';
import { Transformer } from '../src/model/transformer.ts';
import { AdamW } from '../src/train/optimizer.ts';
import { Trainer } from '../src/train/trainer.ts';

const [which = 'tiny', b = '8', t = '128'] = process.argv.slice(2);
const batch = Number(b);
const seq = Number(t);
const vocab = 2048;
const json: unknown = PRESETS[which] ? PRESETS[which](vocab) : JSON.parse(readFileSync(which, 'utf8'));
const config = parseModelConfig(json);
const gpu = await Gpu.create();
const model = await Transformer.create(gpu, config, 0);
const opt = await AdamW.create(gpu, model.params, { lr: 1e-3 });
const trainer = new Trainer(gpu, model, opt, { warmup: 1, steps: 100, minRatio: 0.1 });
const rnd = (n: number) => Uint32Array.from({ length: n }, (_, i) => (i * 2654435761) % config.vocabSize);
const ids = await gpu.tensorFrom(rnd(batch * seq), [batch, seq], 'u32', 'ids');
const targets = await gpu.tensorFrom(rnd(batch * seq + 1).subarray(1), [batch, seq], 'u32', 'targets');
for (let i = 0; i < 2; i++) await trainer.step([{ ids, targets }]);
let t0 = performance.now();
await trainer.step([{ ids, targets }]);
const wall = performance.now() - t0;
const prof = KernelProfiler.attach(gpu);
t0 = performance.now();
await trainer.step([{ ids, targets }]);
const profWall = performance.now() - t0;
const rows = await prof.report();
console.log(`${gpu.adapterName}: ${which} batch ${batch} seq ${seq}: step ${wall.toFixed(0)} ms (${((batch * seq) / (wall / 1000)).toFixed(0)} tok/s), profiled step ${profWall.toFixed(0)} ms`);
console.log(formatProfile(rows));
ids.dispose();
targets.dispose();
opt.dispose();
model.dispose();
gpu.destroy();
