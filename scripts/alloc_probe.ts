// where does a training step's JavaScript garbage come from? V8's sampling heap profiler, keeping
// the samples of objects already collected, over steps of the memory layer (quick sizes: the
// garbage is the host's, per dispatch and per transfer, not per element), one GPU or sharded over two
// devices; prints the allocation sites by bytes.
//
//   node --import tsx scripts/alloc_probe.ts [--sharded] [--steps=100]

import { Session } from 'node:inspector/promises';
import { Gpu } from '../src/gpu/device.ts';
import { openGpus } from '../src/gpu/multi.ts';
import { fillNormal } from '../src/kernels/init/init.ts';
import { MemoryLayer } from '../src/model/memory_layer.ts';
import { ShardedValueTable } from '../src/model/sharded_values.ts';
import { ValueTable } from '../src/model/value_table.ts';
import { AdamW } from '../src/train/optimizer.ts';
import { ShardedAdamW } from '../src/train/sharded_optimizer.ts';

const sharded = process.argv.includes('--sharded');
const steps = Number(process.argv.find((a) => a.startsWith('--steps='))?.slice(8) ?? 100);
const gpu = await Gpu.create();
const gpus = sharded ? [gpu, ...(await openGpus({ count: 1, shared: true }))] : [gpu];
const o = { rows: 64 * 64, dim: 64, dtype: 'bf16' as const, seed: 1 };
const st = sharded ? await ShardedValueTable.create(gpus, o) : null;
const t = st ? null : await ValueTable.create(gpu, o);
const layer = await MemoryLayer.create(gpu, 'mem', { d: 64, heads: 2, nKeys: 64, topk: 8, keyDim: 32 }, (st ?? t)!, 2);
const opt = st ? await ShardedAdamW.create(gpu, layer.params, st, { lr: 1e-4 }) : await AdamW.create(gpu, [...layer.params, ...t!.params], { lr: 1e-4 });
const x = await gpu.tensor([256, 64], 'f32');
const dout = await gpu.tensor([256, 64], 'f32');
await fillNormal(gpu, x, { std: 1, seed: 3 });
await fillNormal(gpu, dout, { std: 1e-3, seed: 4 });
const step = async () => {
  const y = await layer.forward(x);
  const dx = await layer.backward(dout);
  await opt.update();
  for (const g of gpus) await g.sync();
  y.dispose();
  dx.dispose();
};
for (let i = 0; i < 5; i++) await step();

type Node = { callFrame: { functionName: string; url: string; lineNumber: number }; selfSize: number; children: Node[] };
const session = new Session();
session.connect();
await session.post('HeapProfiler.startSampling', { samplingInterval: 512, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true });
const dispatches0 = gpu.dispatches;
for (let i = 0; i < steps; i++) await step();
const { profile } = (await session.post('HeapProfiler.stopSampling')) as unknown as { profile: { head: Node } };
const bySite = new Map<string, number>();
let total = 0;
const walk = (n: Node, stack: string[]) => {
  const here = `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.replace(/^.*\/(src|node_modules)\//, '$1/')}:${n.callFrame.lineNumber + 1}`;
  const path = [...stack, here];
  if (n.selfSize > 0) {
    // the innermost frame of ours (src/) names the site
    const ours = [...path].reverse().find((f) => f.includes(' src/')) ?? here;
    bySite.set(ours, (bySite.get(ours) ?? 0) + n.selfSize);
    total += n.selfSize;
  }
  for (const c of n.children) walk(c, path);
};
walk(profile.head, []);
console.log(`${sharded ? 'sharded over 2 devices' : 'one GPU'}: ${steps} steps, ${(gpu.dispatches - dispatches0) / steps} dispatches a step, ${(total / steps / 1024).toFixed(0)} KiB allocated a step (sampled)`);
for (const [site, bytes] of [...bySite].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`${(bytes / steps / 1024).toFixed(1).padStart(8)} KiB/step  ${site}`);
session.disconnect();
for (const z of [x, dout]) z.dispose();
opt.dispose();
layer.dispose();
t?.dispose();
st?.dispose();
for (const g of gpus) g.destroy();
